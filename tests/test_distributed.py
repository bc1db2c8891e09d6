"""Two CPU processes under torchrun (gloo): identical weights, one run directory."""

import json
import os
import subprocess
import sys

import pytest

from tdsnn.rundir import Checkpoint


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", "29517", "-m", "tdsnn", "train", "--area-stack", "v1-it",
        "--width", "0.0625", "--blocks", "1", "--image-size", "16", "--epochs", "2",
        "--batch-size", "8", "--train-size", "64", "--test-size", "32",
        "--device", "cpu", "--quiet",
        "--log-every", "1", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["rank_parameter_checksums"]
    assert first == second  # parameters and batch-norm buffers agree bit for bit
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in lines if "loss" in r]
    assert steps == list(range(1, 9))  # 64 images / (2 ranks x 8) = 4 steps x 2 epochs, once
    assert sum("test_acc" in r for r in lines) == 2
    assert summary["train_images"] == 128
    state = Checkpoint.load(out / "last.pt")
    assert state.state["global_step"] == 8 and state.world_size == 2 and len(state.rng) == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "summary.json"
    ]  # fmt: skip
