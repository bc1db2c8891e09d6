"""Cortical sheets: unit positions (mm) and their layouts.

Every unit of an area's output ``[C, H, W]`` gets a fixed 2-D position on a square sheet of side
``side_mm``. Units are indexed row-major, ``u = c·H·W + h·W + w`` (DESIGN §4), so
``spikes.reshape(T, B, -1)[..., u]`` is unit ``u`` and ``positions[u]`` is where it sits.
Coordinates: ``x`` runs along the feature-map columns ``w``, ``y`` along the rows ``h``; both lie
in ``[0, side_mm]``.

Layouts (DESIGN §7):

- ``retinotopic`` (TDANN): the ``H×W`` feature map is laid over the sheet as a grid of anchor
  cells of size ``(side/H) × (side/W)`` mm. Each of the ``C`` units at anchor ``(h, w)`` gets a
  uniform random offset inside the cell plus Gaussian jitter of standard deviation
  ``jitter × cell size`` (default 0.1), clipped to the sheet. Channel ``c`` therefore sits at a
  different relative place in every cell.
- ``tiled`` (All-TNN): each anchor cell holds the ``C`` channels as a fixed ``th×tw`` tile,
  ``(th, tw) = near_square(C)``, channel ``c`` at tile cell ``(c // tw, c % tw)``. The whole sheet
  is then a regular lattice of ``(H·th) × (W·tw)`` units (see :func:`lattice`).
- ``grid`` (WS/AS, TopoLoss, Poli): one position per channel on the ``near_square(C)`` grid
  spanning the sheet. Only for 1×1 maps (``H = W = 1``), where it equals ``tiled``; a grid of
  channels repeated at every anchor *is* the ``tiled`` layout, so ``grid`` with ``H·W > 1`` is a
  :class:`~tdsnn.errors.ConfigError` that says so.

Which unit pairs a topographic loss compares (lattice and radius neighbours, cluster windows and
their banks) is derived from the positions in :mod:`tdsnn.topo.pairs`. TDANN's position
pre-optimisation is :func:`tdsnn.topo.positions.swap_optimize` (it scores positions with the
topographic loss).

Positions are treated as immutable: derived data (per-device coordinate copies, pair lists) is
cached on the :class:`Sheet`; build a new sheet instead of editing ``positions`` in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tdsnn.choices import LAYOUTS
from tdsnn.errors import CheckpointError, ConfigError, check_state_version

__all__ = [
    "LAYOUTS",
    "Sheet",
    "build_sheet",
    "near_square",
    "lattice",
]

STATE_VERSION = 1
_STATE_KEYS = ("area", "shape", "side_mm", "neighbourhood_mm", "layout", "positions", "optimized")


def near_square(n: int) -> tuple[int, int]:
    """Most nearly square factorisation ``(rows, cols)`` of ``n`` with ``rows <= cols``.

    ``rows`` starts at ``floor(sqrt(n))`` and decreases until it divides ``n`` (TopoLoss's rule):
    64 → (8, 8), 128 → (8, 16), 81 → (9, 9). A prime ``n`` gives ``(1, n)``.
    """
    if int(n) != n or n < 1:
        raise ConfigError(f"near_square: n must be a positive integer, got {n!r}")
    n = int(n)
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    return rows, n // rows


@dataclass(eq=False)
class Sheet:
    """Positions of one area's units on its cortical sheet.

    Attributes:
        area: area name, e.g. ``"V1"``.
        shape: ``(C, H, W)`` of the area's output.
        side_mm: side of the square sheet (mm).
        neighbourhood_mm: the area's neighbourhood width (mm): default cluster window side and
            radius of the pair sets.
        layout: one of :data:`LAYOUTS`.
        positions: ``[N, 2]`` float32 mm, ``N = C·H·W``, row ``u`` = unit ``c·H·W + h·W + w``,
            columns ``(x, y)``.
        optimized: ``True`` once :func:`tdsnn.topo.positions.swap_optimize` has permuted the
            positions.
    """

    area: str
    shape: tuple[int, int, int]
    side_mm: float
    neighbourhood_mm: float
    layout: str
    positions: Tensor
    optimized: bool = False
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"sheet layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        shape = tuple(self.shape)
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise ConfigError(f"sheet shape must be 3 positive integers (C, H, W), got {shape!r}")
        self.shape = tuple(int(s) for s in shape)
        if not (self.side_mm > 0 and math.isfinite(self.side_mm)):
            raise ConfigError(f"side_mm must be a positive number, got {self.side_mm!r}")
        if not (self.neighbourhood_mm > 0 and math.isfinite(self.neighbourhood_mm)):
            raise ConfigError(
                f"neighbourhood_mm must be a positive number, got {self.neighbourhood_mm!r}"
            )
        self.side_mm = float(self.side_mm)
        self.neighbourhood_mm = float(self.neighbourhood_mm)
        n = self.num_units
        if not isinstance(self.positions, Tensor) or tuple(self.positions.shape) != (n, 2):
            got = tuple(self.positions.shape) if isinstance(self.positions, Tensor) else None
            raise ConfigError(
                f"positions of area {self.area!r} must be a [N, 2] tensor with N = C·H·W = {n}, "
                f"got shape {got}"
            )
        self.positions = self.positions.detach().to("cpu", torch.float32).contiguous()

    @property
    def num_units(self) -> int:
        """``N = C·H·W``."""
        c, h, w = self.shape
        return c * h * w

    def state_dict(self) -> dict:
        """Plain ``dict`` of str/int/float/bool/list/Tensor, loadable with ``weights_only=True``."""
        return {
            "version": STATE_VERSION,
            "area": str(self.area),
            "shape": list(self.shape),
            "side_mm": float(self.side_mm),
            "neighbourhood_mm": float(self.neighbourhood_mm),
            "layout": str(self.layout),
            "positions": self.positions.clone(),
            "optimized": bool(self.optimized),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Sheet:
        """Rebuild a sheet from :meth:`state_dict`; anything inconsistent is a CheckpointError."""
        if not isinstance(state, dict):
            raise CheckpointError(f"sheet state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(
                f"sheet state is missing {', '.join(missing)}; expected keys "
                f"{', '.join(_STATE_KEYS)} (was it written by Sheet.state_dict()?)"
            )
        check_state_version(state, STATE_VERSION, "sheet state")
        area = state["area"]
        shape = state["shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 3:
            raise CheckpointError(f"sheet of area {area!r}: shape must be [C, H, W], got {shape!r}")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
            raise CheckpointError(
                f"sheet of area {area!r}: shape must hold positive integers, got {shape!r}"
            )
        pos = state["positions"]
        n = shape[0] * shape[1] * shape[2]
        if not isinstance(pos, Tensor) or tuple(pos.shape) != (n, 2):
            got = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
            raise CheckpointError(
                f"sheet of area {area!r}: positions must be a [{n}, 2] tensor for shape "
                f"{list(shape)}, got {got}"
            )
        if not pos.is_floating_point() or not bool(torch.isfinite(pos).all()):
            raise CheckpointError(f"sheet of area {area!r}: positions must be finite floats")
        side = state["side_mm"]
        if not isinstance(side, (int, float)) or not side > 0:
            raise CheckpointError(f"sheet of area {area!r}: side_mm must be > 0, got {side!r}")
        tol = 1e-4 * side
        if bool((pos < -tol).any()) or bool((pos > side + tol).any()):
            raise CheckpointError(
                f"sheet of area {area!r}: positions lie outside the [0, {side}] mm sheet"
            )
        if state["layout"] not in LAYOUTS:
            raise CheckpointError(
                f"sheet of area {area!r}: layout {state['layout']!r} is not one of "
                f"{', '.join(LAYOUTS)}"
            )
        try:
            return cls(
                area=str(area),
                shape=tuple(shape),
                side_mm=float(side),
                neighbourhood_mm=float(state["neighbourhood_mm"]),
                layout=state["layout"],
                positions=pos,
                optimized=bool(state["optimized"]),
            )
        except ConfigError as err:
            raise CheckpointError(f"sheet of area {area!r} is corrupt: {err}") from err

    def cached(self, key, build):
        """Return ``self._cache[key]``, computing it with ``build()`` the first time."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def build_sheet(
    area: str,
    shape: tuple[int, int, int],
    side_mm: float,
    neighbourhood_mm: float,
    layout: str = "retinotopic",
    seed: int = 0,
    *,
    jitter: float = 0.1,
) -> Sheet:
    """Place the ``C·H·W`` units of an area on a square sheet (see the module docstring).

    Args:
        area: area name.
        shape: ``(C, H, W)`` of the area's output.
        side_mm: sheet side (mm).
        neighbourhood_mm: neighbourhood width (mm).
        layout: ``"retinotopic"``, ``"tiled"`` or ``"grid"``.
        seed: seed of the ``torch.Generator`` behind the random offsets (retinotopic only).
        jitter: retinotopic Gaussian jitter, standard deviation as a fraction of the cell size.

    Returns:
        a :class:`Sheet` with ``positions [C·H·W, 2]`` float32 mm.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown sheet layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    shape = tuple(shape)
    if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
        raise ConfigError(f"sheet shape must be 3 positive integers (C, H, W), got {shape!r}")
    c, h, w = (int(s) for s in shape)
    if not side_mm > 0:
        raise ConfigError(f"side_mm must be > 0, got {side_mm!r}")
    if not jitter >= 0:
        raise ConfigError(f"jitter must be >= 0, got {jitter!r}")
    side = float(side_mm)
    cell = torch.tensor([side / w, side / h], dtype=torch.float64)  # (x, y) cell size
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    anchor = torch.stack([ww, hh], dim=-1).reshape(1, h * w, 2).to(torch.float64)  # [1, HW, 2]

    if layout == "retinotopic":
        gen = torch.Generator().manual_seed(int(seed))
        offset = torch.rand(c, h * w, 2, generator=gen, dtype=torch.float64)
        noise = torch.randn(c, h * w, 2, generator=gen, dtype=torch.float64) * jitter
        pos = (anchor + offset + noise) * cell
        pos = pos.clamp(0.0, side)
    elif layout == "tiled":
        pos = (anchor + _tile_offsets(c)[:, None, :]) * cell
    else:  # grid
        if h * w != 1:
            raise ConfigError(
                f"layout 'grid' places one position per channel and needs a 1×1 map, but area "
                f"{area!r} has H×W = {h}×{w}; use layout 'tiled' (the channel grid at every "
                f"anchor) or 'retinotopic'"
            )
        pos = (anchor + _tile_offsets(c)[:, None, :]) * cell
    positions = pos.reshape(c * h * w, 2).to(torch.float32)
    return Sheet(area, (c, h, w), side, float(neighbourhood_mm), layout, positions)


def _tile_offsets(c: int) -> Tensor:
    """``[C, 2]`` (x, y) offsets in cell units of channel c's place in its ``near_square`` tile."""
    th, tw = near_square(c)
    ch = torch.arange(c)
    return torch.stack([(ch % tw + 0.5) / tw, (ch // tw + 0.5) / th], dim=-1).to(torch.float64)


# ----------------------------------------------------------------------------- lattices


def lattice(sheet: Sheet) -> Tensor:
    """Unit index at every lattice cell of a ``tiled`` or ``grid`` sheet.

    Returns:
        ``[H·th, W·tw]`` long, ``(th, tw) = near_square(C)``: entry ``[h·th + c // tw,
        w·tw + c % tw]`` is unit ``c·H·W + h·W + w``. Row index grows with ``y``, column with ``x``.
    """
    if sheet.layout not in ("tiled", "grid"):
        raise ConfigError(
            f"grid neighbours need a 'tiled' or 'grid' sheet, but area {sheet.area!r} has layout "
            f"{sheet.layout!r}; build its sheet with layout='tiled' (or 'grid' for a 1×1 map)"
        )
    c, h, w = sheet.shape
    th, tw = near_square(c)
    units = torch.arange(c * h * w).reshape(th, tw, h, w)  # [c//tw, c%tw, h, w]
    return units.permute(2, 0, 3, 1).reshape(h * th, w * tw)
