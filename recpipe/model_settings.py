"""Deep-model settings: types and bounds here, values in ``conf/models/<name>.yaml``.

Each model's defaults are written once, in its YAML (with a comment saying what each setting
does); the classes below declare only what a value must be. A settings object is the YAML's
values overlaid by what it is given, e.g. ``models.<name>.*`` of the layered config::

    SasRecConfig()                 # conf/models/sasrec.yaml
    SasRecConfig(num_blocks=3)     # that, with num_blocks=3

The YAML is read only when a setting is missing, so a full settings dump (a checkpoint's, a
training spec's) rebuilds without it. This module imports no torch: config loading validates
``models.*`` against it, and ``recpipe.models`` attaches each model to its settings here.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import TypedDict

from recpipe.search_space import Param, choice, integer, log_uniform, uniform

MODELS_CONF = Path(__file__).resolve().parent.parent / "conf" / "models"

# Deep models by name, each with its settings class (filled by @settings_of below).
MODEL_SETTINGS: dict[str, type[ModelConfig]] = {}


class ModelConfig(BaseModel):
    """Settings every model has; subclasses add their architecture fields.

    Optimisation settings live here (not in the global ``train`` section) because good values
    differ per model, and keeping them with the model makes a checkpoint say how it was trained.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # The model whose conf/models/<name>.yaml holds the defaults (set by @settings_of).
    defaults_name: ClassVar[str | None] = None
    # What `recpipe tune` searches (recpipe.search_space); subclasses add their own knobs.
    search_space: ClassVar[dict[str, Param]] = {
        "lr": log_uniform(1e-4, 1e-2),
        "weight_decay": log_uniform(1e-6, 1e-1),
        "dim": choice(32, 64, 128, 256),
    }

    dim: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _yaml_defaults(cls, data: Any) -> Any:
        if cls.defaults_name is None or not isinstance(data, Mapping):
            return data
        if cls.model_fields.keys() <= data.keys():
            return data
        return {**model_defaults(cls.defaults_name), **data}


def settings_of(name: str) -> Callable[[type[ModelConfig]], type[ModelConfig]]:
    """Class decorator: ``cls`` is model ``name``'s settings, defaults in ``<name>.yaml``."""

    def decorate(cls: type[ModelConfig]) -> type[ModelConfig]:
        if MODEL_SETTINGS.get(name, cls) is not cls:
            raise ValueError(f"settings for model '{name}' declared twice")
        cls.defaults_name = name
        MODEL_SETTINGS[name] = cls
        return cls

    return decorate


class NextItemConfig(ModelConfig):
    """Settings of a model trained on the next item at every position (its loss's name)."""

    loss: str


@settings_of("bpr_mf")
class BprMfConfig(ModelConfig):
    """BPR-MF settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "reg": log_uniform(1e-6, 1e-2),
    }

    reg: float = Field(ge=0)
    init_std: float = Field(gt=0)


@settings_of("cke")
class CkeConfig(BprMfConfig):
    """CKE settings: BPR-MF's, plus the TransR knowledge-graph part trained beside it."""

    search_space: ClassVar[dict[str, Param]] = {
        **BprMfConfig.search_space,
        "kg_weight": log_uniform(1e-2, 1.0),
        "offset_dropout": uniform(0.0, 0.9),
    }

    relation_dim: int = Field(ge=1)
    offset_dropout: float = Field(ge=0, le=1)
    kg_weight: float = Field(gt=0)
    kg_batch_size: int = Field(ge=1)
    kg_reg: float = Field(ge=0)


@settings_of("neumf")
class NeuMfConfig(ModelConfig):
    """NeuMF settings; ``dim`` is the size of each MLP-branch embedding (user and item)."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
    }

    mode: Literal["neumf", "gmf", "mlp"]
    mf_dim: int = Field(ge=1)
    mlp_layers: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    pretrain_epochs: int = Field(ge=0)
    pretrain_alpha: float = Field(ge=0, le=1)
    init_std: float = Field(gt=0)


@settings_of("two_tower")
class TwoTowerConfig(ModelConfig):
    """Two-tower settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "temperature": log_uniform(0.02, 1.0),
        "dropout": uniform(0.0, 0.5),
    }

    temperature: float = Field(gt=0)
    normalize: bool
    tower_layers: list[int]
    use_user_id: bool
    share_embeddings: bool
    dropout: float = Field(ge=0, lt=1)
    query: Literal["causal_prefix", "leave_target_out"]


@settings_of("hybrid_two_tower")
class HybridTwoTowerConfig(ModelConfig):
    """Hybrid content two-tower settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "temperature": log_uniform(0.02, 1.0),
        "dropout": uniform(0.0, 0.5),
        "id_dropout": uniform(0.0, 0.9),
        "history_dropout": uniform(0.0, 0.5),
        # Ids help warm items and hurt cold ones (a warm id outweighs a cold item's
        # features), so the protocol's valid split decides.
        "use_item_ids": choice(True, False),
    }

    temperature: float = Field(gt=0)
    normalize: bool
    item_layers: list[int]
    user_layers: list[int]
    use_item_ids: bool
    id_dropout: float = Field(ge=0, le=1)
    history_dropout: float = Field(ge=0, lt=1)
    dropout: float = Field(ge=0, lt=1)


@settings_of("deepfm")
class DeepFmConfig(ModelConfig):
    """DeepFM settings; ``dim`` is every field's embedding size (shared by FM and DNN)."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
        "user_id_dropout": uniform(0.0, 0.8),
    }

    mlp_layers: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    user_id_dropout: float = Field(ge=0, lt=1)
    score_chunk_pairs: int = Field(ge=1)


@settings_of("wide_deep")
class WideDeepConfig(ModelConfig):
    """Wide & Deep settings; ``dim`` is every field's embedding size in the deep part."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
        "user_id_dropout": uniform(0.0, 0.8),
    }

    mlp_layers: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    user_id_dropout: float = Field(ge=0, lt=1)
    cross_buckets: int = Field(ge=1)
    score_chunk_pairs: int = Field(ge=1)


@settings_of("din")
class DinConfig(ModelConfig):
    """DIN settings; ``dim`` is the item and feature embedding size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
    }

    attention_layers: list[int] = Field(min_length=1)
    mlp_layers: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    history_dropout: float = Field(ge=0, lt=1)
    negatives: int = Field(ge=1)
    train_positions: int = Field(ge=1)
    score_chunk_pairs: int = Field(ge=1)


@settings_of("nfm")
class NfmConfig(ModelConfig):
    """NFM settings; ``dim`` is every field's embedding size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
        "user_id_dropout": uniform(0.0, 0.8),
    }

    mlp_layers: list[int]
    dropout: float = Field(ge=0, lt=1)
    user_id_dropout: float = Field(ge=0, lt=1)
    score_chunk_pairs: int = Field(ge=1)


@settings_of("mmoe")
class MmoeConfig(ModelConfig):
    """MMoE settings; ``dim`` is every field's embedding size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
        "user_id_dropout": uniform(0.0, 0.8),
        "rating_weight": log_uniform(0.1, 10.0),
        "experts": integer(2, 8),
    }

    experts: int = Field(ge=1)
    expert_layers: list[int] = Field(min_length=1)
    tower_layers: list[int]
    dropout: float = Field(ge=0, lt=1)
    user_id_dropout: float = Field(ge=0, lt=1)
    rating_weight: float = Field(ge=0)
    rating_scale: float = Field(gt=0)
    rank_by: Literal["interaction", "expected_rating"]
    score_chunk_pairs: int = Field(ge=1)


@settings_of("gru4rec")
class Gru4RecConfig(NextItemConfig):
    """GRU4Rec settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "hidden_size": choice(64, 128, 256),
        "dropout": uniform(0.0, 0.5),
    }

    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    loss: Literal["full_softmax", "sampled_softmax"]


@settings_of("sasrec")
class SasRecConfig(NextItemConfig):
    """SASRec settings (``dim`` must be divisible by ``num_heads``)."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "num_blocks": integer(1, 3),
        "dropout": uniform(0.0, 0.5),
    }

    num_blocks: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    ffn_mult: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    loss: Literal["full_softmax", "sampled_softmax", "bce"]

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SasRecConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        return self


@settings_of("narm")
class NarmConfig(NextItemConfig):
    """NARM settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "emb_dropout": uniform(0.0, 0.5),
        "ct_dropout": uniform(0.0, 0.5),
    }

    hidden_size: int = Field(ge=1)
    emb_dropout: float = Field(ge=0, lt=1)
    ct_dropout: float = Field(ge=0, lt=1)
    loss: Literal["full_softmax", "sampled_softmax"]


@settings_of("stamp")
class StampConfig(NextItemConfig):
    """STAMP settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "dropout": uniform(0.0, 0.5),
    }

    dropout: float = Field(ge=0, lt=1)
    loss: Literal["full_softmax", "sampled_softmax"]


@settings_of("svdpp")
class SvdPpConfig(ModelConfig):
    """SVD++ settings."""

    init_std: float = Field(gt=0)
    loss: Literal["full_softmax", "sampled_softmax"]


@settings_of("mult_vae")
class MultVaeConfig(ModelConfig):
    """Mult-VAE settings; ``dim`` is the latent size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "input_dropout": uniform(0.0, 0.8),
        "beta_max": uniform(0.05, 1.0),
        # One bag per user: a small data set has few steps per epoch, so the batch size counts.
        "batch_size": choice(32, 64, 128, 256),
    }

    hidden_layers: list[int] = Field(min_length=1)
    input_dropout: float = Field(ge=0, lt=1)
    beta_max: float = Field(ge=0)
    anneal_steps: int = Field(ge=0)


@settings_of("cdae")
class CdaeConfig(ModelConfig):
    """CDAE settings; ``dim`` is the hidden layer size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "corruption": uniform(0.0, 0.8),
        "negatives": integer(1, 16),
        "batch_size": choice(32, 64, 128, 256),
    }

    corruption: float = Field(ge=0, lt=1)
    negatives: int = Field(ge=1)
    hidden_activation: Literal["sigmoid", "tanh", "identity"]
    init_std: float = Field(gt=0)


@settings_of("recvae")
class RecVaeConfig(ModelConfig):
    """RecVAE settings; ``dim`` is the latent size."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "input_dropout": uniform(0.0, 0.8),
        "gamma": log_uniform(1e-4, 5e-2),
        "batch_size": choice(32, 64, 128, 256),
    }

    hidden: int = Field(ge=1)
    encoder_layers: int = Field(ge=1)
    input_dropout: float = Field(ge=0, lt=1)
    gamma: float = Field(ge=0)
    prior_weights: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)
    wide_prior_log_var: float
    prior_refresh_steps: int = Field(ge=1)


@settings_of("irgan")
class IrganConfig(ModelConfig):
    """IRGAN settings; ``dim`` is the size of both players' factors."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "temperature": log_uniform(0.1, 5.0),
        "reg": log_uniform(1e-6, 1e-2),
    }

    samples: int = Field(ge=1)
    temperature: float = Field(gt=0)
    reg: float = Field(ge=0)
    init_std: float = Field(gt=0)
    mode: Literal["gan", "mf"]
    pretrain_epochs: int = Field(ge=0)


@settings_of("rum")
class RumConfig(ModelConfig):
    """RUM settings."""

    search_space: ClassVar[dict[str, Param]] = {
        **ModelConfig.search_space,
        "memory_weight": uniform(0.1, 2.0),
        "reg": log_uniform(1e-6, 1e-2),
    }

    memory_size: int = Field(ge=1)
    memory_weight: float = Field(ge=0)
    negatives: int = Field(ge=1)
    reg: float = Field(ge=0)
    init_std: float = Field(gt=0)
    score_item_chunk: int = Field(ge=1)


# The deep model names config accepts (train.models, gate.*): the models declared above.
# Built from the table at run time, which a static checker cannot follow: str for it.
if TYPE_CHECKING:
    DeepModelName = str
else:
    DeepModelName = Literal[tuple(MODEL_SETTINGS)]


def model_defaults(name: str) -> dict[str, Any]:
    """Model ``name``'s defaults: the settings in ``conf/models/<name>.yaml`` (a fresh copy)."""
    return copy.deepcopy(_read_defaults(name))


@functools.cache
def _read_defaults(name: str) -> dict[str, Any]:
    # Imported here: recpipe.config imports this module.
    from recpipe.config import ConfigError, _read_yaml, config_error

    cls = MODEL_SETTINGS[name]
    path = MODELS_CONF / f"{name}.yaml"
    data = _read_yaml(path)
    models = data.get("models")
    values = models.get(name) if isinstance(models, dict) else None
    if not isinstance(values, dict) or set(data) != {"models"} or set(models or ()) != {name}:
        raise ConfigError(f"{path} must hold exactly models.{name}: {{setting: default, ...}}")
    missing = [f"models.{name}.{key}" for key in cls.model_fields if key not in values]
    if missing:
        raise ConfigError(f"{path}: no default for {', '.join(missing)}")
    try:
        cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {config_error(exc, ('models', name))}") from None
    return values


def _check_with_defaults(cls: type[ModelConfig]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Validator of ``models.<name>`` overrides: together with the defaults they must make a
    valid settings object (e.g. SASRec's ``num_heads`` must divide the default ``dim``)."""

    def check(overrides: dict[str, Any]) -> dict[str, Any]:
        try:
            cls.model_validate(overrides)
        except ValidationError as exc:
            # Field errors were reported with their key already; these are the model's own.
            messages = (str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
            raise ValueError("; ".join(messages)) from None
        return overrides

    return check


def overrides_type(cls: type[ModelConfig]) -> Any:
    """The type of ``models.<name>``: any subset of ``cls``'s fields, each typed and bounded as
    there (unknown keys refused), valid together with the defaults. It validates to the plain
    mapping it was given, so a config holds (and hashes) only the overrides."""
    fields = {
        key: Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        for key, info in cls.model_fields.items()
    }
    partial = TypedDict(f"{cls.__name__}Overrides", fields, total=False)  # type: ignore[misc]
    partial.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return Annotated[partial, AfterValidator(_check_with_defaults(cls))]


def models_section_type() -> Any:
    """The type of the config's ``models`` section: ``<name>: <overrides>`` for every model."""
    fields = {name: overrides_type(cls) for name, cls in MODEL_SETTINGS.items()}
    section = TypedDict("ModelsConfig", fields, total=False)  # type: ignore[misc]
    section.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return section
