"""One job of an experiment, in its own process: ``python -m tdsnn.experiment.worker DIR
train|measure ARM/seed-K [--epoch E] [--threads N]``.

``train`` trains the run (resuming from its ``last.pt`` when there is one) through the train
command (:func:`tdsnn.commands.train.train_config`), first swap-optimising the sheets of its
``sheets-from`` run when it has one; ``measure`` measures it at epoch E and writes its rows;
``run`` does both, measuring at the run's best epoch. Exit status: 0 done, 130 stopped by a
signal (the run saved ``last.pt``), 2 with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tdsnn.errors import Stopped, UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdsnn.experiment.worker")
    parser.add_argument("out", help="the experiment folder")
    parser.add_argument("phase", choices=("train", "measure", "run"))
    parser.add_argument("run", help="ARM/seed-K")
    parser.add_argument("--epoch", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        return run(Path(args.out), args.phase, args.run, args.epoch, args.threads)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Stopped as exc:  # training, swapping or recording stopped at a safe point
        print(f"stopped: {exc}", file=sys.stderr)
        return 130


def run(out: Path, phase: str, name: str, epoch: int | None, threads: int) -> int:
    import torch

    from tdsnn.config import RunConfig
    from tdsnn.experiment.measures import measure_run
    from tdsnn.experiment.runner import write_measures
    from tdsnn.experiment.spec import Measures, RunPlan
    from tdsnn.host_memory import keep_freed_memory
    from tdsnn.runtime import select_device

    keep_freed_memory()
    torch.set_num_threads(threads)
    plan_file = json.loads((out / "experiment.json").read_text())
    entry = plan_file["runs"][name]
    config = RunConfig.from_dict(entry["config"])
    run_dir = out / entry["run_dir"]
    config = config.with_overrides({"run.out": str(run_dir)})
    source = entry.get("sheets_from")
    if source is not None:  # the plan's path is relative to the experiment folder
        config = config.with_overrides({"sheet.positions": str(out / config.sheet.positions)})
    layers = entry.get("layers", "all")
    layers = tuple(layers) if isinstance(layers, list) else layers
    plan = RunPlan(entry["arm"], entry["seed"], config, entry["run_dir"], layers, source)
    if phase in ("train", "run") and not (run_dir / "summary.json").is_file():
        from tdsnn.commands.train import train_config
        from tdsnn.sheet_optimize import swapped_sheets

        if source is not None and not (run_dir / "last.pt").is_file():
            swapped_sheets(out / source, seed=plan.seed)

        train_config(config, resume=(run_dir / "last.pt").is_file())
    if phase == "train":
        return 0
    if phase == "run":
        epoch = json.loads((run_dir / "summary.json").read_text())["best_epoch"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in plan_file["measures"].items()}
    measures = Measures(**values)  # as the runner wrote it (dataclasses.asdict)
    device = select_device(config.run.device)
    rows = measure_run(plan, run_dir, epoch, measures, device=device)
    write_measures(out, plan, epoch, rows, plan_file["measures_key"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
