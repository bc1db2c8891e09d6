"""``tdsnn sheet optimize RUN_DIR``: TDANN's swap pre-optimisation of a trained run's sheets.

The recipe of DESIGN section 7: show sine gratings to a (briefly) trained network, take each
area's spike counts, and accept random pairwise position swaps that lower the rate alignment
loss in random neighbourhoods (:func:`tdsnn.sheet.swap_optimize`). The optimised sheets are
written to ``RUN_DIR/sheets.pt``; ``tdsnn train --sheets RUN_DIR/sheets.pt`` trains a new
network on them, with positions fixed from the start.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tdsnn.areas import AreaStack, area_spike_counts
from tdsnn.data.probes import sine_gratings
from tdsnn.errors import ConfigError
from tdsnn.sheet import Sheet, sample_clusters, swap_optimize
from tdsnn.topo import rate_loss
from tdsnn.train import load_run, write_sheets_file


def grating_counts(model: AreaStack, image_size: int, batch_size: int = 64) -> dict[str, Tensor]:
    """Spike counts ``[B, N]`` of every area to the standard grating set (B stimuli)."""
    images = sine_gratings(image_size).images
    counts = area_spike_counts(model, images.split(batch_size))
    return {name: area_counts.flatten(1) for name, area_counts in counts.items()}


@torch.no_grad()
def mean_rate_loss(counts: Tensor, sheet: Sheet, num_clusters: int = 64, seed: int = 0) -> float:
    """Rate alignment loss averaged over fixed random neighbourhoods (lower = more topographic)."""
    generator = torch.Generator().manual_seed(seed)
    clusters = sample_clusters(sheet, num_clusters, generator=generator)
    spikes = counts.unsqueeze(0)  # [1, B, N]: counts as one time step
    losses = [rate_loss(spikes[:, :, c], sheet.positions[c]) for c in clusters]
    return float(torch.stack(losses).mean())


def optimize_run_sheets(
    run_dir: str | Path,
    *,
    steps: int = 2000,
    swaps_per_step: int = 500,
    areas: tuple[str, ...] | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """Swap-optimise the sheets of ``run_dir`` and write ``run_dir/sheets.pt``.

    Returns, per area, the mean rate loss on the grating responses before and after.
    """
    run_dir = Path(run_dir)
    config, model, sheets = load_run(run_dir)
    counts = grating_counts(model, config.data.image_size)
    chosen = tuple(a.upper() for a in areas) if areas else tuple(sheets)
    unknown = [a for a in chosen if a not in sheets]
    if unknown:
        raise ConfigError(f"--areas {unknown} are not in this run's stack {list(sheets)}")
    report = {}
    generator = torch.Generator().manual_seed(seed)
    for name in tqdm(chosen, desc="swap-optimising", disable=quiet):
        before = mean_rate_loss(counts[name], sheets[name], seed=seed)
        sheets[name] = swap_optimize(
            sheets[name], counts[name], steps=steps, swaps_per_step=swaps_per_step,
            generator=generator,
        )  # fmt: skip
        after = mean_rate_loss(counts[name], sheets[name], seed=seed)
        report[name] = {"rate_loss_before": before, "rate_loss_after": after}
    write_sheets_file(sheets, run_dir / "sheets.pt", source=str(run_dir), report=report)
    return report
