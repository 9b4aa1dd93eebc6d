"""Model artifacts are checked against the SHA-256 their training manifest recorded.

Training (``train-<model>`` manifests, one entry per protocol) records the digest of every
file it wrote; loading for evaluation or scoring recomputes it and refuses a file that was
replaced or altered since, or one no training run vouches for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from recpipe import storage
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.layout import model_dir
from recpipe.manifest import read_manifest
from recpipe.storage import LocationLike, as_location

SHA256 = "sha256"  # key of the {file name: digest} map in a manifest's protocol entry
# What each kind of model writes into its folder; a folder holds exactly one kind.
KIND_FILES = {"baseline": ("meta.json", "arrays.npz"), "deep": ("model.pt",)}


class ArtifactError(RecpipeError):
    """A model file does not match what its training run recorded (or nothing recorded it)."""


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_digests(folder: LocationLike, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of the named files in ``folder`` (any location)."""
    base = as_location(folder)
    return {name: sha256_hex(storage.read_bytes(base / name)) for name in names}


def recorded_digests(root: LocationLike, model: str, ds: str, protocol: str) -> dict[str, str]:
    """The digests ``train-<model>`` recorded for ``ds`` and ``protocol``."""
    manifest = read_manifest(root, f"train-{model}", ds)
    entry = manifest.get("protocols", {}).get(protocol, {})
    digests = entry.get(SHA256) if isinstance(entry, Mapping) else None
    if manifest.get("status") != "ok" or not digests:
        raise ArtifactError(
            f"no verified {model} model for ds={ds} protocol={protocol}: its train-{model} "
            f"manifest (status {manifest.get('status')!r}) records no SHA-256; retrain it"
        )
    return dict(digests)


def verify(
    root: LocationLike, model: str, ds: str, protocol: str, files: Mapping[str, bytes]
) -> None:
    """Raise :class:`ArtifactError` unless every file matches the recorded SHA-256."""
    recorded = recorded_digests(root, model, ds, protocol)
    for name, data in files.items():
        if recorded.get(name) != sha256_hex(data):
            raise ArtifactError(
                f"models/{model}/{ds}/{protocol}/{name} does not match the SHA-256 recorded by "
                f"train-{model} ds={ds}: it was changed after training; refusing to load it"
            )


def read_artifacts(
    root: LocationLike,
    model: str,
    ds: str,
    protocol: str,
    kind: str,
    names: Sequence[str] | None = None,
) -> dict[str, bytes]:
    """The files of a trained ``kind`` model, checked: one kind per folder, recorded SHA-256.

    A folder that also holds the other kind's files is refused (a ``model.pt`` beside a
    baseline's arrays was never written by recpipe); the bytes returned are the bytes checked.
    ``names`` reads only those files (default: every file of the kind).
    """
    folder = model_dir(root, model, ds, protocol)
    wanted = tuple(names) if names is not None else KIND_FILES[kind]
    # One listing instead of a look-up per name (each one a request on an object store).
    present = {entry.name: entry.is_dir for entry in storage.list_dir(folder)}
    foreign = [
        name for other, names in KIND_FILES.items() if other != kind for name in names
        if name in present
    ]  # fmt: skip
    if foreign:
        raise ArtifactError(
            f"models/{model}/{ds}/{protocol} holds {', '.join(foreign)}, which a {kind} model "
            "never writes: refusing a folder with two kinds of artifact"
        )
    if not all(present.get(name) is False for name in wanted):
        command = "train-baseline" if kind == "baseline" else "train"
        raise MissingInputError(
            f"no trained {model} for ds={ds} protocol={protocol} under {folder}: train it "
            f"first (`recpipe {command} --model {model} --ds {ds}`)"
        )
    files = {name: storage.read_bytes(folder / name) for name in wanted}
    verify(root, model, ds, protocol, files)
    return files
