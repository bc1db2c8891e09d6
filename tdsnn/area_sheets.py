"""Where a run's units sit: one cortical sheet per area of the stack (DESIGN section 7).

The sheets' geometry comes from the area table (sizes, neighbourhood widths), their layout from
the run's configuration: :func:`sheet_layouts` decides each area's layout (the topographic loss
asks for its own), :func:`build_area_sheets` builds the sheets with :func:`tdsnn.sheet.build_sheet`
and, for ``sheet.layout: swap``, pre-optimises and freezes their positions (:func:`swap_sheets`).
It sits above the sheets, the areas and the configuration, and imports all three.

Swap pre-optimisation (TDSNN's recipe after TDANN, Margalit et al. 2024): show the
standard sine gratings to the run's initial network (a copy, batch-norm statistics of the
batch), take each area's spike counts and permute positions with
:func:`tdsnn.topo.positions.swap_optimize` in square windows of TDANN's 6 mm on V1 (scaled by each
area's neighbourhood width, capped at the sheet side), 500 swap proposals per window, and as
many windows as give each unit TDANN's number of visits (:data:`SWAP_VISITS`; at most TDANN's
10 000). TDSNN records a pre-trained auxiliary network instead; tdsnn uses the initial one, so
that the result depends on the architecture, image size and seed alone and is cached
(:mod:`tdsnn.topo.positions_cache`): a second run of the same model pays nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

import numpy as np
import torch
from torch import Tensor

from tdsnn.areas import AreaStack, area_spike_counts, build_model
from tdsnn.config import RunConfig
from tdsnn.data.probes import grating_probes
from tdsnn.sheet import Sheet, build_sheet

__all__ = [
    "SWAP_VISITS",
    "build_area_sheets",
    "grating_counts",
    "sheet_layouts",
    "swap_areas",
    "swap_sheets",
]

# TDANN's swap-optimisation (reference, section 3.2): 6 mm windows on V1 (neighbourhood width
# 1.626 mm), 500 proposals per window, 10 000 windows of <= 500 units on a V1 layer of
# 128 x 28 x 28 = 100 352 units, i.e. about 50 window visits per unit
SWAP_WINDOW_V1_MM = 6.0
SWAP_NEIGHBOURHOOD_V1_MM = 1.626
SWAP_PROPOSALS = 500
SWAP_MAX_UNITS = 500
SWAP_MAX_STEPS = 10_000
SWAP_VISITS = 50


def sheet_layouts(config: RunConfig, model: AreaStack | None = None) -> dict[str, str]:
    """The sheet layout of every area of ``config``'s stack (``model``: the stack, when built).

    Layout ``auto`` (and ``random``, ``swap``: the same sheets, swapped or not afterwards by
    :func:`build_area_sheets`) gives each area the topographic loss acts on the layout the
    loss expects (:meth:`tdsnn.topo.TopoConfig.sheet_layout`) and every other area
    ``retinotopic``. A loss at weight 0 (a control) gets the layouts of the same loss at full
    weight. (``sheet.positions``, a file of optimised sheets, replaces these when given.)
    """
    if model is None:  # the stack's areas decide the layouts
        with torch.random.fork_rng(devices=[]):  # building draws initial weights
            model = build_model(config.model, num_classes=2)
    shapes = model.output_shapes(config.data.image_size)
    topo_areas = config.topo.configured_areas(model.area_names)
    layouts = {}
    for name, shape in shapes.items():
        layout = config.sheet.layout
        if layout in ("auto", "random", "swap"):
            layout = config.topo.sheet_layout(shape) if name in topo_areas else "retinotopic"
        layouts[name] = layout
    return layouts


def swap_areas(config: RunConfig, layouts: dict[str, str]) -> tuple[str, ...]:
    """The areas whose positions :func:`build_area_sheets` swap-optimises and freezes: with
    ``sheet.layout: swap``, every ``retinotopic`` area (of ``layouts``, from
    :func:`sheet_layouts`) the topographic loss is configured on."""
    if config.sheet.layout != "swap" or config.sheet.positions:
        return ()
    areas = config.topo.configured_areas(tuple(layouts))
    return tuple(a for a in areas if layouts[a] == "retinotopic")


def build_area_sheets(model: AreaStack, config: RunConfig) -> dict[str, Sheet]:
    """A new sheet for every area of ``model`` (sizes from the area table, DESIGN section 7),
    laid out as :func:`sheet_layouts` says, those of :func:`swap_areas` swap-optimised."""
    layouts = sheet_layouts(config, model)
    sheets = {}
    for i, (name, shape) in enumerate(model.output_shapes(config.data.image_size).items()):
        spec = model.areas[name].spec
        sheets[name] = build_sheet(
            name,
            shape,
            spec.sheet_mm,
            spec.neighbourhood_mm,
            layouts[name],
            seed=config.run.seed * 1009 + i,
            jitter=config.sheet.jitter,
        )
    areas = swap_areas(config, layouts)
    if areas:
        sheets.update(swap_sheets(model, config, {a: sheets[a] for a in areas}))
    return sheets


def swap_plan(sheet: Sheet) -> dict[str, float | int]:
    """TDANN's swap parameters for ``sheet``: window side (mm), proposals, unit cap, windows."""
    window = min(
        SWAP_WINDOW_V1_MM * sheet.neighbourhood_mm / SWAP_NEIGHBOURHOOD_V1_MM, sheet.side_mm
    )
    units = sheet.num_units
    per_window = max(2.0, min(SWAP_MAX_UNITS, units * (window / sheet.side_mm) ** 2))
    steps = min(SWAP_MAX_STEPS, math.ceil(SWAP_VISITS * units / per_window))
    return {
        "window_mm": window,
        "swaps_per_step": SWAP_PROPOSALS,
        "max_units": SWAP_MAX_UNITS,
        "steps": steps,
    }


def swap_sheets(model: AreaStack, config: RunConfig, sheets: dict[str, Sheet]) -> dict[str, Sheet]:
    """``sheets`` swap-optimised on the grating responses of ``model`` as it is now (its initial
    weights), from the positions cache when it holds them, else computed and cached.

    Neither ``model`` nor the global random state changes (the responses come from a copy,
    the swaps draw from a generator seeded with ``run.seed``).
    """
    from tdsnn.topo.positions_cache import cache_key, load_positions, store_positions

    plans = {name: swap_plan(sheet) for name, sheet in sheets.items()}
    # every weight the responses depend on (the readout's classes do not matter)
    tensors = {
        f"weights.{k}": v for k, v in model.state_dict().items() if not k.startswith("readout.")
    }
    tensors.update({f"sheet.{name}": sheet.positions for name, sheet in sheets.items()})
    settings = {
        "image_size": config.data.image_size,
        "seed": config.run.seed,
        "model": dataclasses.asdict(config.model),
        "sheets": {
            n: (s.shape, s.side_mm, s.neighbourhood_mm, s.layout) for n, s in sheets.items()
        },
        "plans": plans,
    }
    key = cache_key(settings, tensors)
    cached = load_positions(key, sheets)
    if cached is not None:
        return {name: cached[name] for name in sheets}
    optimized, report = _swap(model, config, sheets, plans)
    path = store_positions(key, optimized, report)
    if not config.run.quiet:
        print(f"swap-optimised positions cached in {path}", file=sys.stderr)
    return optimized


def _swap(model, config, sheets, plans) -> tuple[dict[str, Sheet], dict]:
    from tqdm.auto import tqdm

    from tdsnn.topo.positions import mean_rate_loss, swap_optimize

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        probe = copy.deepcopy(model).cpu().train()  # batch statistics: the initial net spikes
        counts = grating_counts(probe, config.data.image_size, batch_size=96)
    generator = torch.Generator().manual_seed(config.run.seed)
    optimized, report = {}, {}
    for name in tqdm(sheets, desc="swap-optimising positions", disable=config.run.quiet):
        sheet = sheets[name]
        optimized[name] = new = swap_optimize(
            sheet, counts[name], generator=generator, **plans[name]
        )
        report[name] = {
            **plans[name],
            "rate_loss_before": mean_rate_loss(counts[name], sheet, seed=config.run.seed),
            "rate_loss_after": mean_rate_loss(counts[name], new, seed=config.run.seed),
        }
    return optimized, report


def grating_counts(model: AreaStack, image_size: int, batch_size: int = 64) -> dict[str, Tensor]:
    """Spike counts ``[B, N]`` of every area to the standard grating set (B stimuli)."""
    probes = grating_probes(image_size, cycles_per_image=(2.0, 4.0, 8.0))
    images = probes.render(np.arange(len(probes)))
    counts = area_spike_counts(model, images.split(batch_size))
    return {name: area_counts.flatten(1) for name, area_counts in counts.items()}
