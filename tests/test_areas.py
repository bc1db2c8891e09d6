import pytest
import torch

from tdsnn.areas import AreaStack
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError
from tdsnn.model_config import ModelConfig, load_area_table, parse_area_stack
from tdsnn.neurons import LIF
from tdsnn.topo.pairs import channel_pairs


def tiny(stack: str = "v1-v2-v4-it", **kw) -> AreaStack:
    settings = {"area_stack": stack, "width": 0.0625, "blocks": 1, **kw}
    return AreaStack(ModelConfig(**settings), num_classes=10)


def test_area_table_matches_design():
    table = load_area_table()
    assert table.names == ("V1", "V2", "V4", "IT")
    assert table.areas["V1"].sheet_mm == 36.75 and table.areas["IT"].neighbourhood_mm == 31.818
    assert [table.areas[a].channels for a in table.names] == [64, 128, 256, 512]
    assert [table.areas[a].stride for a in table.names] == [1, 2, 2, 2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("v1-v2-v4-it", ("V1", "V2", "V4", "IT")),
        ("v1-v4-it", ("V1", "V4", "IT")),
        ("V1-IT", ("V1", "IT")),
        ("v4-It", ("V4", "IT")),
        ("v2", ("V2",)),
    ],
)
def test_parse_area_stack_accepts_ventral_subsequences(text, expected):
    assert parse_area_stack(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("v1-v3-it", "unknown area 'v3'"),
        ("it-v1", "not in ventral order"),
        ("v1-v1-it", "twice"),
        ("", "empty"),
        ("v1--it", "empty"),
    ],
)
def test_parse_area_stack_rejects_bad_stacks(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_area_stack(text)
    assert "v1-v2-v4-it" in str(info.value)  # the message lists the valid areas


@pytest.mark.parametrize("image_size", [32, 28, 17])
def test_output_shapes_match_forward(image_size):
    model = tiny().eval()
    images = torch.rand(2, 3, image_size, image_size)
    out = model(images, record=True, record_membrane=True)
    shapes = model.output_shapes(image_size)
    assert list(shapes) == ["V1", "V2", "V4", "IT"]
    for name, (c, h, w) in shapes.items():
        assert out.spikes[name].shape == (model.timesteps, 2, c, h, w)
        assert out.membrane[name].shape == (model.timesteps, 2, c, h, w)
    assert out.logits.shape == (2, 10)


def test_forward_returns_only_what_is_asked():
    model = tiny("v1-v4-it")
    images = torch.rand(3, 3, 16, 16)
    out = model(images)
    assert out.spikes == {} and out.membrane == {}
    out = model(images, record=["v4"], record_membrane=["IT"])
    assert set(out.spikes) == {"V4"} and set(out.membrane) == {"IT"}
    assert set(out.spikes["V4"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="not in this stack"):
        model(images, record=["V2"])


def test_gradients_reach_the_stem_through_every_area():
    model = tiny()
    images = torch.rand(4, 3, 16, 16)
    out = model(images)
    out.logits.sum().backward()
    assert model.stem.conv.weight.grad is not None
    assert model.stem.conv.weight.grad.abs().sum() > 0


def test_rate_encoding_is_binary_and_direct_is_a_view():
    images = torch.rand(2, 3, 8, 8)
    rate = tiny(encoding="rate", timesteps=6).encode(images)
    assert rate.shape == (6, 2, 3, 8, 8) and set(rate.unique().tolist()) <= {0.0, 1.0}
    direct = tiny(timesteps=6).encode(images)
    assert direct.shape == (6, 2, 3, 8, 8) and direct.data_ptr() == images.data_ptr()


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"encoding": "poisson"}, "encoding"),
        ({"timesteps": 0}, "timesteps"),
        ({"width": 0}, "width"),
    ],
)
def test_bad_model_settings_are_config_errors(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny(**kw)


def test_width_scales_channels():
    model = AreaStack(ModelConfig(area_stack="v1-it", width=0.25, blocks=None), num_classes=5)
    assert model.output_shapes(32) == {"V1": (16, 32, 32), "IT": (128, 16, 16)}
    assert len(model.areas["V1"].blocks) == 2  # the area table's blocks


def test_relu_units_are_one_step_rectified_preactivations():
    model = tiny("v1-it", neuron="relu", timesteps=8).eval()
    assert model.config.timesteps == 1  # ReLU units have no time dimension
    images = torch.rand(3, 3, 16, 16)
    out = model(images, record=True, record_membrane=["it"])
    v1, it = out.spikes["V1"], out.spikes["IT"]
    assert v1.shape[0] == 1 and v1.min() >= 0 and not set(v1.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(it, torch.relu(out.membrane["IT"]))  # membrane = the pre-activation
    assert not any(isinstance(m, LIF) for m in model.modules())
    with pytest.raises(ConfigError, match="encoding"):
        ModelConfig(neuron="relu", encoding="rate")


@pytest.mark.parametrize("neuron", ["lif", "relu"])
def test_fc_readout_is_a_topographic_layer_after_the_last_area(neuron):
    model = tiny("v1-it", neuron=neuron, readout="fc", readout_units=121)
    assert model.area_names == ("V1", "IT", "readout")
    assert model.output_shapes(16)["readout"] == (121, 1, 1)
    model.eval()
    out = model(torch.rand(2, 3, 16, 16), record=["READOUT"])
    spikes = out.spikes["readout"]
    assert spikes.shape == (model.timesteps, 2, 121, 1, 1) and out.logits.shape == (2, 10)
    assert model.areas["readout"].output_weight.shape == (121, model.areas["IT"].channels)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5


def test_ws_and_as_act_on_the_readout_grid_with_eight_neighbours():
    from tdsnn.area_sheets import build_area_sheets
    from tdsnn.topo.objective import TopoObjective

    for preset in ("ws", "as"):
        config = RunConfig().with_overrides(
            {
                "model.area_stack": "v1-it",
                "model.width": 0.0625,
                "model.readout": "fc",
                "data.image_size": 16,
                "model.neuron": "relu",
                "topo.name": preset,
                "topo.connectivity": 8,
            }  # fmt: skip
        )
        model = AreaStack(config.model, num_classes=10)
        sheets = build_area_sheets(model, config)
        objective = TopoObjective(config.topo, sheets, model.area_names)
        assert objective.areas == ("readout",) and sheets["readout"].layout == "grid"
        out = model(torch.rand(8, 3, 16, 16), **objective.recording())
        terms = objective.stack_terms(model, out)["readout"]
        assert torch.isfinite(terms["total"]) and terms["total"] > 0
        terms["total"].backward()
        assert model.areas["readout"].fc.weight.grad.abs().sum() > 0
    assert len(channel_pairs(121, connectivity=8)) == 420  # the paper's 11 x 11 grid
