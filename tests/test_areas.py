import pytest
import torch

from tdsnn.areas import AreaStack, load_area_table, parse_area_stack
from tdsnn.config import ModelConfig
from tdsnn.errors import ConfigError


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
