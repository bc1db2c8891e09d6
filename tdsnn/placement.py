"""Where a run's units sit: one cortical sheet per area of the stack (DESIGN section 7).

The sheets' geometry comes from the area table (sizes, neighbourhood widths), their layout from
the run's configuration: :func:`sheet_layouts` decides each area's layout (the topographic loss
asks for its own), :func:`build_area_sheets` builds the sheets with :func:`tdsnn.sheet.build_sheet`.
It sits above the sheets, the areas and the configuration, and imports all three.
"""

from __future__ import annotations

import torch

from tdsnn.areas import AreaStack
from tdsnn.config import RunConfig
from tdsnn.sheet import Sheet, build_sheet

__all__ = ["build_area_sheets", "sheet_layouts"]


def sheet_layouts(config: RunConfig, model: AreaStack | None = None) -> dict[str, str]:
    """The sheet layout of every area of ``config``'s stack (``model``: the stack, when built).

    Layout ``auto`` gives each area the topographic loss acts on the layout the loss expects
    (:meth:`tdsnn.topo.TopoConfig.sheet_layout`) and every other area ``retinotopic``. A loss
    at weight 0 (a control) gets the layouts of the same loss at full weight.
    (``sheet.positions``, a file of optimised sheets, replaces these when given.)
    """
    if model is None:  # the stack's areas decide the layouts
        with torch.random.fork_rng(devices=[]):  # building draws initial weights
            model = AreaStack(config.model, num_classes=2)
    shapes = model.output_shapes(config.data.image_size)
    topo_areas = config.topo.configured_areas(model.area_names)
    layouts = {}
    for name, shape in shapes.items():
        layout = config.sheet.layout
        if layout == "auto":
            layout = config.topo.sheet_layout(shape) if name in topo_areas else "retinotopic"
        layouts[name] = layout
    return layouts


def build_area_sheets(model: AreaStack, config: RunConfig) -> dict[str, Sheet]:
    """A new sheet for every area of ``model`` (sizes from the area table, DESIGN section 7),
    laid out as :func:`sheet_layouts` says."""
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
    return sheets
