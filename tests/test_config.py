"""Config loading: layering, overrides, validation errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from recpipe import model_settings
from recpipe.config import Config, ConfigError, load_config, parse_override
from recpipe.model_settings import MODEL_SETTINGS, SasRecConfig, model_defaults
from recpipe.spark import (
    SparkStartError,
    check_master_reachable,
    is_launcher_key,
    launcher_started_jvm,
    session_conf,
)

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_base_yaml_equals_builtin_defaults() -> None:
    """conf/base.yaml documents the defaults; it must not drift from the code."""
    from_file = Config.model_validate(yaml.safe_load((CONF / "base.yaml").read_text()))
    assert from_file.model_dump() == Config().model_dump()


@pytest.mark.parametrize("name", sorted(MODEL_SETTINGS))
def test_model_defaults_are_written_once_in_their_yaml(name: str) -> None:
    """conf/models/<name>.yaml is the only copy of a model's defaults: the settings class has
    none of its own, and settings built from nothing are exactly the YAML's values."""
    cls = MODEL_SETTINGS[name]
    assert [key for key, info in cls.model_fields.items() if not info.is_required()] == []
    data = yaml.safe_load((CONF / "models" / f"{name}.yaml").read_text())
    assert data == {"models": {name: cls().model_dump(mode="json")}}
    assert model_defaults(name) == data["models"][name]


def test_model_yaml_files_are_the_declared_models() -> None:
    assert {path.stem for path in (CONF / "models").glob("*.yaml")} == set(MODEL_SETTINGS)


def test_model_settings_are_yaml_overlaid_by_what_is_given() -> None:
    settings = SasRecConfig(num_blocks=3)
    assert settings.model_dump() == {**model_defaults("sasrec"), "num_blocks": 3}


def test_full_model_settings_rebuild_without_the_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's (or training spec's) settings dump needs no conf/ where it is loaded."""
    settings = SasRecConfig(num_blocks=3)
    full = settings.model_dump(mode="json")
    monkeypatch.setattr(model_settings, "MODELS_CONF", tmp_path)  # no YAML here
    model_settings._read_defaults.cache_clear()
    try:
        assert SasRecConfig.model_validate(full) == settings
        with pytest.raises(ConfigError, match="does not exist"):
            model_defaults("sasrec")
    finally:
        model_settings._read_defaults.cache_clear()


@pytest.fixture
def models_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the model defaults at a temp copy of conf/models (cache cleared around the test)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for path in (CONF / "models").glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    monkeypatch.setattr(model_settings, "MODELS_CONF", folder)
    model_settings._read_defaults.cache_clear()
    yield folder
    model_settings._read_defaults.cache_clear()


def test_broken_model_yaml_names_the_file_and_key(models_conf: Path) -> None:
    path = models_conf / "sasrec.yaml"
    text = path.read_text()
    cases = {
        "    dropout_rate: 0.2": r"sasrec\.yaml: no default for models\.sasrec\.dropout",
        "    dropout: 0.2\n    dimm: 3": r"sasrec\.yaml: .*unknown key 'models\.sasrec\.dimm'",
        "    dropout: lots": r"sasrec\.yaml: .*'models\.sasrec\.dropout'",
    }
    for line, message in cases.items():
        path.write_text(text.replace("    dropout: 0.2", line))
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["models.sasrec.dim=32"])
    path.write_text("sasrec: {dim: 64}\n")
    with pytest.raises(ConfigError, match=r"sasrec\.yaml must hold exactly models\.sasrec"):
        load_config(None, ["models.sasrec.dim=32"])


def test_models_section_holds_only_the_overrides() -> None:
    """Valid configs hash as before: models.* keeps what was set, not the YAML defaults."""
    assert load_config(None, []).models == {}
    config = load_config(None, ["models.sasrec.dim=32", "models.neumf.mlp_layers=[8, 4]"])
    assert config.models == {"sasrec": {"dim": 32}, "neumf": {"mlp_layers": [8, 4]}}
    assert SasRecConfig.model_validate(config.models["sasrec"]).dim == 32


def test_unknown_model_setting_names_the_key_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["models.sasrec.dimm=3"])
    message = str(info.value)
    assert "unknown key 'models.sasrec.dimm'" in message
    assert "known: dim, epochs" in message and "num_heads" in message


def test_unknown_model_name_names_the_key_and_the_models() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["models.sasrecc.dim=3"])
    message = str(info.value)
    assert "unknown key 'models.sasrecc'" in message
    assert all(name in message for name in MODEL_SETTINGS)


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("models.sasrec.dim=many", "'models.sasrec.dim'", "integer"),
        ("models.sasrec.dim=0", "'models.sasrec.dim'", "greater than or equal to 1"),
        ("models.neumf.mode=both", "'models.neumf.mode'", "'neumf', 'gmf' or 'mlp'"),
        ("models.neumf.mlp_layers=[]", "'models.neumf.mlp_layers'", "at least 1 item"),
        ("models.two_tower.normalize=maybe", "'models.two_tower.normalize'", "boolean"),
        ("models.sasrec=3", "'models.sasrec'", "dictionary"),
        # Checked together with the defaults: the YAML's dim 64 is not divisible by 3.
        ("models.sasrec.num_heads=3", "'models.sasrec'", "dim 64 is not divisible by"),
    ],
)
def test_wrong_model_setting_names_the_key(override: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert key in message and expected in message


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("gate.metric=ndgc", "'gate.metric'"),
        ("gate.metric=coverage", "'gate.metric'"),  # not a ranking metric: no @k to compare
        ("gate.baseline=alss", "'gate.baseline'"),
        ("gate.candidate=sasrecc", "'gate.candidate'"),
        ("train.models=[bpr_mf, sasrecc]", "'train.models.1'"),
        ("train.early_stopping.metric=auc", "'train.early_stopping.metric'"),
        ("baselines.models=[als, svd]", "'baselines.models.1'"),
    ],
)
def test_closed_choices_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_gate_accepts_any_baseline_or_deep_model() -> None:
    config = load_config(None, ["gate.candidate=als", "gate.baseline=bpr_mf", "gate.metric=mrr"])
    assert (config.gate.candidate, config.gate.baseline, config.gate.metric) == (
        "als", "bpr_mf", "mrr"
    )  # fmt: skip


def test_name_choices_match_what_the_code_supports() -> None:
    from recpipe.baselines import REGISTRY
    from recpipe.config import BaselineName, MetricName
    from recpipe.evaluation.metrics import METRICS
    from recpipe.model_settings import DeepModelName

    assert get_args(BaselineName) == tuple(REGISTRY)
    assert sorted(get_args(MetricName)) == sorted(METRICS)
    assert get_args(DeepModelName) == tuple(MODEL_SETTINGS)


def test_every_registered_model_uses_its_declared_settings() -> None:
    pytest.importorskip("torch")
    from recpipe.models import registry

    assert set(registry()) == set(MODEL_SETTINGS)
    for name, cls in registry().items():
        assert cls.config_class is MODEL_SETTINGS[name]


def test_loading_config_imports_no_torch() -> None:
    """models.* is checked without torch (the train extra is optional)."""
    code = (
        "import sys; from recpipe.config import load_config; "
        "load_config(None, ['models.sasrec.dim=32', 'train.models=[sasrec]']); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF.parent)


def test_cli_reports_a_bad_model_setting_in_one_line(capsys: pytest.CaptureFixture) -> None:
    from recpipe.cli import main

    assert main(["clean", "--set", "models.sasrec.dimm=3", "--ds", "2024-01-01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recpipe: config error: ") and "\n" not in err
    assert "models.sasrec.dimm" in err


def test_shipped_files_validate(tmp_path: Path) -> None:
    local = load_config([CONF / "base.yaml", CONF / "local.yaml"], base_dir=tmp_path)
    assert local.root.is_local and Path(local.paths.root).is_absolute()
    assert local.local_root == Path(local.paths.root)
    cluster = load_config([CONF / "base.yaml", CONF / "cluster.yaml"])
    assert cluster.root.uri == "hdfs://nn/recpipe" and cluster.local_root.is_absolute()
    assert cluster.spark.master == "yarn"
    assert cluster.spark.executor_memory == "8g"


def test_later_conf_file_wins_and_set_wins_over_files(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text(
        "spark: {shuffle_partitions: 3, driver_memory: 1g}\nclean: {max_id_length: 9}\n"
    )
    second.write_text("spark: {shuffle_partitions: 5}\n")
    config = load_config([first, second], ["clean.max_id_length=11"])
    assert config.spark.shuffle_partitions == 5  # second file wins
    assert config.spark.driver_memory == "1g"  # merged, not replaced, from the first file
    assert config.clean.max_id_length == 11  # --set wins over both


def test_set_values_are_parsed_as_yaml() -> None:
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=[x, y]") == {"a": ["x", "y"]}
    assert parse_override("a.b.c=true") == {"a": {"b": {"c": True}}}
    assert parse_override("a=") == {"a": None}
    config = load_config(None, ["split.protocols=[temporal,random_by_user]"])
    assert config.split.protocols == ["temporal", "random_by_user"]


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", ".a=1"])
def test_malformed_set_is_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_override(bad)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'clean\.max_id_lenght'"):
        load_config(None, ["clean.max_id_lenght=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'sparkk'"):
        load_config(None, ["sparkk.master=local"])
    with pytest.raises(ConfigError, match=r"'clean\.max_id_lenght' \(known: .*, max_id_length,"):
        load_config(None, ["clean.max_id_lenght=3"])


def test_wrong_type_names_key_and_expectation() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["spark.shuffle_partitions=many"])
    message = str(info.value)
    assert "'spark.shuffle_partitions'" in message
    assert "integer" in message and "'many'" in message


def test_value_constraints_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"split\.random_by_user.*must be 1\.0"):
        load_config(None, ["split.random_by_user.train=0.5"])
    with pytest.raises(ConfigError, match=r"split\.protocols\.0"):
        load_config(None, ["split.protocols=[by_magic]"])
    with pytest.raises(ConfigError, match=r"'clean\.ts_min'"):
        load_config(None, ["clean.ts_min=not-a-date"])
    with pytest.raises(ConfigError, match=r"value_required_for.*\['like'\]"):
        load_config(None, ["clean.value_required_for=[like]"])


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([listing])


def test_relative_root_resolves_from_base_dir(tmp_path: Path) -> None:
    config = load_config(None, ["paths.root=state", "paths.raw_events=in/*.jsonl"], tmp_path)
    assert config.paths.root == str(tmp_path / "state")
    assert config.paths.raw_events == str(tmp_path / "in/*.jsonl")


def test_root_uris_are_never_turned_into_local_folders(tmp_path: Path) -> None:
    """paths.root=file:///x is the folder /x; a URI stays a URI (never ./hdfs:/nn/...), needs a
    local folder named by paths.local, and an unknown scheme is refused naming the key."""
    assert load_config(None, [f"paths.root=file://{tmp_path}/st"]).paths.root == f"{tmp_path}/st"
    for uri in ("hdfs://nn:8020/recpipe", "s3a://bucket/recpipe", "viewfs://cluster/recpipe"):
        with pytest.raises(ConfigError, match=r"'paths\.local': paths\.root is "):
            load_config(None, [f"paths.root={uri}"], tmp_path)
        config = load_config(None, [f"paths.root={uri}", "paths.local=here"], tmp_path)
        assert (str(config.root), config.root.uri) == (uri, uri)
        assert config.local_root == tmp_path / "here"
    with pytest.raises(ConfigError, match=r"'paths\.root': .*unknown scheme ftp://"):
        load_config(None, ["paths.root=ftp://host/recpipe", "paths.local=here"], tmp_path)
    with pytest.raises(ConfigError, match=r"'paths\.local': s3a://b/x must be a local folder"):
        load_config(None, ["paths.root=s3a://b/r", "paths.local=s3a://b/x"], tmp_path)
    assert list(tmp_path.iterdir()) == []
    raw = load_config(None, ["paths.raw_events=hdfs://nn/landing/*.jsonl"], tmp_path)
    assert raw.paths.raw_events == "hdfs://nn/landing/*.jsonl"  # read through Hadoop as given


def test_unknown_master_is_a_config_error_naming_the_key() -> None:
    for master in ("local[2]", "local[*]", "spark://a:7077,b:7077", "yarn", "k8s://https://h:6443"):
        assert load_config(None, [f"spark.master={master}"]).spark.master == master
    for master in ("bogus://x", "local[0]", "spark://", "yarn-cluster"):
        with pytest.raises(ConfigError, match=r"'spark\.master': .*spark://host:port"):
            load_config(None, [f"spark.master={master}"])


def test_unreachable_standalone_master_fails_fast_with_the_source() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SparkStartError, match=rf"spark\.master spark://127\.0\.0\.1:{port}: no"):
        check_master_reachable(f"spark://127.0.0.1:{port}", "spark.master")
    check_master_reachable("local[2]", "spark.master")  # nothing to reach
    check_master_reachable("yarn", "spark.master")


def test_under_a_launcher_recpipe_sets_no_cluster_settings(tmp_path: Path) -> None:
    """spark-submit owns master, deploy mode, resources and local dirs; its values win."""
    config = load_config(
        None,
        [
            f"paths.root={tmp_path}",
            "spark.master=local[4]",
            "spark.executor_memory=8g",
            "spark.executor_instances=3",
            "spark.conf={spark.dynamicAllocation.enabled: 'true', spark.cores.max: '4', "
            "spark.sql.adaptive.enabled: 'false', spark.app.name: mine}",
        ],
    )
    launcher = {"spark.master": "spark://h:7077", "spark.app.name": "submitted"}
    conf = session_conf(config, launcher)
    assert not [key for key in conf if is_launcher_key(key)]
    for key in ("spark.master", "spark.local.dir", "spark.driver.memory", "spark.executor.memory",
                "spark.executor.instances", "spark.dynamicAllocation.enabled", "spark.cores.max",
                "spark.driver.extraJavaOptions", "spark.app.name"):  # fmt: skip
        assert key not in conf, key
    assert conf["spark.sql.adaptive.enabled"] == "false"  # not the launcher's: config applies
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert str(tmp_path / "metastore") in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    shared = session_conf(config, {**launcher, "spark.hadoop.hive.metastore.uris": "thrift://m:1"})
    assert "spark.hadoop.javax.jdo.option.ConnectionURL" not in shared
    assert "spark.sql.warehouse.dir" not in shared
    # Without a launcher config builds everything, master included.
    own = session_conf(config)
    assert (own["spark.master"], own["spark.executor.memory"]) == ("local[4]", "8g")
    assert launcher_started_jvm({"PYSPARK_GATEWAY_PORT": "41234"})
    assert not launcher_started_jvm({"PATH": "/bin"})


def test_a_configured_metastore_replaces_the_embedded_one(tmp_path: Path) -> None:
    cluster = load_config([CONF / "base.yaml", CONF / "cluster.yaml"], [f"paths.root={tmp_path}"])
    conf = session_conf(cluster)
    assert conf["spark.hadoop.hive.metastore.uris"].startswith("thrift://")
    assert "spark.hadoop.javax.jdo.option.ConnectionURL" not in conf
    assert conf["spark.sql.warehouse.dir"] == cluster.spark.conf["spark.sql.warehouse.dir"]


def test_hash_changes_with_config() -> None:
    assert load_config(None, []).hash() == load_config(None, []).hash()
    assert load_config(None, []).hash() != load_config(None, ["clean.max_id_length=5"]).hash()


def test_spark_settings_live_under_root_and_pass_through(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            f"paths.root={tmp_path}",
            "spark.executor_memory=8g",
            "spark.executor_cores=4",
            "spark.conf={spark.sql.shuffle.partitions: '64', spark.foo: bar}",
        ],
    )
    conf = session_conf(config)
    assert conf["spark.sql.warehouse.dir"] == f"file://{tmp_path}/warehouse"
    assert (
        str(tmp_path / "metastore" / "metastore_db")
        in conf["spark.hadoop.javax.jdo.option.ConnectionURL"]
    )
    assert (
        f"-Dderby.stream.error.file={tmp_path}/metastore/derby.log"
        in conf["spark.driver.extraJavaOptions"]
    )
    assert conf["spark.local.dir"].startswith(str(tmp_path))
    assert conf["spark.executor.memory"] == "8g"
    assert conf["spark.executor.cores"] == "4"
    assert conf["spark.sql.shuffle.partitions"] == "64"  # spark.conf wins over the shortcut
    assert conf["spark.foo"] == "bar"
    assert conf["spark.sql.session.timeZone"] == "UTC"
