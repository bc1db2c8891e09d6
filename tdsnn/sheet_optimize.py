"""Swap-optimisation of a trained run's sheets (``tdsnn sheet optimize RUN_DIR``).

The recipe of DESIGN section 7: show sine gratings to a (briefly) trained network, take each
area's spike counts, and permute positions to lower the rate alignment loss in random
neighbourhoods (:func:`tdsnn.topo.positions.swap_optimize`). The optimised sheets are written to
``RUN_DIR/sheets.pt``; ``tdsnn train --sheets RUN_DIR/sheets.pt`` trains a new network on them,
with positions fixed from the start.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from tdsnn.area_sheets import grating_counts, swap_plan
from tdsnn.errors import ConfigError, Stopped
from tdsnn.model_config import spell_areas
from tdsnn.options import SwapOptions
from tdsnn.rundir import SHEETS_FORMAT, load_run, write_sheets_file
from tdsnn.runtime import StopSignals
from tdsnn.topo.positions import mean_rate_loss, swap_optimize


def swapped_sheets(run_dir: str | Path, *, seed: int = 0, quiet: bool = True) -> Path:
    """``run_dir/sheets.pt`` swap-optimised to the end (:func:`optimize_run_sheets`): kept when
    a complete file is there, else (missing, stopped part-way, unreadable) optimised now."""
    path = Path(run_dir) / "sheets.pt"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        complete = data.get("format") == SHEETS_FORMAT and not data.get("stopped")
    except Exception:  # noqa: BLE001 - any damage means: optimise again
        complete = False
    if not complete:
        optimize_run_sheets(path.parent, seed=seed, quiet=quiet)
    return path


def optimize_run_sheets(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    swaps_per_step: int = 500,
    areas: tuple[str, ...] | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """Swap-optimise the sheets of ``run_dir`` and write ``run_dir/sheets.pt``.

    Each area is swapped at TDANN's scale (:func:`tdsnn.area_sheets.swap_plan`: 6-mm windows on
    V1, scaled by the area's neighbourhood width, about 50 visits per unit), as
    ``--layout swap`` does on the initial network; ``steps`` (windows per area) overrides the
    plan's count. Returns, per area, the mean rate loss on the grating responses before and
    after.

    Raises:
        Stopped: Ctrl-C or SIGTERM (:class:`~tdsnn.runtime.StopSignals`) stopped it after the
            neighbourhood being optimised; ``sheets.pt`` (its ``path``) is written with the
            positions reached (its ``stopped`` entry names the areas not optimised to the end),
            and the same call again optimises from the run's sheets.
    """
    SwapOptions(steps, swaps_per_step, seed)  # a ConfigError naming the parameter
    run_dir = Path(run_dir)
    config, model, sheets = load_run(run_dir)
    chosen, unknown = spell_areas(areas, sheets) if areas else (tuple(sheets), [])
    if unknown:
        raise ConfigError(f"areas {unknown} are not in this run's stack {list(sheets)}")
    report, finished = {}, []
    generator = torch.Generator().manual_seed(seed)
    with StopSignals() as stop:
        counts = grating_counts(model, config.data.image_size)
        for name in tqdm(chosen, desc="swap-optimising", disable=quiet):
            if stop.requested:
                break
            before = mean_rate_loss(counts[name], sheets[name], seed=seed)
            plan = {**swap_plan(sheets[name]), "swaps_per_step": swaps_per_step}
            if steps is not None:
                plan["steps"] = steps
            sheets[name] = swap_optimize(
                sheets[name], counts[name], **plan, generator=generator,
                stop=lambda: stop.requested,
            )  # fmt: skip
            after = mean_rate_loss(counts[name], sheets[name], seed=seed)
            report[name] = {"rate_loss_before": before, "rate_loss_after": after}
            if not stop.requested:
                finished.append(name)
    left = [name for name in chosen if name not in finished]
    path = run_dir / "sheets.pt"
    write_sheets_file(sheets, path, source=str(run_dir), report=report, stopped=left)
    if left:
        raise Stopped(
            f"stopped by a signal; wrote {path} with the positions reached "
            f"({', '.join(finished) or 'no area'} optimised to the end, {', '.join(left)} not); "
            "run the command again to optimise from the run's sheets",
            path=path,
        )
    return report
