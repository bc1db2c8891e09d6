"""Receptive fields from the architecture and the grating frequencies they resolve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdsnn.areas import AreaStack
from tdsnn.config import RunConfig
from tdsnn.data.probes import MIN_PERIOD_PX, grating_probes, resolvable_frequencies
from tdsnn.errors import ConfigError
from tdsnn.model_config import ModelConfig
from tdsnn.receptive import (
    conv_chain_rf,
    grating_frequencies,
    receptive_field_px,
    receptive_fields_px,
)


def test_receptive_fields_of_a_hand_computed_stack():
    # stem 3x3/1: 3. V1 (one block, stride 1): +2 +2 = 7. V4 (stride 2): +2·1 = 9, then the
    # jump is 2: +2·2 = 13. IT (stride 2): +2·2 = 17, jump 4: +2·4 = 25.
    config = ModelConfig(area_stack="v1-v4-it", blocks=1)
    assert receptive_fields_px(config) == {"V1": 7.0, "V4": 13.0, "IT": 25.0}
    assert receptive_field_px(config, "v4") == 13.0
    # two blocks per area (the table's): V1 3+2+2+2+2 = 11; V2 stride 2: +2, then jump 2:
    # +4·3 = 25; V4: +2·2, jump 4: +4·3 -> 53; IT: +4, jump 8: +8·3 -> 109.
    full = ModelConfig(area_stack="v1-v2-v4-it", blocks=None, readout="fc")
    fields = receptive_fields_px(full)
    assert [fields[a] for a in ("V1", "V2", "V4", "IT")] == [11.0, 25.0, 53.0, 109.0]
    assert math.isinf(fields["readout"])
    assert conv_chain_rf([(3, 1), (3, 2), (3, 1)]) == 9
    with pytest.raises(ConfigError, match="not in this stack"):
        receptive_field_px(config, "V2")


def test_model_config_and_saved_config_agree():
    config = ModelConfig(area_stack="v1-v2-it", blocks=2, width=0.125)
    model = AreaStack(config, num_classes=3)
    assert receptive_fields_px(model) == receptive_fields_px(config)
    run = RunConfig(model=config)
    assert receptive_fields_px(run) == receptive_fields_px(run.to_dict())
    assert receptive_fields_px(run.to_dict()["model"]) == receptive_fields_px(config)


def test_receptive_field_is_where_the_input_reaches_a_unit():
    torch.manual_seed(0)
    config = ModelConfig(area_stack="v1-v4", blocks=1, width=0.125, neuron="relu")
    model = AreaStack(config, num_classes=2).eval()
    size = 32
    image = torch.rand(1, 3, size, size, requires_grad=True)
    out = model(image, record=True)
    for area, (centre_row, centre_col) in (("V1", (16, 16)), ("V4", (8, 8))):
        spikes = out.spikes[area]  # [1, 1, C, H, W]
        grad = torch.autograd.grad(spikes[0, 0, :, centre_row, centre_col].sum(), image,
                                   retain_graph=True)[0]  # fmt: skip
        reached = np.flatnonzero(grad.abs().sum(dim=(0, 1, 2)).numpy() > 0)
        assert reached.max() - reached.min() + 1 == receptive_field_px(config, area)


def test_resolvable_frequencies_span_one_cycle_per_field_to_the_finest_period():
    freqs = resolvable_frequencies(24, 7.0)
    assert freqs[0] == pytest.approx(24 / 7) and freqs[-1] == pytest.approx(24 / MIN_PERIOD_PX)
    ratios = np.diff(np.log2(freqs))
    assert np.allclose(ratios, ratios[0]) and ratios[0] <= 0.25 + 1e-12
    # several fields: the widest sets the low end; wider than the image counts as the image
    both = resolvable_frequencies(24, [7.0, 13.0, 25.0, math.inf])
    assert both[0] == pytest.approx(1.0) and both[-1] == pytest.approx(8.0)
    assert resolvable_frequencies(8, 100.0, min_period_px=8.0) == (1.0,)
    with pytest.raises(ConfigError, match="positive"):
        resolvable_frequencies(24, [0.0])
    with pytest.raises(ConfigError, match="Nyquist"):
        resolvable_frequencies(24, 7.0, min_period_px=1.5)


def test_record_default_gratings_cover_every_area():
    config = ModelConfig(area_stack="v1-v4-it", blocks=1)
    freqs = grating_frequencies(config, 24)
    assert freqs[0] == pytest.approx(1.0)  # IT's 25 px field is wider than the image
    v1 = [f for f in freqs if f >= 24 / 7.0]
    assert len(v1) >= 5  # V1's 7 px field still sees five frequencies
    probes = grating_probes(24, cycles_per_image=freqs)
    assert set(np.unique(probes.params["cycles_per_image"])) == set(freqs)
