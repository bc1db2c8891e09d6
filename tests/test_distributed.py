"""Two CPU processes under torchrun (gloo): identical weights, one run directory, exact resume."""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import CHILD_ENV, TORCHRUN_TRAIN, assert_same_model, torchrun
from test_interrupt import start, wait_for

from tdsnn.rundir import Checkpoint


@pytest.mark.slow
def test_torchrun_two_cpu_processes(torchrun_reference):
    out = torchrun_reference
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["rank_parameter_checksums"]
    assert first == second  # parameters and batch-norm buffers agree bit for bit
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in lines if "loss" in r]
    assert steps == list(range(1, 17))  # 128 images / (2 ranks x 8) = 8 steps x 2 epochs, once
    assert sum("test_acc" in r for r in lines) == 2
    assert summary["train_images"] == 256
    state = Checkpoint.load(out / "last.pt")
    assert state.state["global_step"] == 16 and state.world_size == 2 and len(state.rng) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "summary.json"
    ]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_under_torchrun_then_resume_is_bit_identical(torchrun_reference, tmp_path):
    out = tmp_path / "interrupted"
    # Ctrl-C in a terminal signals the whole process group: torchrun and both workers
    proc = start(torchrun(*TORCHRUN_TRAIN, "--out", str(out), port=29518), start_new_session=True)
    metrics = out / "metrics.jsonl"
    wait_for(metrics, proc, timeout=300)
    while metrics.read_text().count("\n") < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert "--resume" in stdout, stderr[-3000:]
    saved = Checkpoint.load(out / "last.pt")
    assert saved.world_size == 2 and len(saved.rng) == 2
    assert 0 < saved.state["global_step"] < 16
    resumed = subprocess.run(
        torchrun(*TORCHRUN_TRAIN, "--out", str(out), "--resume", port=29519),
        capture_output=True,
        text=True,
        env=CHILD_ENV,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_model(torchrun_reference / "last.pt", out / "last.pt")
    one = subprocess.run(
        torchrun(*TORCHRUN_TRAIN, "--out", str(out), "--resume", port=29520, nproc=1),
        capture_output=True, text=True, env=CHILD_ENV,
    )  # fmt: skip
    assert one.returncode != 0 and "2 process(es)" in one.stderr


@pytest.mark.slow
def test_swapped_positions_are_computed_once_and_shared_under_torchrun(tmp_path, fresh_cache):
    """Rank 0 swaps the positions (a fresh cache: a miss) and sends them to rank 1; both ranks
    train on the same sheets."""
    out = tmp_path / "swap"
    args = [arg for arg in TORCHRUN_TRAIN if arg != "--quiet"]
    args = [*args[: args.index("--epochs") + 1], "1", *args[args.index("--epochs") + 2 :]]
    env = {**CHILD_ENV, "TDSNN_CACHE": str(fresh_cache)}
    result = subprocess.run(
        torchrun(*args, "--layout", "swap", "--out", str(out), port=29521),
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("swap-optimised positions cached in") == 1
    assert len(list((fresh_cache / "positions").glob("*.pt"))) == 1
    saved = Checkpoint.load(out / "last.pt")
    assert all(sheet["optimized"] for sheet in saved.sheets.values())
