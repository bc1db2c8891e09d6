"""One stop policy for every long command (tdsnn.runtime.StopSignals): a SIGINT stops
``tdsnn record``, ``tdsnn evaluate`` and ``tdsnn sheet optimize`` at the next safe boundary
with usable files and exit status 130, also when the command was started with SIGINT ignored
(as ``nohup tdsnn ... &`` from a shell without job control starts it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import pytest
import torch
from conftest import sigint_ignored

import tdsnn.record
from tdsnn.record import IncompleteRecordingWarning
from tdsnn.runtime import StopSignals

REPO = str(Path(__file__).resolve().parents[1])

# ``tdsnn ARGS`` with one function slowed down (module, name, seconds per call), so that the
# signal surely arrives while the command works; its first call creates the file MARK
_SLOWED = textwrap.dedent(
    """
    import importlib, pathlib, sys, time
    from tdsnn.cli import main

    module, name, delay, mark = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    target = importlib.import_module(module)
    real = getattr(target, name)

    def slow(*args, **kwargs):
        pathlib.Path(mark).touch()
        time.sleep(delay)
        return real(*args, **kwargs)

    setattr(target, name, slow)
    sys.exit(main(sys.argv[5:]))
    """
)


def _start_slowed(slowed: tuple[str, str, float], mark: Path, argv: list[str]) -> subprocess.Popen:
    """The command ``argv`` with SIGINT ignored from the start, ``slowed`` slowed down; the
    file ``mark`` appears at the first call of the slowed function."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop("TDSNN_DEBUG", None)
    module, name, delay = slowed
    return subprocess.Popen(
        [sys.executable, "-c", _SLOWED, module, name, str(delay), str(mark), *argv],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_ignored,
    )  # fmt: skip


def _wait_until(ready, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen) -> tuple[str, str]:
    """One SIGINT; the command's output once it has ended."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert "Traceback" not in err, err
    return out, err


def test_stop_signals_replace_an_ignored_sigint_and_restore_it() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes
            assert stop.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_stop_check_returns_the_positions_reached() -> None:
    from tdsnn.sheet import build_sheet
    from tdsnn.topo.positions import swap_optimize

    sheet = build_sheet("V1", (8, 8, 8), 8.0, 2.0, seed=0)
    responses = torch.randn(20, sheet.num_units, generator=torch.Generator().manual_seed(0))
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3  # three steps, then stop

    def optimize(**kwargs):
        generator = torch.Generator().manual_seed(1)
        return swap_optimize(sheet, responses, swaps_per_step=50, generator=generator, **kwargs)

    stopped, three = optimize(steps=50, stop=stop), optimize(steps=3)
    assert len(calls) == 4
    assert not torch.equal(three.positions, sheet.positions)
    assert torch.equal(stopped.positions, three.positions)


def test_every_long_command_points_to_the_one_description_of_the_policy() -> None:
    from tdsnn.cli import LONG_COMMANDS, _commands, build_parser

    helps = {name: sub.format_help() for name, sub in _commands(build_parser())}
    assert set(LONG_COMMANDS) <= set(helps)
    for name in LONG_COMMANDS:
        assert "Stopping a long command" in " ".join(helps[name].split()), name
    readme = (Path(REPO) / "README.md").read_text()
    assert readme.count("### Stopping a long command") == 1


@pytest.mark.parametrize(
    ("command", "message", "continue_with", "out", "err"),
    [
        ("train", "stopped at epoch 1 step 3; saved r/last.pt. Continue with: tdsnn train "
         "--out r --resume", {"resume": True}, "\nstopped at epoch 1 step 3; saved r/last.pt. "
         "Continue with: tdsnn train --out r --resume\n", ""),
        ("record", "interrupted after 8 of 96 trials; r.h5 holds them (continue with "
         "resume=True)", {"resume": True}, "", "tdsnn record: interrupted after 8 of 96 "
         "trials; r.h5 holds them (continue with --resume)\n"),
        ("sheet optimize", "stopped by a signal; wrote r/sheets.pt", {}, "",
         "tdsnn sheet optimize: stopped by a signal; wrote r/sheets.pt\n"),
    ],
)  # fmt: skip
def test_a_stop_is_said_once_in_the_flags_terms_with_exit_status_130(
    command, message, continue_with, out, err, capsys, monkeypatch
) -> None:
    from argparse import Namespace

    from tdsnn.cli import _run
    from tdsnn.errors import Stopped, UserError

    def stopped(args: Namespace) -> int:
        raise Stopped(message, path="r", continue_with=continue_with)

    args = Namespace(command=command.split()[0], long_command=command, func=stopped)
    monkeypatch.delenv("RANK", raising=False)
    assert _run(args) == 130 and capsys.readouterr() == (out, err)
    monkeypatch.setenv("RANK", "1")  # another rank of torchrun: rank 0 says it
    assert _run(args) == 130 and capsys.readouterr() == ("", "")
    assert not issubclass(Stopped, UserError)


@pytest.mark.slow
def test_sigint_stops_a_recording_started_with_sigint_ignored(spiking_run, tmp_path) -> None:
    out = tmp_path / "rec.h5"
    proc = _start_slowed(
        ("tdsnn.record.recorder", "area_batch", 0.05),
        tmp_path / "started",
        ["record", str(spiking_run), "--batch-size", "4", "--out", str(out), "--quiet"],
    )

    def trials() -> int:
        try:
            with warnings.catch_warnings(), h5py.File(out, "r", swmr=True) as f:
                warnings.simplefilter("ignore")
                return int(f["tdsnn/status"][0])
        except (OSError, KeyError):
            return 0

    _wait_until(lambda: out.exists() and trials() >= 8, proc)
    _, err = _interrupt(proc)
    assert proc.returncode == 130 and "continue with --resume" in err, err
    with pytest.warns(IncompleteRecordingWarning, match="interrupted after"):
        rec = tdsnn.record.open(out)
    with rec:
        assert rec.state == "interrupted" and rec.num_trials >= 8 and rec.num_trials % 4 == 0


@pytest.mark.slow
def test_sigint_while_a_recording_loads_stops_it_before_any_trial(spiking_run, tmp_path) -> None:
    out = tmp_path / "rec.h5"
    mark = tmp_path / "loading"
    proc = _start_slowed(
        ("tdsnn.record.recorder", "load_run", 2.0),
        mark,
        ["record", str(spiking_run), "--batch-size", "4", "--out", str(out), "--quiet"],
    )
    _wait_until(mark.exists, proc)
    _, err = _interrupt(proc)
    assert proc.returncode == 130 and "interrupted after 0 of" in err, err
    with pytest.warns(IncompleteRecordingWarning, match="interrupted after"):
        rec = tdsnn.record.open(out)
    with rec:
        assert rec.state == "interrupted" and rec.num_trials == 0


@pytest.mark.slow
def test_sigint_stops_an_evaluation_started_with_sigint_ignored_and_it_continues(
    spiking_run, tmp_path, capsys
) -> None:
    from tdsnn.cli import main

    out, started = tmp_path / "eval", tmp_path / "started"
    argv = ["evaluate", str(spiking_run), "--tests", "weight-noise,pruning", "--repeats", "1",
            "--device", "cpu", "--quiet"]  # fmt: skip
    proc = _start_slowed(
        ("tdsnn.evaluate.runner", "accuracy", 0.3), started, [*argv, "--out", str(out)]
    )
    _wait_until(started.exists, proc)  # the run has loaded and is being evaluated
    _, err = _interrupt(proc)
    assert proc.returncode == 130, err
    assert "stopped by a signal after" in err and "continues with the rest" in err, err
    metrics = json.loads((out / "metrics.json").read_text())
    left = metrics["stopped"]["not_evaluated"]
    assert left and all(name.startswith(spiking_run.name) for name in left)
    assert "Incomplete" in (out / "report.md").read_text()
    for test in ("weight-noise", "pruning"):  # a test is written whole or not at all
        assert (out / f"{test}.csv").exists() == (f"{spiking_run.name}: {test}" not in left)
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 0  # continues
    assert "continuing the evaluation stopped in" in capsys.readouterr().err
    whole = tmp_path / "whole"
    assert main([*argv, "--out", str(whole)]) == 0
    continued, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    assert "stopped" not in continued and continued["runs"] == uninterrupted["runs"]
    for test in ("weight-noise", "pruning"):
        assert (out / f"{test}.csv").read_text() == (whole / f"{test}.csv").read_text()


@pytest.mark.slow
def test_sigint_stops_sheet_optimize_started_with_sigint_ignored(spiking_run, tmp_path) -> None:
    import shutil

    from tdsnn.rundir import load_run, read_sheets_file

    run, started = tmp_path / "run", tmp_path / "started"
    shutil.copytree(spiking_run, run)
    proc = _start_slowed(
        ("tdsnn.topo.positions", "_neighbourhood", 0.05),
        started,
        ["sheet", "optimize", str(run), "--steps", "100000", "--quiet"],
    )
    _wait_until(started.exists, proc)  # swapping in the first area
    time.sleep(1.0)
    _, err = _interrupt(proc)
    assert proc.returncode == 130, err
    assert "stopped by a signal; wrote" in err and "positions reached" in err, err
    saved, (_, _, original) = read_sheets_file(run / "sheets.pt"), load_run(run)
    assert set(saved) == set(original) == {"V1", "V4", "IT"}
    for area, sheet in saved.items():  # every sheet a permutation of the run's positions
        assert torch.equal(
            torch.unique(sheet.positions, dim=0), torch.unique(original[area].positions, dim=0)
        )
    assert not torch.equal(saved["V1"].positions, original["V1"].positions)  # swaps were made
    assert torch.load(run / "sheets.pt", weights_only=False)["stopped"] == ["V1", "V4", "IT"]
