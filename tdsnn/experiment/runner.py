"""``tdsnn experiment SPEC.yaml --out DIR``: train every (arm, seed), measure, compare.

The experiment folder holds::

    experiment.json        the resolved plan (every run's config, the measures, a fingerprint)
    runs/<arm>/seed-<k>/   ordinary run directories (tdsnn train)
    measures/<arm>/seed-<k>.json   one run's measurement rows and the epoch they were taken at
    logs/                  each worker's output
    results.csv            one row per arm x seed x measure (x level)
    summary.json           per arm and measure mean, sd, n, CI; paired differences; verdicts
    report.md, *.png       tables and figures

Work is a queue of worker processes (``--jobs N`` at a time; under ``torchrun`` rank r of W
takes every W-th run), each training one run (a complete run is skipped; an interrupted one
resumes from its ``last.pt``) and measuring it at its best checkpoint. With
``match_accuracy: true`` every run is trained first and then measured at the epoch the
comparison picks.
Ctrl-C or SIGTERM stops every worker at a step boundary (their runs save ``last.pt``) and the
command exits with 130; a killed command loses at most the epochs in flight, and its workers
die with it. Running the command again continues, and ends with the results an uninterrupted
experiment gives (same ``--jobs``, so the same threads per run); run with more seeds or arms,
it trains only the new runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from tdsnn.atomic import write_atomic
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError, Stopped, UserError
from tdsnn.experiment.measures import epoch_records
from tdsnn.experiment.spec import ExperimentSpec, RunPlan, load_spec
from tdsnn.runtime import StopSignals

__all__ = ["choose_epochs", "continue_command", "run_experiment"]

PLAN_FORMAT = "tdsnn-experiment"
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip


def continue_command(spec_path, out, jobs: int = 1, arms: list[str] | None = None) -> str:
    """The command that continues a stopped ``tdsnn experiment`` call with these options."""
    command = f"tdsnn experiment {spec_path} --out {out}"
    if jobs > 1:
        command += f" --jobs {jobs}"
    if arms:
        command += f" --arms {','.join(arms)}"
    return command


def run_experiment(
    spec_path: str | Path,
    out: str | Path,
    *,
    jobs: int = 1,
    quiet=False,
    arms: list[str] | None = None,
) -> dict:
    """Run (or continue) the experiment of ``spec_path`` in ``out``; return ``summary.json``.
    ``arms``: only these arms (:meth:`ExperimentSpec.part`), trained, measured and reported;
    the parts of one experiment share ``out``, and a last call with every arm reports the
    whole from the runs and measures already there.

    Raises :class:`~tdsnn.errors.Stopped` when a signal stopped it; its runs saved where they
    were, in ``out`` (its ``path``), and the same call again continues.
    """
    if not 1 <= jobs <= 256:
        raise ConfigError(f"--jobs must be in [1, 256], got {jobs}")
    spec = load_spec(spec_path)
    plans = spec.plan()  # of every arm: controls and layers follow every comparison
    command = continue_command(spec_path, out, jobs, arms)  # as given, before out is resolved
    if arms:
        spec = spec.part(arms)
        plans = [p for p in plans if p.arm in spec.arms]
    out = Path(out).resolve()
    key = _claim(out, spec, plans, spec_path)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    # seed by seed, so that an experiment cut short holds whole sets of paired runs
    mine = sorted(plans, key=lambda p: (spec.seeds.index(p.seed), list(spec.arms).index(p.arm)))
    mine = mine[rank::world]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.perf_counter()
    trained = {p.run_dir: p for p in plans}

    def waiting(plan: RunPlan) -> bool:  # its sheets come from a run not trained yet
        return plan.sheets_from is not None and not _trained(out, trained[plan.sheets_from])

    with StopSignals() as signals:
        workers = Workers(out, jobs, threads, signals, quiet, waiting, command=command)
        if spec.checkpoint == "best":  # each worker measures its run once it is trained
            todo = [p for p in mine if _measured_epoch(out, p, key) is None]
            workers.run("run", [(p, None) for p in todo])
        workers.run("train", [(p, None) for p in mine if not _trained(out, p)])
        _wait_for(lambda: all(_trained(out, p) for p in plans), world)
        epochs = choose_epochs(spec, plans, out)
        todo = [p for p in mine if _measured_epoch(out, p, key) != epochs[p.name]]
        workers.run("measure", [(p, epochs[p.name]) for p in todo])
        done = lambda: all(_measured_epoch(out, p, key) == epochs[p.name] for p in plans)  # noqa: E731
        _wait_for(done, world)
    if rank != 0:
        return {}
    return write_results(spec, plans, out, epochs, time.perf_counter() - start)


def _claim(out: Path, spec: ExperimentSpec, plans: list[RunPlan], spec_path) -> str:
    """Make ``out`` this experiment's folder, or check that it can continue there; return the
    measures key (:meth:`ExperimentSpec.measures_key`).

    A folder of an earlier invocation continues when every run the two share has the same
    config: arms and seeds may be added (only the new runs train), and a change of measures
    measures every run again. A run whose options changed is refused.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder")
    plan_file = out / "experiment.json"
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 of torchrun writes the plan
        _wait_for(plan_file.is_file, 2, poll_s=0.5)
        return spec.measures_key()
    runs = {}
    if plan_file.is_file():
        try:
            runs = json.loads(plan_file.read_text())["runs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{plan_file} is corrupt; delete it or use another --out") from exc
        for plan in plans:
            saved = runs.get(plan.name, {}).get("config")
            keys = [] if saved is None else changed_options(saved, plan.config)
            if keys:
                raise ConfigError(
                    f"--out {out}: run {plan.name} was trained with other options "
                    f"({', '.join(keys)}) than {spec_path} gives it; use another --out"
                )
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is a folder that is not empty; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    runs.update(
        {
            p.name: {
                "arm": p.arm,
                "seed": p.seed,
                "run_dir": p.run_dir,
                "config": p.config.to_dict(),
                "layers": p.layers,
                "sheets_from": p.sheets_from,
            }
            for p in plans
        }  # fmt: skip
    )
    plan = {
        "format": PLAN_FORMAT,
        "spec": str(Path(spec_path).resolve()),
        "name": spec.name,
        "measures_key": spec.measures_key(),
        "measures": _measures_dict(spec),
        "arms": list(spec.arms),  # of the last invocation: a part, or every arm
        "runs": runs,
    }
    write_atomic(plan_file, json.dumps(plan, indent=1) + "\n")
    return spec.measures_key()


def _json(value):
    """``value`` as JSON stores it (tuples as lists)."""
    return json.loads(json.dumps(value))


def changed_options(saved: dict, config: RunConfig) -> list[str]:
    """``section.key`` of every option of ``config`` that differs from the config a plan saved
    (keys added to the config since read as what that run computed:
    :meth:`RunConfig.from_saved`)."""
    try:
        saved = _resolved(RunConfig.from_saved(saved))
    except ConfigError:
        pass  # compared as it is: every key it spells otherwise differs
    return _changed_keys(saved, _resolved(config))


def _resolved(config: RunConfig) -> dict:
    """``config`` as its run computes it, with ``topo.as_input`` resolved
    (:meth:`RunConfig.objective_topo`): a value spelled out equals the default that gives it."""
    return dataclasses.replace(config, topo=config.objective_topo()).to_dict()


def _changed_keys(a: dict, b: dict) -> list[str]:
    """``section.key`` of every config value that differs between ``a`` and ``b``."""
    a, b = _json(a), _json(b)
    return [f"{section}.{key}" for section in sorted(set(a) | set(b))
            for key in sorted(set(a.get(section, {})) | set(b.get(section, {})))
            if a.get(section, {}).get(key) != b.get(section, {}).get(key)]  # fmt: skip


def _measures_dict(spec: ExperimentSpec) -> dict:
    return dataclasses.asdict(spec.measures)


def _wait_for(done, world: int, poll_s: float = 5.0) -> None:
    """Under ``torchrun``, wait until ``done()`` (other ranks finish their share)."""
    while world > 1 and not done():
        time.sleep(poll_s)


# --------------------------------------------------------------------------- workers


def _die_with_parent() -> None:
    """In a worker: get SIGKILL when the experiment process dies (Linux), so a killed
    experiment leaves no orphans writing into its folder."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Workers:
    """A queue of worker processes (``python -m tdsnn.experiment.worker``), ``jobs`` at once."""

    def __init__(
        self,
        out: Path,
        jobs: int,
        threads: int,
        signals: StopSignals,
        quiet: bool,
        waiting: Callable[[RunPlan], bool] = lambda plan: False,
        *,
        command: str,
    ):
        self.out, self.jobs, self.threads = out, jobs, threads
        self.signals, self.quiet, self.waiting = signals, quiet, waiting
        self.command = command  # the one that continues the experiment

    def run(self, phase: str, tasks: list[tuple[RunPlan, int | None]]) -> None:
        """Run ``phase`` (``train``, ``measure`` or ``run`` = both) for every task, in order but
        for tasks still :attr:`waiting` for another run (they start once it is trained); raise
        on a stop or a failure."""
        queue = list(tasks)
        running: dict[subprocess.Popen, tuple[RunPlan, Path]] = {}
        forwarded = False
        failure: str | None = None
        bar = tqdm(total=len(tasks), desc=phase, unit="run", disable=self.quiet or not tasks)
        try:
            while queue or running:
                stopping = self.signals.requested or failure is not None
                while len(running) < self.jobs and not stopping:
                    ready = [i for i, (plan, _) in enumerate(queue) if not self.waiting(plan)]
                    if not ready:
                        break
                    plan, epoch = queue.pop(ready[0])
                    running[self._start(phase, plan, epoch)] = (plan, self._log(phase, plan))
                if self.signals.requested and not forwarded:
                    for process in running:  # Ctrl-C reached them too; SIGTERM may not have
                        process.send_signal(signal.SIGTERM)
                    forwarded = True
                if stopping and not running:
                    break
                time.sleep(0.1)
                for process in [p for p in running if p.poll() is not None]:
                    plan, log = running.pop(process)
                    if process.returncode == 0:
                        bar.update(1)
                    elif process.returncode in (130, -signal.SIGINT, -signal.SIGTERM):
                        self.signals.requested = True
                    elif failure is None:
                        failure = f"{phase} of run {plan.name} failed: {_last_line(log)} ({log})"
                        queue.clear()
        finally:
            bar.close()
            for process in running:  # only on an exception in this loop
                process.kill()
        if failure is not None:
            raise UserError(failure)
        if self.signals.requested:
            raise Stopped(
                "experiment stopped; its runs saved where they were. Continue with: "
                f"{self.command}",
                path=self.out,
            )

    def _log(self, phase: str, plan: RunPlan) -> Path:
        return self.out / "logs" / f"{plan.arm}-seed-{plan.seed}.{phase}.log"

    def _start(self, phase: str, plan: RunPlan, epoch: int | None) -> subprocess.Popen:
        log = self._log(phase, plan)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        if "LOCAL_RANK" in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ:
            env["CUDA_VISIBLE_DEVICES"] = os.environ["LOCAL_RANK"]  # one GPU per torchrun rank
        env["OMP_NUM_THREADS"] = str(self.threads)
        command = [sys.executable, "-m", "tdsnn.experiment.worker", str(self.out), phase,
                   plan.name, "--threads", str(self.threads)]  # fmt: skip
        if epoch is not None:
            command += ["--epoch", str(epoch)]
        with open(log, "a") as f:
            rank = os.environ.get("RANK", "0")
            f.write(f"# {phase} {plan.name} (epoch {epoch}) from experiment rank {rank}\n")
            f.flush()
            return subprocess.Popen(
                command, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
            )


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


# --------------------------------------------------------------------------- checkpoints


def choose_epochs(spec: ExperimentSpec, plans: list[RunPlan], out: Path) -> dict[str, int]:
    """The epoch each run is measured at.

    ``best``: the run's best epoch (``best.pt``). ``matched``: per seed, the lowest plateau
    (best validation accuracy) over the arms; each run of that seed is measured at its first
    epoch whose validation accuracy reaches it, so the arms of a pair are compared at the same
    accuracy.
    """
    best = {}
    for plan in plans:
        summary = json.loads((out / plan.run_dir / "summary.json").read_text())
        best[plan.name] = summary["best_epoch"]
    if spec.checkpoint == "best":
        return best
    curves = {p.name: [(r["epoch"], r["val_acc"]) for r in epoch_records(out / p.run_dir)]
              for p in plans}  # fmt: skip
    plateau = defaultdict(lambda: math.inf)
    for plan in plans:
        plateau[plan.seed] = min(plateau[plan.seed], max(acc for _, acc in curves[plan.name]))
    return {p.name: next(e for e, acc in curves[p.name] if acc >= plateau[p.seed]) for p in plans}


def _trained(out: Path, plan: RunPlan) -> bool:
    """Whether ``plan``'s run is complete (its ``summary.json`` is written last, atomically)."""
    return (out / plan.run_dir / "summary.json").is_file()


def _measures_file(out: Path, plan: RunPlan) -> Path:
    return out / "measures" / plan.arm / f"seed-{plan.seed}.json"


def _measured_epoch(out: Path, plan: RunPlan, key: str) -> int | None:
    """The epoch ``plan``'s run was measured at under the measures ``key`` (else None)."""
    path = _measures_file(out, plan)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return data["epoch"] if data["measures_key"] == key else None
    except (ValueError, KeyError, TypeError):
        return None  # a corrupt file is measured again


def write_measures(out: Path, plan: RunPlan, epoch: int, rows: list[dict], key: str) -> None:
    """One run's rows, taken at ``epoch`` under the measures ``key``, written atomically (a
    kill never leaves half a file)."""
    path = _measures_file(out, plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"epoch": epoch, "measures_key": key, "rows": rows}
    write_atomic(path, json.dumps(record, indent=1) + "\n")


# --------------------------------------------------------------------------- results


def write_results(
    spec: ExperimentSpec, plans: list[RunPlan], out: Path, epochs: dict[str, int], seconds: float
) -> dict:
    """``results.csv``, ``summary.json`` and ``report.md`` from every run's measures."""
    from tdsnn.experiment import results

    rows = []
    for plan in plans:
        rows += json.loads(_measures_file(out, plan).read_text())["rows"]
    results.write_csv(out, rows)
    return results.write_results(spec, rows, out, {"measured_epochs": epochs, "seconds": seconds})
