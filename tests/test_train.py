import json
import traceback
from pathlib import Path

import pytest
import torch

import tdsnn.train
from tdsnn.errors import CheckpointError, ConfigError, Stopped, TrainingDiverged
from tdsnn.rundir import Checkpoint
from tdsnn.train import Trainer, train


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(run_dir, name="last.pt"):
    return Checkpoint.load(run_dir / name).model


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_run_directory_contents(tiny_config):
    summary = train(tiny_config)
    out = Path(tiny_config.run.out)
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["test_acc"] == summary["test_acc"] and 0 <= summary["test_acc"] <= 1
    for key in ("images_per_s", "wall_seconds", "environment", "best_test_acc"):
        assert key in on_disk
    assert on_disk["environment"]["torch"] == torch.__version__
    lines = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in lines if "test_acc" in r] == [1, 2]
    steps = [r["global_step"] for r in lines if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # 2 epochs x 96/16 steps


@pytest.mark.slow
def test_same_seed_repeats_exactly(tiny_config, tmp_path):
    a = tiny_config.with_overrides({"run.out": str(tmp_path / "a")})
    b = tiny_config.with_overrides({"run.out": str(tmp_path / "b")})
    c = tiny_config.with_overrides({"run.out": str(tmp_path / "c"), "run.seed": 1})
    train(a), train(b), train(c)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    wa, wc = weights(tmp_path / "a"), weights(tmp_path / "c")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


class StopAt:
    """Ask the trainer to stop (as Ctrl-C would) after a given global step."""

    def __init__(self, step):
        self.step = step

    def __call__(self, trainer):
        if trainer.state.global_step == self.step:
            trainer.request_stop()


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [4, 6])  # mid-epoch, and at the end of epoch 1
def test_interrupt_and_resume_equals_uninterrupted(tiny_config, tmp_path, stop_step):
    assert_resume_is_exact(tiny_config, tmp_path, stop_step)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        {"optim.optimizer": "adam", "optim.schedule": "constant", "optim.weight_decay": 0},
        {"optim.optimizer": "sgd", "optim.schedule": "step", "optim.select": "final"},
    ],
)
def test_interrupt_and_resume_equals_uninterrupted_with_other_recipes(
    tiny_config, tmp_path, recipe
):
    config = tiny_config.with_overrides(recipe)
    assert_resume_is_exact(config, tmp_path, 4)
    rates = [r["lr"] for r in read_jsonl(tmp_path / "parts" / "metrics.jsonl") if "lr" in r]
    lr = config.optim.lr
    if config.optim.schedule == "constant":
        assert rates == [lr] * len(rates)
    else:  # steps 7-9 at lr / 10, 10-12 at lr / 100 (logged every 2 steps)
        assert rates[-3:] == pytest.approx([lr / 10, lr / 100, lr / 100])


def assert_resume_is_exact(tiny_config, tmp_path, stop_step):
    """A run stopped after ``stop_step`` steps and resumed ends with the weights and metrics of
    the same run uninterrupted."""
    full = tiny_config.with_overrides({"run.out": str(tmp_path / "full")})
    train(full)
    parts = tiny_config.with_overrides({"run.out": str(tmp_path / "parts")})
    with pytest.raises(Stopped, match="Continue with: tdsnn train --out .* --resume") as stop:
        Trainer(parts, on_step=StopAt(stop_step)).run()
    assert stop.value.path == tmp_path / "parts" / "last.pt"
    assert stop.value.continue_with == {"resume": True}
    assert Checkpoint.load(stop.value.path).state["global_step"] == stop_step
    summary = train(parts, resume=True)
    assert summary["global_steps"] == 12
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "parts"))
    full_lines = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    part_lines = read_jsonl(tmp_path / "parts" / "metrics.jsonl")
    drop = ("images_per_s",)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(full_lines) == strip(part_lines)


def test_resume_without_run_and_existing_run_errors(tiny_config):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config, resume=True)
    train(tiny_config)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config)


def test_corrupt_and_mismatched_checkpoints(tiny_config, tmp_path):
    train(tiny_config)
    last = tmp_path / "run" / "last.pt"
    other = tiny_config.with_overrides({"model.width": 0.125})
    with pytest.raises(CheckpointError, match="model.width"):
        train(other, resume=True)
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(tiny_config, resume=True)
    torch.save({"weights": 1}, last)
    with pytest.raises(CheckpointError, match="not a tdsnn checkpoint"):
        train(tiny_config, resume=True)


def test_nan_loss_stops_with_the_step_and_keeps_weights(tiny_config, monkeypatch):
    real = torch.nn.functional.cross_entropy
    calls = []

    def nan_from_fourth_step(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(tdsnn.train.F, "cross_entropy", nan_from_fourth_step)
    with pytest.raises(TrainingDiverged, match="step 4") as info:
        train(tiny_config)
    assert "last.pt" in str(info.value)
    state = Checkpoint.load(Path(tiny_config.run.out) / "last.pt")
    assert state.state["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in state.model.values() if t.is_floating_point())


def test_topographic_terms_are_logged_and_scored(tiny_config):
    summary = train(tiny_config)  # default topo: stc on every area
    assert summary["topo"] == "stc"
    lines = read_jsonl(Path(tiny_config.run.out) / "metrics.jsonl")
    step = next(r for r in lines if "loss" in r)
    for area in ("V1", "V4", "IT"):
        assert f"topo/{area}/rate" in step and f"topo/{area}/synchrony" in step
        scores = summary["topography"][area]
        assert set(scores) == {
            "topography_score", "neighbour_rate_correlation", "neighbour_weight_cosine"
        }  # fmt: skip
        assert all(-1 <= v <= 1 for v in scores.values())
    assert step["loss"] >= step["task_loss"]


@pytest.mark.parametrize("preset", ["ws", "as", "tdann", "toploss", "none", "stc-dense"])
def test_every_preset_trains(tiny_config, preset):
    config = tiny_config.with_overrides({"topo.name": preset, "optim.epochs": 1})
    summary = train(config)
    lines = read_jsonl(Path(config.run.out) / "metrics.jsonl")
    keys = {k for r in lines for k in r if k.startswith("topo/")}
    if preset == "none":
        assert keys == set()
    elif preset in ("ws", "as"):
        assert {k.split("/")[1] for k in keys} == {"IT"}  # the last area only
    else:
        assert {k.split("/")[1] for k in keys} == {"V1", "V4", "IT"}
    assert summary["topo"] == preset


def test_all_silent_area_trains_without_nan(tiny_config):
    config = tiny_config.with_overrides({"model.v_threshold": 1e6, "optim.epochs": 1})
    summary = train(config)  # no unit ever spikes: correlations are 0, never NaN
    lines = read_jsonl(Path(config.run.out) / "metrics.jsonl")
    for line in lines:
        assert all(v == v for v in line.values() if isinstance(v, float))
    assert summary["topography"]["V1"]["topography_score"] == 0.0
    state = Checkpoint.load(Path(config.run.out) / "last.pt")
    assert all(torch.isfinite(t).all() for t in state.model.values() if t.is_floating_point())


@pytest.mark.slow
def test_sheets_are_saved_fixed_and_reloadable(tiny_config, tmp_path):
    from tdsnn.rundir import read_sheets_file, write_sheets_file
    from tdsnn.sheet import Sheet

    train(tiny_config)
    first = Checkpoint.load(Path(tiny_config.run.out) / "last.pt").sheets
    best = Checkpoint.load(Path(tiny_config.run.out) / "best.pt").sheets
    for area in ("V1", "V4", "IT"):
        torch.testing.assert_close(first[area]["positions"], best[area]["positions"])
    sheets = {name: Sheet.from_state_dict(state) for name, state in first.items()}
    flipped = {
        name: Sheet.from_state_dict({**s.state_dict(), "positions": s.positions.flip(0)})
        for name, s in sheets.items()
    }
    write_sheets_file(flipped, tmp_path / "sheets.pt")
    assert read_sheets_file(tmp_path / "sheets.pt").keys() == sheets.keys()
    config = tiny_config.with_overrides(
        {"run.out": str(tmp_path / "again"), "sheet.positions": str(tmp_path / "sheets.pt")}
    )
    train(config)
    again = Checkpoint.load(tmp_path / "again" / "last.pt").sheets
    torch.testing.assert_close(again["V1"]["positions"], flipped["V1"].positions)
    wrong = tiny_config.with_overrides(
        {"run.out": str(tmp_path / "wrong"), "sheet.positions": str(tmp_path / "sheets.pt"),
         "model.width": 0.125}
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="sheet"):
        train(wrong)


def test_checkpoint_with_header_but_missing_keys_is_one_error(tiny_config):
    train(tiny_config)
    last = Path(tiny_config.run.out) / "last.pt"
    torch.save({"format": "tdsnn-checkpoint", "version": 2, "config": {}}, last)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        train(tiny_config, resume=True)
    data = {**torch.load(Path(tiny_config.run.out) / "best.pt", weights_only=True), "rng": 3}
    torch.save(data, last)
    with pytest.raises(CheckpointError, match="'rng' should be a list"):
        Checkpoint.load(last)


def test_resume_with_another_batch_size_is_refused(tiny_config, tmp_path):
    with pytest.raises(Stopped):
        Trainer(tiny_config, on_step=StopAt(3)).run()
    other = tiny_config.with_overrides({"optim.batch_size": 8})
    with pytest.raises(CheckpointError, match="--batch-size 16"):
        train(other, resume=True)


def test_resume_with_another_optimizer_is_refused(tiny_config):
    with pytest.raises(Stopped):
        Trainer(tiny_config, on_step=StopAt(3)).run()
    other = tiny_config.with_overrides({"optim.optimizer": "sgd"})
    with pytest.raises(CheckpointError, match="was trained with --optimizer adamw; resume with"):
        train(other, resume=True)


def test_last_epoch_is_evaluated_once(tiny_config, monkeypatch):
    calls = []
    real = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self: calls.append(1) or real(self))
    summary = train(tiny_config)
    assert len(calls) == tiny_config.optim.epochs
    assert (
        summary["test_acc"]
        == json.loads((Path(tiny_config.run.out) / "summary.json").read_text())["test_acc"]
    )


@pytest.mark.slow
def test_steps_read_the_device_only_where_needed(tiny_config, monkeypatch):
    """Between log steps a training step reads back one flag (the agreed finite-loss check) and
    nothing else: clusters are picked on the device from banks built at start-up."""
    # width 0.25: windows on every sheet hold >= 2 units, so no cluster window is redrawn
    overrides = {"run.log_every": 1000, "optim.epochs": 1, "model.width": 0.25}
    config = tiny_config.with_overrides(overrides)
    reads, inside = [], []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            # the optimiser's step counters live on the CPU by design: not device reads
            if inside and "torch/optim/" not in traceback.extract_stack(limit=2)[0].filename:
                reads.append(1)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    real_step, per_step = Trainer._train_step, []

    def step(self, images, labels):
        inside.append(1)
        before = len(reads)
        try:
            return real_step(self, images, labels)
        finally:
            inside.clear()
            per_step.append(len(reads) - before)

    monkeypatch.setattr(Trainer, "_train_step", step)
    Trainer(config).run()
    assert len(per_step) == 6 and max(per_step) == 1, per_step
