import json
import os
import subprocess
import sys

import pytest
from conftest import default_signals

from tdsnn.cli import main

TINY = [
    "--width", "0.0625", "--image-size", "16", "--epochs", "1", "--batch-size", "16",
    "--train-size", "32", "--test-size", "32", "--quiet",
]  # fmt: skip


def run_cli(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TDSNN_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "tdsnn", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "stack, fragment",
    [("v1-v3-it", "unknown area 'v3'"), ("it-v4", "ventral order"), ("v1-v1", "twice")],
)
@pytest.mark.slow
def test_bad_area_stack_is_one_line(stack, fragment, tmp_path):
    result = run_cli("train", "--area-stack", stack, *TINY, cwd=tmp_path)
    assert_one_line_error(result, fragment, "v1-v2-v4-it")


@pytest.mark.slow
def test_bad_data_root_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    args = ["train", "--dataset", "mnist", "--data-root", str(missing), *TINY]
    result = run_cli(*args, cwd=tmp_path)
    assert_one_line_error(result, str(missing))
    result = run_cli("train", "--dataset", "imagenet", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "imagefolder")


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"\x00garbage")
    result = run_cli("train", "--out", str(run_dir), "--resume", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "corrupt", "last.pt")


def test_train_command_writes_a_run_and_default_dirs_are_numbered(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--area-stack", "v4-it", *TINY]
    assert main(args) == 0
    assert main(args) == 0
    assert (tmp_path / "runs" / "v4-it-shapes-seed0" / "summary.json").is_file()
    assert (tmp_path / "runs" / "v4-it-shapes-seed0-2" / "summary.json").is_file()
    assert main([*args, "--resume", "--epochs", "2"]) == 0  # resumes the newest run
    summary = json.loads((tmp_path / "runs" / "v4-it-shapes-seed0-2" / "summary.json").read_text())
    assert summary["epochs"] == 2


@pytest.mark.slow
def test_info_reports_versions_and_op_implementations():
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for key in ("tdsnn", "torch", "torch CUDA build", "CUDA available", "kernel policy"):
        assert key in info
    for op in ("pair_similarity", "pair_ccg"):
        assert info[f"{op} on cpu"].startswith("PyTorch reference")
    assert info["lif_multistep on cpu"].startswith("CPU kernel")
    assert info["swap_window on cpu"].startswith("CPU kernel")
    assert "swap_window on cuda" not in info  # the swaps run on the CPU


def test_info_follows_the_kernel_policy(monkeypatch, tmp_path):
    from tdsnn.info import op_implementation

    monkeypatch.setenv("TDSNN_CACHE", str(tmp_path))  # nothing built there
    monkeypatch.setenv("TDSNN_KERNELS", "reference")
    reference = "PyTorch reference (TDSNN_KERNELS=reference)"
    assert op_implementation("lif_multistep", "cuda") == reference
    assert op_implementation("lif_multistep", "cpu") == reference
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    monkeypatch.setattr("tdsnn.ops._state", {"cpu": None, "cuda": None, "warned": set()})
    assert op_implementation("pair_ccg", "cuda").startswith("CUDA kernel, built on first use")
    assert op_implementation("lif_multistep", "cpu").startswith("CPU kernel, built on first use")


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    args = [
        "train", "--area-stack", "v1-it", "--width", "0.0625", "--blocks", "1",
        "--image-size", "16", "--train-size", "1600", "--test-size", "32", "--batch-size", "8",
        "--epochs", "1", "--log-every", "1", "--quiet", "--out", str(run_dir),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TDSNN_DEBUG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdsnn", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, preexec_fn=default_signals,
    )  # fmt: skip
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    assert (run_dir / "last.pt").is_file()
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_steps"] == 200
