"""Hard kills and full disks on the training side: mid-epoch checkpoints (``--checkpoint-every``),
SIGKILL at any moment (inside a checkpoint write too), resuming a run killed before its first
checkpoint, and ENOSPC/EFBIG on checkpoints and ``summary.json`` as one-line errors that leave
the previous file intact. Every test runs ``tdsnn`` in a subprocess."""

import json
import random
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import CHILD_ENV, TORCHRUN_TRAIN, assert_same_model, torchrun

from tdsnn.rundir import Checkpoint

KILL_HOOK = "TDSNN_TEST_KILL_BEFORE_RENAME"  # see tdsnn.atomic
TDSNN = [sys.executable, "-m", "tdsnn"]
RUN = [
    "train",
    "--area-stack",
    "v1-it",
    "--width",
    "0.0625",
    "--blocks",
    "1",
    "--image-size",
    "16",
    "--train-size",
    "160",
    "--test-size",
    "64",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--log-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
]  # fmt: skip  (10 steps per epoch, 20 in all)
ENV = {k: v for k, v in CHILD_ENV.items() if k != KILL_HOOK}


def tdsnn(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TDSNN, *args], capture_output=True, text=True, env={**ENV, **(env or {})}, **kwargs
    )


def metrics(run_dir):
    """The metrics lines without throughput, which depends on the machine's load."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (no mid-epoch checkpoints)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = tdsnn(*RUN, "--checkpoint-every", "off", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.slow
def test_kill_inside_a_mid_epoch_checkpoint_write_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    # killed while writing its 2nd last.pt (step 8): temporary file on disk, not yet renamed
    killed = tdsnn(
        *RUN, "--checkpoint-every", "4steps", "--out", str(out), env={KILL_HOOK: "last.pt:2"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = Checkpoint.load(out / "last.pt").state  # the 1st, mid-epoch one, intact
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 4, 4)
    resumed = tdsnn(*RUN, "--checkpoint-every", "4steps", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_model(reference / "last.pt", out / "last.pt")
    assert metrics(reference) == metrics(out)
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, tmp_path):
    rng = random.Random()
    for i in range(3):
        out = tmp_path / f"run{i}"
        args = [*RUN, "--checkpoint-every", "2steps", "--out", str(out)]
        proc = subprocess.Popen([*TDSNN, *args], env=ENV, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(1.0, 7.0))  # from start-up to the end of training
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode == 0:  # it finished first: nothing to resume
            continue
        assert proc.returncode == -signal.SIGKILL, stderr
        if (out / "config.yaml").exists():  # else killed before it began: start it again
            args.append("--resume")
        resumed = tdsnn(*args)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_model(reference / "last.pt", out / "last.pt")


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(reference, tmp_path):
    out = tmp_path / "run"
    killed = tdsnn(
        *RUN, "--checkpoint-every", "off", "--out", str(out), env={KILL_HOOK: "last.pt:1"}
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "config.yaml").is_file() and not (out / "last.pt").exists()
    resumed = tdsnn("train", "--out", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    said = [line for line in resumed.stdout.splitlines() if "no checkpoint yet" in line]
    assert len(said) == 1 and "from the beginning" in said[0], resumed.stdout
    assert_same_model(reference / "last.pt", out / "last.pt")
    assert metrics(reference) == metrics(out)


@pytest.mark.slow
def test_resume_still_refuses_a_missing_or_foreign_folder(tmp_path):
    missing = one_line_error(tdsnn("train", "--out", str(tmp_path / "none"), "--resume"))
    assert "does not exist" in missing
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    foreign = one_line_error(tdsnn("train", "--out", str(tmp_path / "other"), "--resume"))
    assert "holds no tdsnn run" in foreign and str(tmp_path / "other") in foreign


@pytest.mark.slow
def test_checkpoint_every_is_checked(tmp_path):
    error = one_line_error(tdsnn(*RUN, "--checkpoint-every", "5 parsecs"))
    assert "checkpoint_every" in error and "500steps" in error


def limit_file_size(limit: int):
    """A ``preexec_fn``: files may not grow past ``limit`` bytes, and a write that would fails
    with EFBIG (SIGXFSZ ignored) instead of killing the process."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


@pytest.mark.slow
def test_full_disk_on_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "run"
    first = tdsnn(*RUN, "--epochs", "1", "--checkpoint-every", "off", "--out", str(out))
    assert first.returncode == 0, first.stderr
    before = (out / "last.pt").read_bytes()
    size = len(before)
    assert size > 50_000 > (out / "metrics.jsonl").stat().st_size  # only checkpoints hit it
    args = [*RUN, "--checkpoint-every", "3steps", "--out", str(out), "--resume"]
    done = tdsnn(*args, preexec_fn=limit_file_size(size // 2))
    error = one_line_error(done)
    assert str(out / "last.pt") in error and "needs" in error, error
    needed = int(error.split("(")[-1].split(" bytes")[0])  # "... 199.5 KiB (204275 bytes) ..."
    assert abs(needed - size) < 1024, (needed, size)
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    Checkpoint.load(out / "last.pt")


@pytest.mark.slow
def test_full_disk_on_summary_json_is_one_error_and_keeps_the_previous_one(tmp_path):
    (tmp_path / "summary.json").write_text('{"test_acc": 0.5}\n')
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tdsnn.errors import DiskFullError\n"
        "from tdsnn.rundir import write_summary\n"
        "try:\n"
        "    write_summary(Path(sys.argv[1]), {'values': list(range(5000))})\n"
        "except DiskFullError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=limit_file_size(4096),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "summary.json") in lines[0], done.stdout
    assert "file-size limit" in lines[0] and "bytes" in lines[0]
    assert (tmp_path / "summary.json").read_text() == '{"test_acc": 0.5}\n'
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_mid_epoch_checkpoint_under_torchrun_resumes_bit_identical(torchrun_reference, tmp_path):
    """Two CPU processes (gloo): rank 0 is killed inside its 2nd mid-epoch write of last.pt."""

    def run(*args, env=None):
        command = torchrun(*TORCHRUN_TRAIN, *args)
        env = {**ENV, **(env or {})}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    out = tmp_path / "run"
    every = ["--checkpoint-every", "3steps", "--out", str(out)]
    killed = run(*every, env={KILL_HOOK: "last.pt:2"})
    assert killed.returncode != 0, killed.stderr[-3000:]
    state = Checkpoint.load(out / "last.pt").state
    assert (state["epoch"], state["step"]) == (0, 3)
    resumed = run(*every, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_model(torchrun_reference / "last.pt", out / "last.pt")
