"""``tdsnn evaluate``'s efficiency figures (firing rates, silent units, synaptic operations
against a ReLU twin's dense multiply-accumulates)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tdsnn.areas import AreaStack
from tdsnn.evaluate.representation import (
    fan_out,
    representation_metrics,
    synaptic_operations,
)
from tdsnn.evaluate.runner import load_eval_run
from tdsnn.model_config import ModelConfig


def _g(seed=1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def two_areas():
    """A hand-built two-area LIF stack (V1 -> IT, untrained, eval mode) that spikes readily,
    and images it responds to."""
    torch.manual_seed(0)
    config = ModelConfig(area_stack="v1-it", width=0.0625, blocks=1, v_threshold=0.3)
    model = AreaStack(config, num_classes=3).eval()
    images = torch.rand(4, 3, 16, 16, generator=_g(0))
    return model, images


@pytest.fixture(scope="module")
def loaded(spiking_run):
    return load_eval_run(spiking_run, test_size=32, data_root=None, device="cpu", name="tiny")


# --------------------------------------------------------------------------- efficiency


def test_fan_out_counts_the_outputs_each_input_position_feeds():
    strided = nn.Conv2d(1, 2, 3, stride=2, padding=1)  # 4 x 4 -> 2 x 2
    rows = torch.tensor([1.0, 2.0, 1.0, 1.0])  # output rows whose window covers each input row
    torch.testing.assert_close(fan_out(strided, (4, 4)), 2 * rows[:, None] * rows[None, :])
    same = nn.Conv2d(3, 5, 3, padding=1)  # 3 x 3 -> 3 x 3
    expected = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]) * 5
    torch.testing.assert_close(fan_out(same, (3, 3)), expected)
    assert float(fan_out(nn.Linear(7, 11))) == 11


class _TwoLayers(nn.Module):
    """A hand-built network of two 'areas': a strided conv on given spike trains, then a
    linear layer on its pooled binarised output."""

    def __init__(self, spikes: torch.Tensor):
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)
        nn.init.ones_(conv.weight)
        self.areas = nn.ModuleDict({"A": conv, "B": nn.Linear(2, 3)})
        self.area_names = ("A", "B")
        self.config = SimpleNamespace(neuron="lif")
        self.spikes = spikes  # [T, B, 1, 4, 4]

    def forward(self, images):
        t, b = self.spikes.shape[:2]
        y = self.areas["A"](self.spikes.flatten(0, 1)).unflatten(0, (t, b))  # [T, B, 2, 2, 2]
        return self.areas["B"]((y > 0).float().mean(dim=(3, 4)))  # [T, B, 3]


def test_synaptic_operations_equal_a_hand_count():
    spikes = torch.zeros(2, 1, 1, 4, 4)  # T = 2, one image
    spikes[0, 0, 0, 0, 0] = 1  # covered by 1 x 1 output positions, 2 channels: 2 operations
    spikes[1, 0, 0, 1, 1] = 1  # 2 x 2 positions: 8
    spikes[1, 0, 0, 3, 2] = 1  # 1 x 1 positions: 2
    found = synaptic_operations(_TwoLayers(spikes), torch.zeros(1, 1), batch_size=1)
    # A: 2 + 8 + 2; dense: 16 inputs feeding (1+2+1+1)^2 = 25 windows' worth, x 2 channels
    assert found["A"] == {"dense_macs": 50.0, "synaptic_ops": 12.0}
    # B: both pooled channels are nonzero at both steps (4 events) x 3 outputs; dense 2 x 3
    assert found["B"] == {"dense_macs": 6.0, "synaptic_ops": 12.0}


def test_efficiency_of_a_stack_follows_its_spikes(two_areas):
    model, images = two_areas
    found = synaptic_operations(model, images, batch_size=3)
    with torch.no_grad():
        spikes = model(images, record=True).spikes
    for area, values in found.items():
        assert 0 < values["synaptic_ops"] <= model.timesteps * values["dense_macs"], area
    v1 = model.areas["V1"].blocks[0]  # conv1 3x3, conv2 3x3 (and a 1x1 shortcut conv)
    size, out = images.shape[-2:], spikes["V1"].shape[-2:]  # the stem keeps the image size
    layers = [(v1.conv1.conv, size), (v1.conv2.conv, out)]
    if not isinstance(v1.shortcut, nn.Identity):
        layers.append((v1.shortcut.conv, size))
    h, w = out
    by_formula = sum(
        h * w * c.out_channels * c.in_channels * c.kernel_size[0] ** 2 for c, _ in layers
    )  # fmt: skip  (padding included)
    dense = sum(float(fan_out(layer, s).sum()) * layer.in_channels for layer, s in layers)
    assert found["V1"]["dense_macs"] == pytest.approx(dense) and dense <= by_formula


def test_firing_rates_and_silent_units_of_each_area(loaded):
    model, images = loaded.model, loaded.images
    found = representation_metrics(model, images, loaded.trained.sheets, batch_size=16)
    with torch.no_grad():
        spikes = model(images, record=True).spikes
    for area, values in found.items():
        assert values["firing_rate"] == pytest.approx(float(spikes[area].mean()), rel=1e-6)
        silent = spikes[area].sum(dim=(0, 1)).flatten() == 0
        assert values["silent_fraction"] == pytest.approx(float(silent.float().mean()))
