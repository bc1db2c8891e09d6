import pytest

from tdsnn.config import RunConfig, load_config, save_config
from tdsnn.errors import ConfigError


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
        load_config(None, {"optim.momentum": 0.9})


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
