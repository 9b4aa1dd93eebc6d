"""The training loop every launcher runs in each process.

AdamW with linear warm-up then cosine decay, gradient clipping, bf16 autocast on GPU, gradient
averaging across ranks (DDP under torchrun/Spark, ``hvd.DistributedOptimizer`` under Horovod),
validation on rank 0 with early stopping, atomic checkpoints every N steps and at every epoch end,
and ``resume`` that replays the interrupted epoch's order so the result equals an uninterrupted
run.

Ranks whose shard holds fewer batches than the largest one pad their epoch with zero-gradient
steps (a forward on their last batch times 0), so every rank takes the same optimizer steps with
the same averaged gradients: weights, optimizer state and learning-rate schedule stay identical
on every rank, which DDP's ``join`` (stale optimizer state on joined ranks) and ``hvd.join``
(diverging weights on Gloo, measured) do not give.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recpipe.config import TrainConfig
from recpipe.data.arrow_loader import ArrowSampleDataset, ShardFile, ShortReadError
from recpipe.data.batch import Batch
from recpipe.models import model_class
from recpipe.models.base import ModelContext, RecModel
from recpipe.train.checkpoint import LAST_FILE, load_state, model_state, save_atomic
from recpipe.train.distributed import Collectives, DistContext, collectives_for
from recpipe.train.spec import TrainSpec
from recpipe.train.validation import Validator

log = logging.getLogger(__name__)

BEST_FILE = "best.pt"


class StoppedEarly(Exception):
    """Raised by ``stop_after_steps``: the run stops as if the process had been killed."""


@dataclass
class Progress:
    """Training state that a checkpoint carries besides weights and optimizer."""

    epoch: int = 0  # epoch in progress (or the next one, when step_in_epoch == 0)
    step: int = 0  # optimizer steps so far
    step_in_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at ``total`` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """One rank's training of one model (built in :meth:`run`, not in ``__init__``)."""

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self.settings = TrainConfig.model_validate(spec.settings)
        self.comm: Collectives = collectives_for(self.settings.launcher)

    def run(self) -> dict[str, Any]:
        """Train to the end (or early stop); rank 0 writes the model and returns the summary."""
        ctx = self.comm.setup(self.settings.device)
        finished = False
        try:
            summary = self._run(ctx)
            finished = True
            return summary
        finally:
            # The DDP wrapper's reducer holds gloo work objects and sits in reference cycles;
            # freeing it while the process group still exists (not at interpreter exit, after
            # the group is gone) avoids an abort at shutdown.
            gc.collect()
            self.comm.teardown(synchronise=finished)

    def _dataset(self, model: RecModel, ctx: DistContext) -> ArrowSampleDataset:
        """This rank's samples through ``train.loader``."""
        settings = self.settings
        options: dict[str, Any] = {
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "shuffle_buffer": settings.shuffle_buffer,
            "seed": settings.seed,
        }
        files = [ShardFile(path, rows) for path, rows in self.spec.shards]
        if settings.loader == "petastorm":
            from recpipe.data.petastorm_loader import PetastormSampleDataset

            return PetastormSampleDataset(
                files, model.sample_kind, model.config.batch_size,
                pool=settings.petastorm_pool, workers=settings.num_workers, **options,
            )  # fmt: skip
        return ArrowSampleDataset(files, model.sample_kind, model.config.batch_size, **options)

    def _build(self, ctx: DistContext) -> RecModel:
        cls = model_class(self.spec.model)
        config = cls.config_class.model_validate(self.spec.model_config)
        counts = np.load(self.spec.item_counts_file)
        context = ModelContext(item_counts=counts, **self.spec.context)
        _seed_everything(self.settings.seed)  # same initial weights on every rank
        model = cls(config, context)
        if self.spec.init_file:
            model.load_state_dict(load_state(Path(self.spec.init_file))["state_dict"])
        return model.to(ctx.device)

    def _run(self, ctx: DistContext) -> dict[str, Any]:
        spec, settings, comm = self.spec, self.settings, self.comm
        threads = settings.torch_threads
        if threads is None and ctx.distributed and ctx.device.type == "cpu":
            threads = max(1, (torch.get_num_threads() or 1) // ctx.world_size)
        if threads:
            torch.set_num_threads(threads)
        model = self._build(ctx)
        config = model.config
        epochs = min(config.epochs, settings.max_epochs or config.epochs)
        dataset = self._dataset(model, ctx)
        own_batches = dataset.batches_for_rank(settings.num_workers)
        if not own_batches:
            raise ValueError(
                f"rank {ctx.rank} has no training rows in its sample files "
                f"{[f.path for f in dataset.rank_files()]}: train with fewer processes"
            )
        # Every rank takes the largest rank's step count (shorter shards pad, see module doc).
        steps_per_epoch = comm.max_int(own_batches)
        total_steps = steps_per_epoch * epochs
        wrapped, optimizer = comm.prepare(
            model,
            torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, config.warmup_steps, total_steps)
        )
        progress = Progress()
        last_path = spec.checkpoint_dir / LAST_FILE
        if spec.resume and last_path.is_file():
            state = load_state(last_path)
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            progress = Progress(**state["progress"])
            comm.after_resume(model, optimizer)
            if ctx.is_main:
                log.info("resumed %s: epoch %d, step %d", spec.model, progress.epoch, progress.step)
        elif ctx.is_main:
            for stale in (last_path, spec.checkpoint_dir / BEST_FILE):
                stale.unlink(missing_ok=True)
        validator = self._validator(ctx)
        loader = dataset.loader(settings.num_workers, ctx.device.type == "cuda")

        def checkpoint() -> None:
            if ctx.is_main:
                extra = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "progress": dict(progress.__dict__),
                }
                save_atomic(model_state(model, extra), last_path)

        started = time.perf_counter()
        samples_seen = 0
        while progress.epoch < epochs and not progress.stopped:
            epoch = progress.epoch
            dataset.set_epoch(epoch)
            skip = progress.step_in_epoch
            model.train()
            loss_sum, loss_count = 0.0, 0
            epoch_started = time.perf_counter()
            bar = tqdm(
                total=steps_per_epoch,
                initial=skip,
                desc=f"{spec.model} epoch {epoch + 1}/{epochs}",
                unit="step",
                disable=not (ctx.is_main and sys.stderr.isatty()),
                leave=False,
            )
            batches = self._batches(loader, ctx.device)
            last: Batch | None = None
            for index in range(steps_per_epoch):
                batch = next(batches, None)
                if batch is not None:
                    last = batch
                if index < skip:
                    continue  # replaying the interrupted epoch's order up to the checkpoint
                if last is None:
                    raise ShortReadError(f"rank {ctx.rank}: the loader yielded no batch")
                # Randomness (dropout, sampled negatives) is seeded per step and rank, so a
                # resumed run draws exactly what the uninterrupted run drew.
                torch.manual_seed(_step_seed(settings.seed, ctx.rank, progress.step))
                with _autocast(ctx.device, settings.amp):
                    loss = wrapped(last)
                if batch is None:
                    loss = loss * 0.0  # padding step: this rank adds zero gradients
                optimizer.zero_grad()  # set_to_none (the default); Horovod takes no argument
                loss.float().backward()
                comm.step(model, optimizer, settings.grad_clip)
                scheduler.step()
                progress.step += 1
                progress.step_in_epoch = index + 1
                bar.update(1)
                if batch is not None:
                    loss_sum += float(loss.detach()) * len(batch)
                    loss_count += len(batch)
                    samples_seen += len(batch)
                if ctx.is_main and progress.step % settings.log_every == 0 and loss_count:
                    rate = loss_count / max(time.perf_counter() - epoch_started, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", rows_s=f"{rate:,.0f}")
                    if bar.disable:
                        log.info(
                            "%s epoch %d/%d step %d loss %.4f %.0f rows/s (rank 0)",
                            spec.model, epoch + 1, epochs, progress.step,
                            loss_sum / loss_count, rate,
                        )  # fmt: skip
                if progress.step % settings.checkpoint_every == 0:
                    checkpoint()
                if spec.stop_after_steps and progress.step >= spec.stop_after_steps:
                    raise StoppedEarly(f"stopped after {progress.step} steps")
            # Ending the iteration runs the loader's row accounting against the manifest.
            if next(batches, None) is not None:
                raise ShortReadError(
                    f"rank {ctx.rank}: the loader yielded more than the {own_batches} batches "
                    "the manifest's row counts allow"
                )
            bar.close()
            mean_loss = comm.mean(loss_sum, loss_count)
            entry: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": progress.step,
                "loss": round(mean_loss, 6),
                "seconds": round(time.perf_counter() - epoch_started, 3),
            }
            progress.epoch += 1
            progress.step_in_epoch = 0
            if validator is not None and progress.epoch % settings.early_stopping.every_epochs == 0:
                self._validate(model, validator, progress, entry, ctx)
            progress.history.append(entry)
            if ctx.is_main:
                log.info(
                    "%s epoch %d/%d: loss %.4f%s (%.1fs)", spec.model, epoch + 1, epochs,
                    mean_loss, f", valid {entry['metric']:.4f}" if "metric" in entry else "",
                    entry["seconds"],
                )  # fmt: skip
            checkpoint()
        seconds = time.perf_counter() - started
        return self._finish(model, progress, ctx, seconds, samples_seen, validator)

    def _validator(self, ctx: DistContext) -> Validator | _Remote | None:
        """Rank 0's validator; other ranks get a placeholder flag through broadcasts."""
        if self.spec.validation is None:
            return None
        early = self.settings.early_stopping
        usable = 1.0
        validator = None
        if ctx.is_main:
            validator = Validator(**self.spec.validation, metric=early.metric, k=early.k)
            usable = float(validator.usable)
        usable = self.comm.broadcast_floats([usable])[0]
        if not usable:
            if ctx.is_main:
                log.info("%s: no valid rows, early stopping off", self.spec.model)
            return None
        return validator if ctx.is_main else _REMOTE

    def _validate(
        self,
        model: RecModel,
        validator: Validator | _Remote,
        progress: Progress,
        entry: dict[str, Any],
        ctx: DistContext,
    ) -> None:
        metric = 0.0
        if isinstance(validator, Validator):
            metric = validator.evaluate(model, str(ctx.device))
            model.train()
        metric = self.comm.broadcast_floats([metric])[0]
        entry["metric"] = round(metric, 6)
        if metric > progress.best_metric:
            progress.best_metric, progress.best_epoch = metric, progress.epoch
            progress.bad_evals = 0
            if ctx.is_main:
                save_atomic(model_state(model), self.spec.checkpoint_dir / BEST_FILE)
        else:
            progress.bad_evals += 1
            if progress.bad_evals >= self.settings.early_stopping.patience:
                progress.stopped = True

    def _batches(self, loader: Any, device: torch.device) -> Iterator[Batch]:
        for batch in loader:
            yield batch.to(device, non_blocking=True)

    def _finish(
        self,
        model: RecModel,
        progress: Progress,
        ctx: DistContext,
        seconds: float,
        samples_seen: int,
        validator: Validator | _Remote | None,
    ) -> dict[str, Any]:
        spec = self.spec
        rows_total = self.comm.sum_floats([float(samples_seen)])[0]
        summary: dict[str, Any] = {
            "model": spec.model,
            "epochs_run": progress.epoch,
            "steps": progress.step,
            "early_stopped": progress.stopped,
            "world_size": ctx.world_size,
            "collectives": self.comm.name,
            "loader": self.settings.loader,
            "device": str(ctx.device),
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows_total / max(seconds, 1e-9), 1),
            "history": progress.history,
            "model_config": model.config.model_dump(mode="json"),
        }
        if ctx.distributed:
            summary["replica_checksums"] = self.comm.gather_strings(_parameter_digest(model))
        if not ctx.is_main:
            return summary
        best_path = spec.checkpoint_dir / BEST_FILE
        if isinstance(validator, Validator) and best_path.is_file():
            state = load_state(best_path)
            summary.update(
                best_epoch=progress.best_epoch,
                best_valid_metric=round(progress.best_metric, 6),
                validation=validator.describe(),
            )
        else:
            state = model_state(model)
        state["training"] = {k: v for k, v in summary.items() if k != "history"}
        save_atomic(state, Path(spec.model_file))
        spec.result_file.write_text(json.dumps(summary, indent=2))
        return summary


def _parameter_digest(model: RecModel) -> str:
    """SHA-256 of the weights; gathered from every rank, replicas must agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Remote:
    """Stands in for rank 0's validator on other ranks (they only receive its results)."""


_REMOTE = _Remote()


def train_from_spec(spec_json: str) -> dict[str, Any]:
    """Entry point for every launcher: train the run described by ``spec_json``."""
    return Trainer(TrainSpec.from_json(spec_json)).run()
