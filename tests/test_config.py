import dataclasses
import re
import typing

import pytest

from tdsnn.config import ModelConfig, OptimConfig, RunConfig, RunSettings, load_config, save_config
from tdsnn.errors import ConfigError
from tdsnn.topo import TopoConfig


def test_yaml_round_trip(tmp_path):
    config = RunConfig().with_overrides({"model.area_stack": "v4-it", "optim.lr": 0.01})
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_overrides_are_type_checked():
    config = load_config(None, {"optim.epochs": "3", "run.amp": "true", "model.v_reset": "none"})
    assert config.optim.epochs == 3 and config.run.amp is True and config.model.v_reset is None
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(None, {"optim.epochs": "three"})
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(None, {"optim.epochs": 2.5})
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"optim.nesterov": True})


def test_unknown_yaml_keys_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  widht: 0.5\n")
    with pytest.raises(ConfigError, match="widht"):
        load_config(path)
    path.write_text("modle:\n  width: 0.5\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_experiment_configs_load():
    from importlib import resources

    for entry in resources.files("tdsnn.configs").iterdir():
        if entry.name.endswith(".yaml") and entry.name != "areas.yaml":
            config = load_config(str(entry))
            assert config.model.area_stack


def test_topo_preset_on_the_command_line_brings_its_values():
    config = load_config(None, {"topo.name": "ws", "topo.alpha": 2.0})
    assert config.topo.name == "ws" and config.topo.feature == "weights"
    assert config.topo.alpha == 2.0 and config.topo.areas == ("last",)
    assert load_config(None).topo.name == "stc"


# ------------------------------------------------------------------ types and ranges

SECTIONS = typing.get_type_hints(RunConfig)  # section name -> dataclass


def fields_of(kinds: tuple[type, ...]) -> list[tuple[str, type]]:
    """``(dotted key, base type)`` of every config field whose (Optional) type is in ``kinds``."""
    out = []
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            (base,) = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
            if (typing.get_origin(base) or base) in kinds:
                out.append((f"{section}.{name}", base))
    return out


NUMERIC_FIELDS = fields_of((int, float))

# key, a value just outside each end of the range, the range as the message spells it
RANGES = [
    ("model.width", ["0", 16.5], "(0, 16]"),
    ("model.blocks", [0, 65], "[1, 64] or null"),
    ("model.timesteps", [0, 10_001], "[1, 10000]"),
    ("model.tau", [0.5, 2e6], "[1, 1000000]"),
    ("model.v_threshold", [0, 2e6], "(0, 1000000]"),
    ("model.v_reset", [-2e6, "inf"], "[-1000000, 1000000] or null"),
    ("data.image_size", [7, 4097], "[8, 4096]"),
    ("data.train_size", [0, 2 * 10**9], "[1, 1000000000] or null"),
    ("data.test_size", [-1, 2 * 10**9], "[1, 1000000000] or null"),
    ("data.num_workers", [-1, 257], "[0, 256]"),
    ("optim.epochs", [0, 10**6 + 1], "[1, 1000000]"),
    ("optim.batch_size", ["0", "-3", 2**21], "[1, 1048576]"),
    ("optim.lr", [0, -1e-3, 101, "nan", "inf"], "(0, 100]"),
    ("optim.weight_decay", [-1e-9, 11, float("nan")], "[0, 10]"),
    ("optim.momentum", [-0.1, -1, 1.5], "[0, 1]"),
    ("topo.alpha", [-1, 2e6], "[0, 1000000]"),
    ("topo.beta", [-1, 2e6], "[0, 1000000]"),
    ("topo.gamma", [-1, 2e6], "[0, 1000000]"),
    ("topo.warmup", [-0.1, 1.5], "[0, 1]"),
    ("topo.num_clusters", [0, 10_001], "[1, 10000]"),
    ("topo.max_units", [1, 100_001], "[2, 100000]"),
    ("topo.window_factor", [0, 101], "(0, 100]"),
    ("topo.toploss_factor", [0.5, 101], "[1, 100]"),
    ("topo.ccg_window", [-1, 10_001], "[0, 10000] or null"),
    ("sheet.jitter", [-0.1, 11], "[0, 10]"),
    ("run.seed", [-1, 2**32], "[0, 4294967295]"),
    ("run.log_every", [0, 10**9 + 1], "[1, 1000000000]"),
    ("model.readout_units", [0, 1_000_001], "[1, 1000000]"),
    ("model.readout_dropout", [-0.1, 1.0], "[0, 0.99]"),
    ("data.val_size", [-1, 10**9 + 1], "[0, 1000000000]"),
    ("optim.until_plateau", [0, 10**6 + 1], "[1, 1000000] or null"),
    ("topo.cluster_positions", [-1, 1001], "[0, 1000]"),
]


@pytest.mark.parametrize(
    "key, value, interval", [(k, v, i) for k, values, i in RANGES for v in values]
)
def test_out_of_range_names_key_value_and_range(key, value, interval):
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    message = str(info.value)
    assert key in message and repr(value) in message and interval in message, message
    assert "\n" not in message


def test_every_numeric_field_has_a_finite_range():
    ranged = {key for key, *_ in RANGES} | {"topo.connectivity"}
    assert {key for key, _ in NUMERIC_FIELDS} == ranged
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            rule = f.metadata.get("rule")
            if rule is not None and rule["choices"] is None:
                assert rule["low"] is not None and rule["high"] is not None, f.name


@pytest.mark.parametrize("key, kind", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", ["nan", float("nan"), "inf", float("-inf"), 1e30, "1e400",
                                   10**400, "abc", "", [1], {"a": 1}, True])  # fmt: skip
def test_every_numeric_field_rejects_non_numbers_and_non_finite(key, kind, value):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, {key: value})


@pytest.mark.parametrize("key", [key for key, kind in NUMERIC_FIELDS if kind is int])
@pytest.mark.parametrize("value", [2.5, "2.5", "1e-3"])
def test_integer_fields_reject_fractions(key, value):
    with pytest.raises(ConfigError, match=re.escape(key) + " must be (an integer|one of)"):
        load_config(None, {key: value})


def test_integral_spellings_of_integers_are_accepted():
    config = load_config(None, {"optim.epochs": "2.0", "optim.batch_size": 32.0, "run.seed": "1e3"})
    assert (config.optim.epochs, config.optim.batch_size, config.run.seed) == (2, 32, 1000)
    assert isinstance(config.optim.epochs, int) and isinstance(config.optim.lr, float)


ODD_VALUES = [None, True, 0, -1, 2.5, float("nan"), 10**400, "", "none", "x", [], [1, "a"],
              {"a": 1}, object()]  # fmt: skip


@pytest.mark.parametrize("key", [key for key, _ in fields_of((int, float, str, bool, tuple))])
def test_any_value_builds_or_is_a_config_error(key):
    for value in ODD_VALUES:
        try:
            load_config(None, {key: value})
        except ConfigError as exc:
            assert key in str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize(
    "key, value, valid",
    [
        ("model.encoding", "poisson", "rate"),
        ("model.surrogate", "arctan", "atan"),
        ("data.dataset", "imagenet", "cifar10"),
        ("run.device", "gpu", "cuda"),
        ("optim.optimizer", "rmsprop", "adamw"),
        ("optim.schedule", "linear", "constant"),
        ("optim.select", "best", "best-val"),
        ("data.dataset", "mnist5k", "mnist-5k"),
        ("sheet.layout", "hexagonal", "retinotopic"),
        ("topo.pairs", "all", "grid-neighbours"),
        ("topo.connectivity", 6, "[4, 8]"),
    ],
)
def test_choices_list_the_valid_values(key, value, valid):
    with pytest.raises(ConfigError, match=re.escape(valid)) as info:
        load_config(None, {key: value})
    assert key in str(info.value) and repr(value) in str(info.value)


def test_sections_built_from_python_are_checked():
    with pytest.raises(ConfigError, match=re.escape("model.width must be a finite number in")):
        ModelConfig(width=0)
    with pytest.raises(ConfigError, match="optim.lr"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match="run.log_every"):
        RunSettings(log_every=0)
    with pytest.raises(ConfigError, match="topo.alpha"):
        TopoConfig(alpha=-1.0)
    assert OptimConfig(epochs="5").epochs == 5  # converted, whoever builds it


def test_hard_reset_must_be_below_threshold():
    with pytest.raises(ConfigError, match="model.v_reset must be below model.v_threshold"):
        ModelConfig(v_threshold=0.5, v_reset=0.5)
    assert ModelConfig(v_threshold=0.5, v_reset=None).v_reset is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("optim:\n  epochs: .inf\n", "optim.epochs must be an integer in [1, 1000000], got inf"),
        ("optim:\n  epochs: .nan\n", "optim.epochs"),
        ("model:\n  timesteps: 2.5\n", "model.timesteps"),
        ("model:\n  tau: -.inf\n", "model.tau"),
        ("optim: 5\n", "section 'optim' must be a mapping"),
        ("topo: [1]\n", "topo config must be a mapping"),
        ("model:\n  1: a\n  b: c\n", "unknown key(s) [1, 'b']"),
        ("- 1\n", "must be a mapping of sections"),
        ("model: {width: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_config_error_line(text, fragment, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_unreadable_config_file_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(path)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
