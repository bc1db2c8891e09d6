import math

import numpy as np
import pytest
import torch

from tdsnn.cli import main
from tdsnn.data.probes import grating_probes
from tdsnn.errors import ConfigError
from tdsnn.rundir import load_run, read_sheets_file
from tdsnn.sheet import Sheet, build_sheet
from tdsnn.topo import TermWeights, stc_loss
from tdsnn.topo.losses import rate_alignment
from tdsnn.topo.metrics import topography_score
from tdsnn.topo.pairs import cluster_lists, sample_cluster_index
from tdsnn.topo.positions import mean_rate_loss, swap_optimize
from tdsnn.train import train


def test_sine_gratings_cover_orientation_frequency_phase():
    gratings = grating_probes(16, orientations=4, cycles_per_image=(2.0, 4.0), phases=2)
    images = gratings.render(np.arange(len(gratings)))
    assert images.shape == (16, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert sorted(set(gratings.params["orientation_deg"].tolist())) == [0.0, 45.0, 90.0, 135.0]
    # orientation 0: stripes vary along x only
    first = images[0, 0]
    torch.testing.assert_close(first, first[:1].expand(16, -1))


def _grating_responses(n_units, seed=0):
    """Units with random preferred orientations; 8 orientations × 4 noisy repeats: [32, N]."""
    g = torch.Generator().manual_seed(seed)
    pref = torch.rand(n_units, generator=g) * math.pi
    theta = torch.arange(8).repeat(4) * math.pi / 8
    tuning = torch.exp(2.0 * (torch.cos(2 * (theta[:, None] - pref[None, :])) - 1.0))
    return tuning + 0.1 * torch.rand(32, n_units, generator=g)


def test_one_rate_alignment_behind_loss_score_and_swap_measure():
    sheet = build_sheet("V1", (16, 8, 8), 8.0, 2.0, seed=0)
    responses = _grating_responses(sheet.num_units).double()
    clusters = cluster_lists(
        *sample_cluster_index(sheet, 20, generator=torch.Generator().manual_seed(3))
    )
    per_cluster = rate_alignment(responses, sheet.positions, clusters)
    assert per_cluster.shape == (20,) and bool(((per_cluster >= 0) & (per_cluster <= 1)).all())
    stc = stc_loss(responses[None], sheet.positions, clusters, weights=TermWeights(1.0, 0.0))
    torch.testing.assert_close(per_cluster.mean(), stc["rate"])
    score = topography_score(responses, sheet, num_clusters=20, seed=3)
    measure = mean_rate_loss(responses, sheet, num_clusters=20, seed=3)
    assert score == pytest.approx(1.0 - 2.0 * measure, abs=1e-12)


def test_swap_optimize_lowers_rate_loss_and_keeps_positions():
    sheet = build_sheet("V1", (16, 8, 8), 8.0, 2.0, seed=0)
    responses = _grating_responses(sheet.num_units)
    before = mean_rate_loss(responses, sheet, num_clusters=200, seed=1)
    out = swap_optimize(
        sheet, responses, steps=300, swaps_per_step=100, generator=torch.Generator().manual_seed(0)
    )
    after = mean_rate_loss(responses, out, num_clusters=200, seed=1)
    assert after < before - 0.05, (before, after)
    assert out.optimized and out.layout == sheet.layout and out.shape == sheet.shape
    key = lambda p: p[torch.argsort(p[:, 0] * 1e3 + p[:, 1])]  # noqa: E731
    assert torch.equal(key(out.positions), key(sheet.positions))
    assert not torch.equal(out.positions, sheet.positions)
    assert not sheet.optimized
    assert Sheet.from_state_dict(out.state_dict()).optimized


def test_swap_optimize_checks_responses():
    sheet = build_sheet("V1", (4, 2, 2), 4.0, 2.0)
    with pytest.raises(ConfigError, match="16"):
        swap_optimize(sheet, torch.rand(8, 15), steps=1)


@pytest.fixture
def spiking_run(tiny_config):
    config = tiny_config.with_overrides({"model.v_threshold": 0.3, "optim.epochs": 1})
    train(config)
    return config


@pytest.mark.slow
def test_sheet_optimize_lowers_rate_loss_and_trains_on_the_result(spiking_run, tmp_path, capsys):
    run_dir = spiking_run.run.out
    assert main(["sheet", "optimize", run_dir, "--steps", "300", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "V1: rate loss on gratings" in printed
    data = torch.load(f"{run_dir}/sheets.pt", weights_only=True)
    report = data["report"]
    assert all(r["rate_loss_after"] <= r["rate_loss_before"] for r in report.values())
    assert report["V1"]["rate_loss_after"] < report["V1"]["rate_loss_before"] - 0.01
    optimized = read_sheets_file(tmp_path / "run" / "sheets.pt")
    original = load_run(run_dir).sheets
    for name, sheet in optimized.items():
        assert sheet.optimized
        # swaps permute positions among units: the set of positions is unchanged
        a = sheet.positions[torch.argsort(sheet.positions[:, 0] * 1e4 + sheet.positions[:, 1])]
        pos = original[name].positions
        b = pos[torch.argsort(pos[:, 0] * 1e4 + pos[:, 1])]
        torch.testing.assert_close(a, b)
    follow_up = spiking_run.with_overrides(
        {"run.out": str(tmp_path / "second"), "sheet.positions": f"{run_dir}/sheets.pt"}
    )
    train(follow_up)
    used = load_run(tmp_path / "second").sheets
    torch.testing.assert_close(used["V1"].positions, optimized["V1"].positions)


def test_sheet_optimize_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["sheet", "optimize", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["sheet", "optimize", str(tmp_path / "file"), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
