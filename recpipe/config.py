"""Typed configuration: YAML files merged in order, then ``--set a.b=c`` overrides.

Every section rejects unknown keys; a validation failure raises :class:`ConfigError`
naming the dotted key, what was expected and what was given.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import is_typeddict

from recpipe.errors import RecpipeError
from recpipe.feature_specs import SPEC_CLASSES, ContextSpec, FeatureSpec
from recpipe.model_settings import DeepModelName, models_section_type
from recpipe.registry import DEFAULT_BASELINES, model_names
from recpipe.schema import DEFAULT_EVENT_TYPES
from recpipe.search_space import Param, choice, integer, log_uniform, uniform
from recpipe.storage import Location, StorageError, check_scheme, hadoop_settings, scheme_of
from recpipe.storage import configure as configure_storage

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF_FILES = (PROJECT_ROOT / "conf" / "base.yaml", PROJECT_ROOT / "conf" / "local.yaml")


class ConfigError(RecpipeError, ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# Closed sets of names. Models: the one model table (recpipe.registry, plain Python) and the
# deep models' settings (recpipe.model_settings; a test holds the two equal). Metrics: the
# ranking metrics of recpipe.evaluation.metrics.METRICS (a test holds them equal; importing
# that module here would pull numpy into every config load).
# The names and the models section are built from tables at run time, which a static checker
# cannot follow: it sees str and a plain mapping.
if TYPE_CHECKING:
    BaselineName = str
    ModelName = str
    ModelsConfig = dict[str, dict[str, Any]]
else:
    BaselineName = Literal[tuple(model_names("baseline"))]
    ModelName = Literal[BaselineName, DeepModelName]
    # models.<name>.*: overrides of conf/models/<name>.yaml, typed by each model's settings.
    ModelsConfig = models_section_type()
MetricName = Literal["hr", "precision", "recall", "ndcg", "map", "mrr"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PathsConfig(_Section):
    root: str = Field(
        "var",
        description="Where all state lives: a local folder (relative to the cwd) or a URI "
        "(file://, hdfs://, viewfs://, s3a://, s3://, gs://, abfs://, abfss://).",
    )
    raw_events: str | None = Field(
        None, description="Raw event input: a file, a folder or a glob; a path or any Hadoop URI."
    )
    raw_items: str | None = Field(
        None, description="Item catalogue input (item_id, title, any fields), for `catalog`."
    )
    raw_users: str | None = Field(
        None, description="User profile input (user_id, any fields), for `catalog`."
    )
    raw_kg: str | None = Field(
        None, description="Knowledge-graph triples input (head, relation, tail), for `catalog`."
    )
    raw_links: str | None = Field(
        None, description="Item -> graph entity links input (item_id, entity), for `catalog`."
    )
    local: str | None = Field(
        None,
        description="Local folder for what must be on this machine's disk (embedded metastore, "
        "Spark local dirs, JVM temp, launcher run files). Default: paths.root when it is local; "
        "required when paths.root is a URI.",
    )


# Master URLs Spark's own launcher accepts; anything else fails inside the JVM with a stack
# trace, so it is refused here with the key named.
_MASTER_PATTERN = (
    r"^(local(\[(\*|[1-9][0-9]*)(,[0-9]+)?\])?|local-cluster\[[0-9]+,[0-9]+,[0-9]+\]"
    r"|spark://[^\s]+|yarn|k8s://[^\s]+)$"
)


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "recpipe"
    driver_memory: str = "4g"
    executor_memory: str | None = None
    executor_cores: int | None = Field(None, ge=1)
    executor_instances: int | None = Field(None, ge=1)
    shuffle_partitions: int = Field(8, ge=1)
    hive: bool = True
    ui: bool = False
    # Seconds between log lines on running stages (recpipe.spark_progress); 0: none.
    progress_seconds: float = Field(60.0, ge=0)
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"
    # Executors' Python environment archive (make dist: dist/recpipe-env.tar.gz), at a path or
    # URI: shipped with spark.archives, executors run its bin/python (cluster masters only).
    python_env: str | None = None
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if not re.match(_MASTER_PATTERN, value):
            raise ValueError(
                "expected local, local[N], local[*], spark://host:port, yarn or k8s://host:port"
            )
        return value


class CleanConfig(_Section):
    input_format: Literal["auto", "json", "csv", "parquet"] = "auto"
    event_types: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_TYPES), min_length=1)
    value_required_for: list[str] = Field(default_factory=lambda: ["rating"])
    ts_min: dt.date = dt.date(1995, 1, 1)
    ts_max_days_after_ds: int = Field(1, ge=0)
    max_id_length: int = Field(128, ge=1)
    bot_max_events_per_day: int | None = Field(None, ge=1)
    allow_empty: bool = False

    @model_validator(mode="after")
    def _value_types_are_event_types(self) -> CleanConfig:
        unknown = sorted(set(self.value_required_for) - set(self.event_types))
        if unknown:
            raise ValueError(f"value_required_for lists {unknown}, not in event_types")
        return self


class SessionizeConfig(_Section):
    gap_minutes: float = Field(30.0, gt=0)
    max_session_length: int | None = Field(None, ge=1)
    history_days: int | None = Field(None, ge=1)


class LeaveLastOutConfig(_Section):
    min_interactions: int = Field(3, ge=2)


class RandomByUserConfig(_Section):
    # valid: 10 % of the classic 75 % train share, so early stopping and tuning have a split.
    train: float = Field(0.675, gt=0, le=1)
    valid: float = Field(0.075, ge=0, lt=1)
    test: float = Field(0.25, ge=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> RandomByUserConfig:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + valid + test must be 1.0, got {total}")
        return self


class TemporalConfig(_Section):
    cut: dt.datetime | None = Field(None, description="Test starts here; overrides test_ratio.")
    valid_cut: dt.datetime | None = None
    test_ratio: float = Field(0.2, gt=0, lt=1)
    valid_ratio: float = Field(0.08, ge=0, lt=1)


class ColdStartConfig(_Section):
    # Shares of the items (cold_items) or users (cold_users) by first interaction time: the
    # latest test_ratio are cold in test, the valid_ratio before them cold in valid; every
    # interaction of a cold item (user) goes there.
    test_ratio: float = Field(0.1, gt=0, lt=1)
    valid_ratio: float = Field(0.05, ge=0, lt=1)


SplitProtocol = Literal["leave_last_out", "temporal", "random_by_user", "cold_items", "cold_users"]


class SplitConfig(_Section):
    protocols: list[SplitProtocol] = Field(
        default_factory=lambda: list[SplitProtocol](["leave_last_out"]), min_length=1
    )
    dedupe_user_item: bool = True
    leave_last_out: LeaveLastOutConfig = Field(default_factory=LeaveLastOutConfig)
    random_by_user: RandomByUserConfig = Field(default_factory=RandomByUserConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    cold_items: ColdStartConfig = Field(default_factory=ColdStartConfig)
    cold_users: ColdStartConfig = Field(default_factory=ColdStartConfig)


class BootstrapConfig(_Section):
    # Paired Poisson bootstrap over users (recpipe.evaluation.bootstrap); 0 turns it off.
    resamples: int = Field(1000, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, ge=0)


class EvaluationConfig(_Section):
    split: Literal["valid", "test"] = "test"
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20], min_length=1)
    exclude_train_items: bool = True
    # auto: the local engine up to local_max_rows (train + scored split), Spark beyond.
    engine: Literal["auto", "local", "spark"] = "auto"
    local_max_rows: int = Field(1_000_000, ge=0)
    user_batch: int = Field(1024, ge=1)
    # Memory for one block's dense score rows (users x items float64): fewer users per block
    # than user_batch when the catalogue is large (evaluation, validation).
    block_mib: int = Field(256, ge=1)
    partitions: int | None = Field(None, ge=1)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    # With user profiles (catalog): quality per value of these attributes; numeric ones with
    # edges in profile_bands are grouped in bands.
    profile_groups: list[str] = Field(default_factory=lambda: ["gender", "age"])
    profile_bands: dict[str, list[float]] = Field(
        default_factory=lambda: {"age": [18.0, 25.0, 35.0, 45.0, 56.0]}
    )


class DriverConfig(_Section):
    # Most rows of a split one process may read whole (the local evaluation engine,
    # baselines fitted in one process, training's validation): beyond it, a clear error
    # naming this key instead of an out-of-memory driver (~100 bytes a row).
    max_split_rows: int = Field(20_000_000, ge=0)


class PopularityConfig(_Section):
    recent_days: int | None = Field(None, ge=1)


class ItemKnnConfig(_Section):
    # What `recpipe tune --model` searches on the valid split (recpipe.search_space).
    search_space: ClassVar[dict[str, Param]] = {
        "neighbours": integer(10, 400, log=True),
        "shrink": uniform(0.0, 100.0),
    }
    neighbours: int = Field(100, ge=1)
    shrink: float = Field(0.0, ge=0)
    # Similarities count each user's most recent N items (bounds the pair self-join).
    max_user_items: int | None = Field(200, ge=1)


class AlsConfig(_Section):
    # What `recpipe tune --model` searches on the valid split (recpipe.search_space).
    search_space: ClassVar[dict[str, Param]] = {
        "rank": choice(16, 32, 64, 128),
        "reg_param": log_uniform(0.01, 3.0),
        "alpha": log_uniform(0.3, 30.0),
    }
    rank: int = Field(64, ge=1)
    reg_param: float = Field(0.3, ge=0)
    alpha: float = Field(3.0, ge=0)
    max_iter: int = Field(15, ge=1)
    checkpoint_interval: int = Field(10, ge=1)
    num_user_blocks: int = Field(4, ge=1)
    num_item_blocks: int = Field(4, ge=1)
    intermediate_storage: Literal["auto", "MEMORY_AND_DISK", "MEMORY_AND_DISK_SER", "DISK_ONLY"] = (
        "auto"
    )
    seed: int = 42
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "rating": 1.0
        }
    )  # fmt: skip
    rating_as_weight: bool = False


class Item2VecConfig(_Section):
    # What `recpipe tune --model` searches on the valid split (recpipe.search_space).
    search_space: ClassVar[dict[str, Param]] = {
        "window_size": integer(2, 50),
        "min_count": integer(1, 10),
        "history_window": integer(1, 50),
    }
    # window_size, min_count, max_iter and history_window were chosen on MovieLens 100K's
    # leave_last_out valid split (README): a wide window (the paper's whole-set context) and
    # no vectors for the rarest items matter most.
    vector_size: int = Field(64, ge=1)
    window_size: int = Field(50, ge=1)
    min_count: int = Field(5, ge=1)
    max_iter: int = Field(15, ge=1)
    step_size: float = Field(0.025, gt=0)
    num_partitions: int = Field(1, ge=1)
    max_sentence_length: int = Field(1000, ge=1)
    history_window: int = Field(10, ge=1)
    seed: int = 42


class EaseConfig(_Section):
    # What `recpipe tune --model` searches on the valid split (recpipe.search_space).
    search_space: ClassVar[dict[str, Param]] = {"l2": log_uniform(10.0, 10_000.0)}
    l2: float = Field(500.0, gt=0)
    max_items: int = Field(20000, ge=1)


class BaselinesConfig(_Section):
    models: list[BaselineName] = Field(
        default_factory=lambda: list(DEFAULT_BASELINES), min_length=1
    )
    popularity: PopularityConfig = Field(default_factory=PopularityConfig)
    itemknn: ItemKnnConfig = Field(default_factory=ItemKnnConfig)
    als: AlsConfig = Field(default_factory=AlsConfig)
    ease: EaseConfig = Field(default_factory=EaseConfig)
    nmf: AlsConfig = Field(default_factory=AlsConfig)
    item2vec: Item2VecConfig = Field(default_factory=Item2VecConfig)


class ScoreConfig(_Section):
    k: int = Field(10, ge=1)
    protocol: SplitProtocol = "random_by_user"
    model_ds: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    partitions: int | None = Field(None, ge=1)
    user_block: int = Field(1024, ge=1)
    item_block: int = Field(16384, ge=1)
    block_mib: int = Field(256, ge=1)  # dense scorers: users x items rows per block
    device: Literal["auto", "cpu", "cuda"] = "auto"
    popular_window_days: int = Field(30, ge=1)
    # all: score a model refit on every interaction up to ds (recpipe.serving); protocol: the
    # model trained on score.protocol's train split, the one the gate measured.
    train_on: Literal["all", "protocol"] = "all"

    @field_validator("model_ds", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-11-20 as a date.
        return value.isoformat() if isinstance(value, dt.date) else value


class GateConfig(_Section):
    candidate: ModelName | None = None
    baseline: ModelName = "als"
    metric: MetricName = "ndcg"
    k: int = Field(10, ge=1)
    tolerance: float = Field(0.0, ge=0)
    # Pass only when the paired bootstrap interval of (candidate - baseline) lies above
    # -tolerance: significantly better (tolerance 0) or significantly not worse by more.
    require_significant: bool = False


class PublishConfig(_Section):
    name: str = Field("published", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


ExportKind = Literal["pairwise", "pointwise", "sequence", "bag"]


class ExportConfig(_Section):
    kinds: list[ExportKind] = Field(
        default_factory=lambda: list[ExportKind](["pairwise", "pointwise", "sequence", "bag"]),
        min_length=1,
    )
    negatives: int = Field(8, ge=1)
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    max_len: int = Field(50, ge=1)
    stride: int | None = Field(None, ge=1)
    bag_max_len: int = Field(500, ge=1)
    # Files per sample table: train.processes x max(files_per_process, what rows_per_file
    # needs), so big exports spread over many tasks and files while ranks stay balanced.
    files_per_process: int = Field(2, ge=1)
    rows_per_file: int = Field(1_000_000, ge=1)
    seed: int = 42


class EarlyStoppingConfig(_Section):
    metric: MetricName = "ndcg"
    k: int = Field(10, ge=1)
    patience: int = Field(8, ge=1)
    every_epochs: int = Field(1, ge=1)
    # Validation ranks a seeded sample of this many valid users (null: all of them).
    max_users: int | None = Field(10_000, ge=1)
    seed: int = 0


class WarmStartConfig(_Section):
    # Start each ds's model from the latest earlier ds's model of the same name and protocol
    # (tables grown for new ids), trained on the recent window only.
    enabled: bool = False
    window_days: int = Field(7, ge=1)  # train on interactions of the last N days up to ds
    full_retrain_days: int = Field(7, ge=1)  # full retrain once the last one is N days old


class TrainConfig(_Section):
    models: list[DeepModelName] = Field(
        default_factory=lambda: ["bpr_mf", "neumf", "two_tower", "gru4rec", "sasrec"],
        min_length=1,
    )
    launcher: Literal["local", "torchrun", "spark", "horovod"] = "local"
    processes: int = Field(1, ge=1)
    spark_local_mode: bool = True
    # torchrun across machines: nodes in the job, this node's rank, the c10d rendezvous
    # (host:port, reachable from every node) and its id. One node: --standalone.
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    rdzv_endpoint: str | None = None
    rdzv_id: str = "recpipe"
    # Parquet reader feeding the loop: arrow (any environment) or petastorm (the Horovod
    # environment only: Petastorm needs pyarrow < 15).
    loader: Literal["arrow", "petastorm"] = "arrow"
    # Petastorm's reader pool. dummy decodes in the loader's own prefetch thread; thread has a
    # race that ends epochs early (recpipe's row accounting then fails the epoch).
    petastorm_pool: Literal["dummy", "thread", "process"] = "dummy"
    # Virtualenv holding horovodrun and the Python the ranks run (make legacy-venv builds
    # .venv-legacy); null: horovodrun and python from PATH.
    horovod_env: str | None = None
    # horovodrun -H (e.g. "node1:4,node2:4"); null: localhost with `processes` slots.
    horovod_hosts: str | None = None
    # horovodrun's controller and collectives: gloo (no MPI needed) or mpi (an MPI install).
    horovod_transport: Literal["gloo", "mpi"] = "gloo"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16"] = "auto"
    # Start each model's item table from this baseline's item vectors (same ds and protocol,
    # trained first); a warm start or a model's own pre-training takes precedence.
    item_init: Literal["item2vec"] | None = None
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(16384, ge=0)
    seed: int = 42
    grad_clip: float | None = Field(1.0, gt=0)
    # Embedding tables updated row-lazily (only rows with a gradient step; recpipe.train.optim):
    # a step then costs in proportion to the batch, not to users x dim.
    lazy_embeddings: bool = True
    # With lazy_embeddings, in a single process only: the embedding tables' backward returns
    # the batch's rows (a sparse gradient) instead of a zero-filled table-sized gradient.
    # Across processes gradients stay dense (NCCL reduces no sparse tensor).
    sparse_embedding_gradients: bool = True
    checkpoint_every: int = Field(500, ge=1)
    # Mid-epoch checkpoints are skipped while writing them would exceed this share of the
    # training time (recpipe.train.pacing); null writes every one that is due.
    checkpoint_max_overhead: float | None = Field(0.05, gt=0, le=1)
    log_every: int = Field(50, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    # MiB one training process may use (checked before launch: recpipe.train.memory); null:
    # this machine's available memory over its processes, where the launcher runs ranks here.
    memory_mib: int | None = Field(None, ge=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)

    @model_validator(mode="after")
    def _rendezvous_for_several_nodes(self) -> TrainConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("rdzv_endpoint (host:port) is required when nnodes > 1")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        if self.rdzv_endpoint and not re.fullmatch(r"[^\s:]+:\d+", self.rdzv_endpoint):
            raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port")
        return self


class WarehouseConfig(_Section):
    database: str = Field("recpipe", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    keep_versions: int = Field(3, ge=1)


class MovieLensConfig(_Section):
    wheel: str = "recbole==1.2.1"
    wheel_sha256: str = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
    member: str = "recbole/dataset_example/ml-100k/ml-100k.inter"
    member_sha256: str = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
    source_file: str | None = Field(
        None, description="Use this local ml-100k.inter or u.data instead."
    )
    catalog: bool = Field(
        True,
        description="Also write the item catalogue, user profiles, knowledge graph and item links "
        "(from the wheel; not with source_file).",
    )
    reference_sha256: dict[str, str] = Field(
        default_factory=lambda: {
            "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
            "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
            "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
        },
        description="SHA-256 of each reference file of the wheel, by file name.",
    )


class SyntheticConfig(_Section):
    n_users: int | None = Field(None, ge=1)
    n_items: int | None = Field(None, ge=1)
    start: dt.date = dt.date(2026, 11, 1)
    days: int = Field(21, ge=1)
    malformed_fraction: float = Field(0.01, ge=0, lt=1)
    duplicate_fraction: float = Field(0.005, ge=0, lt=1)
    n_files: int = Field(4, ge=1)
    seed: int = 0
    catalog: bool = Field(
        True, description="Also write an item catalogue and user profiles (see `generate`)."
    )
    late_item_fraction: float = Field(0.05, ge=0, lt=1)
    device_category_share: float = Field(
        0.3, ge=0, le=1, description="Sessions that browse their device's own category."
    )


class DatasetsConfig(_Section):
    movielens: MovieLensConfig = Field(default_factory=MovieLensConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class TuneConfig(_Section):
    # `recpipe tune`: trials per search, on this protocol's valid split (null: score.protocol).
    trials: int = Field(20, ge=1)
    protocol: SplitProtocol | None = None
    startup_trials: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    timeout_seconds: float | None = Field(None, gt=0)


class TrackingConfig(_Section):
    # MLflow tracking URI (a server, sqlite:///path/mlflow.db, ...); null: no tracking.
    mlflow_uri: str | None = None
    experiment: str = Field("recpipe", min_length=1)
    # Where a new experiment keeps its artifacts; null: the tracking server's default.
    artifact_location: str | None = None


class CatalogConfig(_Section):
    input_format: Literal["auto", "json", "csv", "parquet"] = "auto"
    mix_attribute: str | None = Field(
        "genres",
        description="Item attribute whose value mix (recommended vs history) score records "
        "and the report draws; null: none.",
    )


FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Columns of the feature tables that a feature must not shadow.
_RESERVED_FEATURE_NAMES = frozenset({"item_id", "item_idx", "user_id", "user_idx", "ds"})


class FeaturesConfig(_Section):
    items: dict[str, FeatureSpec] = Field(
        default_factory=dict,
        description="Item features by name (recpipe.feature_specs); empty: none.",
    )
    users: dict[str, FeatureSpec] = Field(
        default_factory=dict,
        description="User features by name (recpipe.feature_specs); empty: none.",
    )
    context: dict[str, ContextSpec] = Field(
        default_factory=dict,
        description="Event context features by name (recpipe.feature_specs: categorical from "
        "an event field, or a time part of ts); empty: none.",
    )

    @field_validator("items", "users", "context")
    @classmethod
    def _names(cls, specs: dict[str, Any]) -> dict[str, Any]:
        for name in specs:
            if not FEATURE_NAME.fullmatch(name) or name in _RESERVED_FEATURE_NAMES:
                raise ValueError(
                    f"feature name '{name}' must be lower-case letters, digits and _ "
                    f"(a letter first) and none of {sorted(_RESERVED_FEATURE_NAMES)}"
                )
        return specs


class Config(_Section):
    paths: PathsConfig = Field(default_factory=PathsConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    sessionize: SessionizeConfig = Field(default_factory=SessionizeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    datasets: DatasetsConfig = Field(default_factory=DatasetsConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    driver: DriverConfig = Field(default_factory=DriverConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    warehouse: WarehouseConfig = Field(default_factory=WarehouseConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    models: ModelsConfig = Field(default_factory=dict)

    @property
    def root(self) -> Location:
        """``paths.root``: where all state lives (a local folder or a URI)."""
        return Location(self.paths.root)

    @property
    def local_root(self) -> Path:
        """``paths.local``: this machine's folder for the metastore, Spark and JVM temp."""
        return Path(self.paths.local or self.paths.root)

    def hash(self) -> str:
        """Stable short hash of the resolved config, recorded in manifests."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The resolved config as YAML, as saved beside stage outputs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw_value!r} is not valid YAML ({exc})") from exc
    except ValueError as exc:  # YAML reads 2026-13-45 as a date and fails to build it
        raise ConfigError(f"--set {key}: value {raw_value!r} is not valid ({exc})") from None
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except ValueError as exc:  # a date-looking value that is no date, e.g. 2026-02-30
        raise ConfigError(f"config file {path}: a value is not valid ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return data


def _section_fields(kind: Any) -> dict[str, Any]:
    """Key -> type of a config section (a pydantic model or a TypedDict); {} for other types."""
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {key: info.annotation for key, info in kind.model_fields.items()}
    return dict(kind.__annotations__) if is_typeddict(kind) else {}


def _feature_spec_loc(loc: list[str]) -> tuple[list[str], Any]:
    """``loc`` without the spec kind pydantic inserts after a feature's name
    (features.items.<name>.<kind>.<key>), and that kind's spec class (None elsewhere)."""
    if len(loc) > 4 and loc[0] == "features" and loc[3] in SPEC_CLASSES:
        return [*loc[:3], *loc[4:]], SPEC_CLASSES[loc[3]]
    return loc, None


def _known_keys(loc: Sequence[str]) -> list[str]:
    """The keys accepted beside the dotted key ``loc`` of :class:`Config` ([] if unknown)."""
    loc, spec = _feature_spec_loc(list(loc))
    if spec is not None:
        return list(spec.model_fields)
    kind: Any = Config
    for part in loc[:-1]:
        kind = _section_fields(kind).get(part)
    return list(_section_fields(kind))


def _describe_error(error: Mapping[str, Any], prefix: Sequence[str] = ()) -> str:
    raw_loc = [*prefix, *(str(part) for part in error["loc"])]
    key = ".".join(_feature_spec_loc(raw_loc)[0]) or "<root>"
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        known = _known_keys(raw_loc)
        return f"unknown key '{key}'" + (f" (known: {', '.join(known)})" if known else "")
    return f"'{key}': {error['msg']} (got {given!r})"


def config_error(exc: ValidationError, prefix: Sequence[str] = ()) -> ConfigError:
    """A :class:`ConfigError` naming every failing key, each under the dotted ``prefix``."""
    problems = "; ".join(_describe_error(err, prefix) for err in exc.errors())
    return ConfigError(f"invalid config: {problems}")


def _state_root(root: str, base: Path) -> str:
    """``paths.root`` normalised: a local folder made absolute, a URI checked for its scheme."""
    scheme = scheme_of(root)
    if scheme is None:
        return str((base / root).resolve())
    try:
        location = Location(root)
        check_scheme(location)
    except (ValueError, StorageError) as exc:
        raise ConfigError(f"'paths.root': {exc}") from None
    return str(location)


def build_config(data: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a raw mapping into a :class:`Config`, resolving relative paths from ``base_dir``."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc) from None
    base = base_dir or Path.cwd()
    paths = config.paths
    paths.root = _state_root(paths.root, base)
    for key in ("raw_events", "raw_items", "raw_users", "raw_kg", "raw_links"):
        value = getattr(paths, key)
        if value and "://" not in value:
            setattr(paths, key, str(base / value))
    if paths.local is not None:
        if scheme_of(paths.local) not in (None, "file"):
            raise ConfigError(f"'paths.local': {paths.local} must be a local folder, not a URI")
        local = Location(paths.local).path if scheme_of(paths.local) else paths.local
        paths.local = str((base / local).resolve())
    elif not config.root.is_local:
        raise ConfigError(
            f"'paths.local': paths.root is {paths.root}; set paths.local to a local folder for "
            "the embedded metastore, Spark's local dirs and the JVM's temp folder"
        )
    # The JVM-free side reaches URIs with the Hadoop settings Spark gets (viewfs mounts, s3a).
    configure_storage(hadoop_settings(config.spark.conf))
    return config


def default_conf_files() -> list[Path]:
    """The embedded default's files that exist: ``conf/base.yaml`` and ``conf/local.yaml``."""
    return [path for path in DEFAULT_CONF_FILES if path.is_file()]


def load_config(
    files: Iterable[str | Path] | None = None,
    overrides: Iterable[str] = (),
    base_dir: Path | None = None,
) -> Config:
    """Merge YAML ``files`` in order (later wins), apply ``key=value`` overrides, validate.

    With ``files=None`` the project's ``conf/base.yaml`` and ``conf/local.yaml`` are used when
    present (the embedded default); otherwise the built-in defaults, which equal ``base.yaml``.
    """
    paths = [Path(f) for f in files] if files else default_conf_files()
    merged: dict[str, Any] = {}
    for path in paths:
        merged = _deep_merge(merged, _read_yaml(path))
    for override in overrides:
        merged = _deep_merge(merged, parse_override(override))
    return build_config(merged, base_dir)
