"""Hard kills, full disks and concurrent readers on the recording side: SIGKILL at random
moments and inside a batch write leaves a file readable up to its last committed trial, which
``--resume`` completes; ENOSPC/EFBIG is a one-line error that keeps the committed trials (and an
existing file); a recording still being written is read while its writer runs; the library
names its parameters and the command line its flags; a writer that fails to open leaves the
interrupted file it was continuing closed."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings

import h5py
import numpy as np
import pytest
import torch
from test_faults_train import limit_file_size, one_line_error
from test_record import _SLOW_RECORD, REPO, _start_slow_record, _wait_for_trials

import tdsnn.record
import tdsnn.record.recorder as recorder
from tdsnn.cli import main
from tdsnn.errors import ConfigError
from tdsnn.record import IncompleteRecordingWarning, record_run

KILL_HOOK = "TDSNN_TEST_KILL_BEFORE_RENAME"  # see tdsnn.atomic (and the recording writer)
TDSNN = [sys.executable, "-m", "tdsnn"]
OPTIONS = ["--batch-size", "8", "--membrane", "--membrane-units", "5", "--quiet"]
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("TDSNN_DEBUG", KILL_HOOK)},
    "OMP_NUM_THREADS": "1",
}


def record(run_dir, out, *extra, env=None, **kwargs) -> subprocess.CompletedProcess:
    """``tdsnn record`` in a subprocess."""
    argv = [*TDSNN, "record", str(run_dir), *OPTIONS, "--out", str(out), *extra]
    return subprocess.run(
        argv, capture_output=True, text=True, env={**ENV, **(env or {})}, **kwargs
    )


@pytest.fixture(scope="module")
def full(spiking_run, tmp_path_factory):
    """An uninterrupted recording with the options of these tests."""
    path = tmp_path_factory.mktemp("full") / "full.h5"
    assert main(["record", str(spiking_run), *OPTIONS, "--out", str(path)]) == 0
    return path


def open_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteRecordingWarning)
        return tdsnn.record.open(path)


def assert_prefix(path, full, trials=None):
    """``path`` holds the first trials of ``full`` (``trials`` of them, if given), as written."""
    with open_quietly(path) as part, tdsnn.record.open(full) as whole:
        n = part.num_trials
        assert trials is None or n == trials, (n, trials)
        for area in whole.areas:
            np.testing.assert_array_equal(part.counts(area), whole.counts(area, slice(0, n)))
            for got, want in zip(part.spikes(area), whole.spikes(area, slice(0, n)), strict=True):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(part.membrane(area), whole.membrane(area, slice(0, n)))
        for key, column in whole.trials.items():
            np.testing.assert_array_equal(part.trials[key], column[:n])
        return n


def assert_resumes_to_full(run_dir, out, full):
    done = record(run_dir, out, "--resume")
    assert done.returncode == 0, done.stderr
    with tdsnn.record.open(full) as whole:
        total = whole.num_trials
    assert_prefix(out, full, trials=total)
    with tdsnn.record.open(out) as rec:
        assert rec.complete


# --------------------------------------------------------------------------- hard kills


@pytest.mark.slow
def test_kill_inside_a_batch_write_keeps_the_committed_trials_then_resume_completes(
    spiking_run, full, tmp_path
):
    out = tmp_path / "killed.h5"
    # killed during the 3rd batch: its data written, not committed; the 2nd not committed
    # either (a batch's counts are committed with the next batch), so 8 trials count
    killed = record(spiking_run, out, env={KILL_HOOK: "killed.h5:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with pytest.warns(IncompleteRecordingWarning, match="killed after 8 of"):
        tdsnn.record.open(out).close()
    assert_prefix(out, full, trials=8)
    assert_resumes_to_full(spiking_run, out, full)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_readable_file_then_resume_completes(
    spiking_run, full, tmp_path
):
    rng = random.Random()
    for i in range(3):
        out = tmp_path / f"r{i}.h5"
        proc = _start_slow_record(spiking_run, out)  # 0.05 s per trial, batches of 4
        time.sleep(rng.uniform(0.5, 8.0))  # from start-up to well into the recording
        proc.kill()
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue
        if not out.exists():  # killed before the file was made: nothing to resume
            continue
        assert_prefix(out, full)
        with open_quietly(out) as killed:
            if killed.complete:  # killed after closing the file: nothing to resume
                continue
        assert_resumes_to_full(spiking_run, out, full)


# --------------------------------------------------------------------------- full disks


@pytest.mark.slow
def test_full_disk_while_recording_is_one_line_and_keeps_the_committed_trials(
    spiking_run, full, tmp_path
):
    out = tmp_path / "full-disk.h5"
    size = full.stat().st_size  # a batch claims its room and a chunk per dataset ahead
    done = record(spiking_run, out, preexec_fn=limit_file_size(size))
    line = one_line_error(done)
    assert f"could not write {out}" in line and "file-size limit" in line, line
    assert "it needs" in line and "continue with --resume" in line, line
    with pytest.warns(IncompleteRecordingWarning, match="interrupted after"):
        tdsnn.record.open(out).close()
    assert 0 < assert_prefix(out, full)
    assert_resumes_to_full(spiking_run, out, full)


@pytest.mark.slow
def test_full_disk_while_overwriting_keeps_the_previous_file(spiking_run, full, tmp_path):
    out = tmp_path / "kept.h5"
    shutil.copy(full, out)
    before = out.read_bytes()
    limit = limit_file_size(len(before))
    done = record(spiking_run, out, "--overwrite", preexec_fn=limit)
    line = one_line_error(done)
    assert f"could not write {out}.partial" in line and f"{out} is unchanged" in line, line
    assert out.read_bytes() == before
    partial = out.with_name("kept.h5.partial")
    assert 0 < assert_prefix(partial, full)


# --------------------------------------------------------------------------- concurrent readers


@pytest.mark.slow
def test_a_recording_being_written_reads_its_committed_trials(spiking_run, full, tmp_path):
    out = tmp_path / "live.h5"
    argv = ["record", str(spiking_run), *OPTIONS, "--out", str(out)]
    slower = _SLOW_RECORD.replace("time.sleep(0.05)", "time.sleep(1.0)")  # per batch of 8
    assert slower != _SLOW_RECORD
    proc = subprocess.Popen(
        [sys.executable, "-c", slower, *argv], env={**ENV, "PYTHONPATH": REPO},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_trials(out, 8, proc)
        with pytest.warns(IncompleteRecordingWarning, match="still being written: .* committed"):
            live = tdsnn.record.open(out)
        with live:
            assert live.state == "writing" and not live.complete and live.num_trials >= 8
            first = live.num_trials
            _wait_for_trials(out, first + 8, proc)
            assert live.refresh() >= first + 8  # the trials committed since it was opened
            assert len(live.counts("V1")) == live.num_trials and live.state == "writing"
        assert_prefix(out, full)
        analysis = subprocess.run(
            [*TDSNN, "analyze", str(out), "--out", str(tmp_path / "analysis")],
            capture_output=True, text=True, env=ENV, timeout=300,
        )  # fmt: skip
        assert proc.poll() is None, "the writer ended before the reader was done"
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert analysis.returncode == 0, analysis.stderr
    notes = [x for x in analysis.stderr.splitlines() if "still being written" in x]
    assert len(notes) == 1 and "trials committed" in notes[0], analysis.stderr
    report = (tmp_path / "analysis" / "report.md").read_text()
    assert "still being written" in report


# --------------------------------------------------------------------------- errors and handles


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"per_class": 0}, "per_class"),
        ({"membrane_units": 0}, "membrane_units"),
        ({"dt_ms": 0.0}, "dt_ms"),
        ({"dt_ms": float("nan")}, "dt_ms"),
    ],
)
def test_record_run_names_its_parameters_and_the_command_its_flags(tmp_path, capsys, options, name):
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        record_run(tmp_path, tmp_path / "x.h5", **options)
    (key, value), flag = next(iter(options.items())), "--" + name.replace("_", "-")
    argv = ["record", str(tmp_path), "--out", str(tmp_path / "x.h5"), flag, str(value)]
    if key == "membrane_units":
        argv.append("--membrane")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tdsnn: {flag} must be") or f" {flag} must be" in err, err
    assert f"{name} must" not in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_a_writer_that_fails_to_open_leaves_the_interrupted_file_closed(
    spiking_run, full, tmp_path, monkeypatch
):
    out = tmp_path / "stopped.h5"
    shutil.copy(full, out)
    with h5py.File(out, "r+") as f:
        f["tdsnn/status"][...] = [16, 2]  # interrupted after 16 trials

    def fails(*args, **kwargs):
        raise OSError("forced failure to create the file")

    monkeypatch.setattr(recorder, "RecordingWriter", fails)
    with pytest.raises(OSError, match="forced failure"):
        record_run(spiking_run, out, membrane_units=5, batch_size=8, resume=True, quiet=True)
    assert not h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)  # no file left open
    with h5py.File(out, "r+"):  # can be opened for writing again
        pass


def end_of_allocations(path) -> int:
    """The end-of-file address in the superblock (v2/v3, 8-byte addresses) of the HDF5 file."""
    head = path.read_bytes()[:36]
    assert head[8] in (2, 3) and head[9] == 8
    return int.from_bytes(head[28:36], "little")


def test_space_is_claimed_ahead_of_each_batch_and_released_at_the_end(tmp_path):
    from tdsnn.data.probes import grating_probes
    from tdsnn.record import AreaNodes, RecordingMeta, RecordingWriter, TrialBatch, area_batch

    area = AreaNodes("V1", (2, 3, 3), np.random.rand(18, 2).astype(np.float32), 5.0, 1.0, "tiled")
    params = grating_probes(8, orientations=2, cycles_per_image=(1.0,), phases=1).params
    meta = RecordingMeta((area,), 4, 1.0, "gratings", params, (), {}, {}, {})
    path = tmp_path / "w.h5"
    with RecordingWriter(path, meta, 12, trials_per_chunk=4) as writer:
        for first in (0, 4, 8):
            spikes = (torch.rand(4, 4, 2, 3, 3) < 0.3).float()
            writer.append(
                TrialBatch(first, np.zeros(4, np.int64), {"V1": area_batch(spikes, first, 1.0)})
            )
            claimed = path.stat().st_size
            # claimed before the batch's writes, which stayed inside it, with room to spare
            assert claimed >= end_of_allocations(path) + (1 << 17)
    assert path.stat().st_size == end_of_allocations(path) < claimed  # the claim is cut off
    with tdsnn.record.open(path) as rec:
        assert rec.complete and rec.num_trials == 12
