import pytest
import torch

from tdsnn.cli import main
from tdsnn.data.probes import sine_gratings
from tdsnn.train import load_run, read_sheets_file, train


def test_sine_gratings_cover_orientation_frequency_phase():
    gratings = sine_gratings(16, orientations=4, cycles_per_image=(2.0, 4.0), phases=2)
    assert gratings.images.shape == (16, 3, 16, 16)
    assert gratings.images.min() >= 0 and gratings.images.max() <= 1
    assert sorted(set(gratings.orientation_deg.tolist())) == [0.0, 45.0, 90.0, 135.0]
    # orientation 0: stripes vary along x only
    first = gratings.images[0, 0]
    torch.testing.assert_close(first, first[:1].expand(16, -1))


@pytest.fixture
def spiking_run(tiny_config):
    config = tiny_config.with_overrides({"model.v_threshold": 0.3, "optim.epochs": 1})
    train(config)
    return config


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
    _, _, original = load_run(run_dir)
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
    _, _, used = load_run(tmp_path / "second")
    torch.testing.assert_close(used["V1"].positions, optimized["V1"].positions)


def test_sheet_optimize_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["sheet", "optimize", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
