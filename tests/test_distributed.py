"""Two CPU processes under torchrun (gloo): identical weights, one run directory, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_interrupt import ENV, assert_same_model, start, wait_for

from tdsnn.rundir import Checkpoint

TRAIN = [
    "-m", "tdsnn", "train", "--area-stack", "v1-it", "--width", "0.0625", "--blocks", "1",
    "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--train-size", "128",
    "--test-size", "32", "--device", "cpu", "--quiet", "--log-every", "1",
]  # fmt: skip


def torchrun(port: int, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(port), *TRAIN,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "reference"
    result = subprocess.run(
        [*torchrun(29517), "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_two_cpu_processes(reference_run):
    out = reference_run
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
def test_ctrl_c_under_torchrun_then_resume_is_bit_identical(reference_run, tmp_path):
    out = tmp_path / "interrupted"
    # Ctrl-C in a terminal signals the whole process group: torchrun and both workers
    proc = start([*torchrun(29518), "--out", str(out)], start_new_session=True)
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
        [*torchrun(29519), "--out", str(out), "--resume"], capture_output=True, text=True, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_model(reference_run / "last.pt", out / "last.pt")
    one = subprocess.run(
        [*torchrun(29520, nproc=1), "--out", str(out), "--resume"],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert one.returncode != 0 and "2 process(es)" in one.stderr


@pytest.mark.slow
def test_swapped_positions_are_computed_once_and_shared_under_torchrun(tmp_path):
    """Rank 0 swaps the positions (a fresh cache: a miss) and sends them to rank 1; both ranks
    train on the same sheets."""
    out = tmp_path / "swap"
    args = [arg for arg in torchrun(29521) if arg != "--quiet"]
    args = [*args[: args.index("--epochs") + 1], "1", *args[args.index("--epochs") + 2 :]]
    env = {**ENV, "TDSNN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [*args, "--layout", "swap", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("swap-optimised positions cached in") == 1
    assert len(list((tmp_path / "cache" / "positions").glob("*.pt"))) == 1
    saved = Checkpoint.load(out / "last.pt")
    assert all(sheet["optimized"] for sheet in saved.sheets.values())
