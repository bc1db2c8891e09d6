"""Real signals: a run stopped by SIGINT at random moments and resumed ends bit-identical."""

import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import CHILD_ENV, assert_same_model, default_signals

from tdsnn.rundir import Checkpoint

RUN = [
    "train", "--area-stack", "v1-it", "--width", "0.0625", "--blocks", "1", "--image-size", "16",
    "--train-size", "320", "--test-size", "64", "--batch-size", "16", "--epochs", "2",
    "--log-every", "1", "--device", "cpu", "--quiet",
]  # fmt: skip


def start(args, **kwargs):
    """``args`` in a child whose SIGINT and SIGTERM have their default disposition."""
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
        preexec_fn=default_signals, **kwargs,
    )  # fmt: skip


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_at_random_moments_then_resume_is_bit_identical(tmp_path):
    tdsnn = [sys.executable, "-m", "tdsnn"]
    reference = tmp_path / "reference"
    done = start([*tdsnn, *RUN, "--out", str(reference)])
    wait_for(reference / "config.yaml", done)
    began = time.monotonic()  # training starts about here: the signals below aim after it
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    duration = time.monotonic() - began
    rng = random.Random()
    stopped, window = 0, 0.6 * duration
    for i in range(5):  # three moments; up to five while none has landed inside training
        if i >= 3 and stopped:
            break
        out = tmp_path / f"run{i}"
        proc = start([*tdsnn, *RUN, "--out", str(out)])
        wait_for(out / "config.yaml", proc)
        delay = rng.uniform(0.0, window)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        if proc.returncode == 130:
            stopped += 1
            assert "--resume" in stdout and (out / "last.pt").is_file(), (delay, stderr)
            resumed = subprocess.run(
                [*tdsnn, *RUN, "--out", str(out), "--resume"], env=CHILD_ENV, capture_output=True
            )
            assert resumed.returncode == 0, resumed.stderr
        else:  # the signal came after the last step: the run is complete; aim earlier
            assert proc.returncode == 0, (delay, proc.returncode, stderr)
            window = 0.5 * min(window, delay)
            assert (out / "summary.json").is_file()
        assert_same_model(reference / "last.pt", out / "last.pt")
        state = Checkpoint.load(out / "last.pt").state
        assert state["global_step"] == 40 and state["epoch"] == 2
    assert stopped >= 1  # at least one of the random moments landed inside training
