"""Pair sets of the topographic losses: which unit pairs a loss compares (DESIGN §7).

Positions come from the area's :class:`~tdsnn.sheet.Sheet` (mm, unit ``u = c·H·W + h·W + w``);
everything here derives from them and is fixed for the sheet's life:

- **pair lists** ``[P, 2]`` long, ``i < j``: :func:`grid_neighbours` (4/8-neighbours of a grid,
  optionally toroidal), :func:`channel_pairs` (of the ``near_square(C)`` channel grid, for the
  weight losses), :func:`lattice_pairs` (of a ``tiled``/``grid`` sheet's lattice),
  :func:`radius_pairs` (CSR list of every pair within a radius) and :func:`csr_to_pairs`;
  :func:`pair_distances` gives their lengths.
- **clusters**: random square windows and every unit inside each (at most ``max_units``, a
  random subsample). :func:`sample_cluster_index` draws ``K`` windows at once in the padded form
  ``(index [K, n] long, valid [K, n] bool)``; :func:`cluster_lists` lists them;
  :func:`pad_clusters` pads a list.
- **cluster banks**: the same windows drawn once (:func:`build_cluster_bank`), then picked per
  step on the device (:meth:`ClusterBank.draw`: no host reads, static shapes).
- **cached on the sheet**: :func:`pair_set` (the fixed pairs: within a radius, or lattice
  neighbours), :func:`pair_plan` (on CUDA their tile plan, :func:`~tdsnn.ops.tiles.pair_tiles`,
  which the tiled kernels read) and :func:`cluster_bank`.

Nothing here reads a loss's configuration: :class:`~tdsnn.topo.objective.TopoObjective` turns
``topo.pairs``, ``topo.window_factor``, ``topo.connectivity`` and ``topo.wrap`` into these
arguments.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.ops.tiles import PairTiles, pair_tiles
from tdsnn.sheet import Sheet, lattice, near_square

__all__ = [
    "grid_neighbours",
    "channel_pairs",
    "lattice_pairs",
    "radius_pairs",
    "csr_to_pairs",
    "pair_distances",
    "window_side",
    "sample_cluster_index",
    "cluster_lists",
    "pad_clusters",
    "BANK_SIZE",
    "ClusterBank",
    "build_cluster_bank",
    "pair_set",
    "pair_plan",
    "cluster_bank",
]


# ----------------------------------------------------------------------------- pair lists


def grid_neighbours(grid_hw: tuple[int, int], connectivity: int = 4, wrap: bool = False) -> Tensor:
    """Undirected neighbour edges of an ``rows×cols`` grid, each edge once.

    Cell ``(r, c)`` has index ``r·cols + c``. 4-connectivity links right and lower neighbours;
    8-connectivity adds both lower diagonals. ``wrap=True`` makes the grid a torus (edges that
    would repeat or link a cell to itself on grids narrower than 3 are dropped).

    Returns:
        ``[P, 2]`` long with ``i < j``, sorted by ``(i, j)``. Without wrap ``P = rows(cols−1) +
        (rows−1)cols`` (4) plus ``2(rows−1)(cols−1)`` (8); with wrap and both sides ≥ 3,
        ``P = 2·rows·cols`` (4) or ``4·rows·cols`` (8).
    """
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
    rows, cols = (int(s) for s in grid_hw)
    if rows < 1 or cols < 1:
        raise ConfigError(f"grid_hw must be two positive integers, got {grid_hw!r}")
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    edges = []
    for dr, dc in offsets:
        r2, c2 = r + dr, c + dc
        if wrap:
            keep = torch.ones_like(r, dtype=torch.bool)
            r2, c2 = r2 % rows, c2 % cols
        else:
            keep = (r2 >= 0) & (r2 < rows) & (c2 >= 0) & (c2 < cols)
        edges.append(torch.stack([r[keep] * cols + c[keep], r2[keep] * cols + c2[keep]], dim=1))
    pairs = torch.cat(edges)
    pairs, _ = pairs.sort(dim=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return torch.unique(pairs, dim=0).reshape(-1, 2)


def channel_pairs(channels: int, connectivity: int = 4, wrap: bool = False) -> Tensor:
    """``[P, 2]`` neighbour pairs of the ``near_square(C)`` channel grid (weight losses)."""
    return grid_neighbours(near_square(channels), connectivity, wrap)


def lattice_pairs(sheet: Sheet, connectivity: int = 4, wrap: bool = False) -> Tensor:
    """``[P, 2]`` long unit pairs ``(i < j)`` of lattice neighbours on a ``tiled``/``grid`` sheet.

    Cached on the sheet per ``(connectivity, wrap)``.
    """

    def build() -> Tensor:
        grid = lattice(sheet)
        edges = grid_neighbours(tuple(grid.shape), connectivity, wrap)
        units = grid.reshape(-1)[edges]
        units, _ = units.sort(dim=1)
        return units

    return sheet.cached(("lattice_pairs", int(connectivity), bool(wrap)), build)


def pair_distances(positions: Tensor, pairs: Tensor) -> Tensor:
    """``[P]`` Euclidean distances (mm) of the unit pairs ``[P, 2]`` given ``positions [N, 2]``."""
    return (positions[pairs[:, 0]] - positions[pairs[:, 1]]).norm(dim=-1)


def radius_pairs(positions: Tensor, radius_mm: float) -> tuple[Tensor, Tensor]:
    """CSR neighbour list of all units within ``radius_mm`` of each unit (self excluded; units
    at the same position are neighbours).

    Found with scipy's k-d tree (``cKDTree.query_pairs``, ``d_ij <= radius_mm`` in float64), so
    memory and time grow with the number of pairs, not with ``N²``.

    Args:
        positions: ``[N, 2]`` mm.
        radius_mm: neighbourhood radius (mm), > 0.

    Returns:
        ``(indptr [N+1], indices [nnz])`` long on the CPU: the neighbours of unit ``i`` are
        ``indices[indptr[i]:indptr[i+1]]``, ascending. Every pair appears in both rows.
    """
    from scipy.spatial import cKDTree

    if not radius_mm > 0:
        raise ConfigError(f"radius_mm must be > 0, got {radius_mm!r}")
    pos = positions.detach().to("cpu", torch.float64).numpy()
    n = pos.shape[0]
    if n == 0:
        return torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    found = torch.from_numpy(
        cKDTree(pos).query_pairs(float(radius_mm), output_type="ndarray").astype("int64")
    ).reshape(-1, 2)
    rows = torch.cat([found[:, 0], found[:, 1]])
    cols = torch.cat([found[:, 1], found[:, 0]])
    key, _ = torch.sort(rows * n + cols)
    indptr = torch.zeros(n + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(key // n, minlength=n), 0)
    return indptr, key % n


def csr_to_pairs(indptr: Tensor, indices: Tensor) -> Tensor:
    """``[P, 2]`` long pairs ``(i, j)`` with ``i < j`` from a symmetric CSR neighbour list."""
    n = indptr.numel() - 1
    rows = torch.arange(n, device=indices.device).repeat_interleave(indptr.diff())
    keep = rows < indices
    return torch.stack([rows[keep], indices[keep]], dim=1)


# ----------------------------------------------------------------------------- clusters


def _inside(coords: Tensor, corners: Tensor, side: float) -> Tensor:
    """``[W, N]`` bool: unit ``n`` lies in the square window ``[c, c + side]²`` of corner ``w``.

    ``coords``: ``[2, N]`` (the x row, then the y row); ``corners``: ``[W, 2]`` (x, y).
    """
    x, y = coords[:, None, :]  # [1, N] each
    x0, y0 = corners[:, :1], corners[:, 1:]  # [W, 1] each
    return (x >= x0) & (x <= x0 + side) & (y >= y0) & (y <= y0 + side)


def window_side(sheet: Sheet, window_mm: float | None) -> float:
    """A cluster window's side in mm: ``window_mm`` (default the sheet's neighbourhood width),
    capped at the sheet side; not > 0 is a ConfigError."""
    side = sheet.neighbourhood_mm if window_mm is None else float(window_mm)
    if not side > 0:
        raise ConfigError(f"window_mm must be > 0, got {window_mm!r}")
    return min(side, sheet.side_mm)


def sample_cluster_index(
    sheet: Sheet,
    num_clusters: int,
    *,
    window_mm: float | None = None,
    max_units: int = 500,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``K = num_clusters`` random square windows at once and the units inside each.

    A window of side ``window_mm`` (default ``sheet.neighbourhood_mm``, capped at the sheet side)
    is placed uniformly at random fully inside the sheet; all windows are tested against all
    units in one ``[K, N]`` comparison on ``device``. Windows holding fewer than 2 units are
    redrawn; windows holding more than ``max_units`` are subsampled uniformly at random (random
    keys, the ``max_units`` smallest). The only value read back to the host is the ``K`` window
    counts, which fix the padded width ``n`` (and show which windows to redraw).

    Args:
        generator: ``torch.Generator`` of every draw; numbers are drawn on its device and moved
            to ``device`` (default: the generator's device, else the CPU).

    Returns:
        ``(index [K, n] long, valid [K, n] bool)`` on ``device``, ``n`` = the largest cluster:
        each row holds its cluster's units in ascending order, then padding slots (``valid``
        False) that repeat the row's first unit.
    """
    if int(num_clusters) != num_clusters or num_clusters < 1:
        raise ConfigError(f"num_clusters must be a positive integer, got {num_clusters!r}")
    if int(max_units) != max_units or max_units < 2:
        raise ConfigError(f"max_units must be an integer >= 2, got {max_units!r}")
    side = window_side(sheet, window_mm)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device) if device is not None else draw_device
    coords = sheet.cached(
        ("coords_f64", str(device)),
        lambda: sheet.positions.T.to(device, torch.float64).contiguous(),
    )  # [2, N]: the x row and the y row, each window test runs along contiguous rows
    inside, counts = _windows(sheet, coords, side, int(num_clusters), generator, draw_device)
    keys = torch.rand(inside.shape, generator=generator, device=draw_device).to(device)
    n = min(int(max_units), max(counts))
    return _smallest_keys(keys, inside, n, sheet.num_units)


def _smallest_keys(
    keys: Tensor, member: Tensor, width: int, num_units: int, units: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Each row's ``width`` members with the smallest random ``keys`` (a uniform subsample), in
    the padded form of :func:`sample_cluster_index`.

    ``keys``, ``member``: ``[K, M]`` floats in [0, 1) and bools; slot ``j`` of row ``i`` is unit
    ``units[i, j]`` (default: unit ``j``). Rows with fewer members are padded (``valid`` False,
    repeating the row's first unit).
    """
    chosen, slots = keys.masked_fill(~member, 2.0).topk(width, dim=1, largest=False)
    picked = slots if units is None else units.gather(1, slots)
    order = torch.where(chosen < 1.5, picked, picked + num_units).sort(dim=1).values
    valid = order < num_units
    return torch.where(valid, order, order[:, :1]), valid


def _windows(
    sheet: Sheet,
    coords: Tensor,
    side: float,
    k: int,
    generator: torch.Generator | None,
    draw_device: torch.device,
) -> tuple[Tensor, list[int]]:
    """``[k, N]`` membership of ``k`` random windows holding >= 2 units each, and their counts.

    ``coords``: ``[2, N]`` float64 mm (x row, y row) on the device of the test. Corners are drawn
    ``k`` at a time, uniform in ``[0, side_mm − side]²``; windows with fewer than 2 units are
    dropped and drawn again (at most ``100·k + 100`` windows in all, then a ConfigError).
    """
    kept: list[Tensor] = []
    counts: list[int] = []
    drawn, max_drawn = 0, 100 * k + 100
    while len(counts) < k:
        if drawn >= max_drawn:
            raise ConfigError(
                f"area {sheet.area!r}: after {max_drawn} random {side:g} mm windows only "
                f"{len(counts)} held >= 2 units; use a larger window (window_mm / window_factor)"
            )
        corners = torch.rand(k, 2, generator=generator, device=draw_device, dtype=torch.float64)
        inside = _inside(coords, corners.to(coords.device) * (sheet.side_mm - side), side)
        sizes = inside.sum(1).tolist()
        good = [i for i, size in enumerate(sizes) if size >= 2][: k - len(counts)]
        kept.append(inside if len(good) == k else inside[good])
        counts += [sizes[i] for i in good]
        drawn += k
    return (kept[0] if len(kept) == 1 else torch.cat(kept)), counts


def cluster_lists(index: Tensor, valid: Tensor) -> list[Tensor]:
    """The padded clusters ``(index [K, n], valid [K, n])`` of :func:`sample_cluster_index` as
    a list of ``K`` long CPU tensors of unit indices (the inverse of :func:`pad_clusters`)."""
    index, valid = index.cpu(), valid.cpu()
    return [row[mask] for row, mask in zip(index, valid, strict=True)]


def pad_clusters(clusters: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The padded form of :func:`sample_cluster_index` from ``K`` clusters' unit indices:
    ``(index [K, n] long, valid [K, n] bool)`` on the first cluster's device, ``n`` the largest
    cluster; each row its cluster's units in the given order, then padding (``valid`` False)
    that repeats the row's first unit."""
    if len(clusters) == 0:
        raise ConfigError("pad_clusters needs at least one cluster")
    units = [c.reshape(-1).long() for c in clusters]
    device = units[0].device
    counts = torch.tensor([int(u.numel()) for u in units], device=device)
    slots = torch.arange(int(counts.max()), device=device)
    valid = slots[None, :] < counts[:, None]
    index = torch.zeros(valid.shape, dtype=torch.long, device=device)
    index[valid] = torch.cat([u.to(device) for u in units])
    return torch.where(valid, index, index[:, :1]), valid


# ----------------------------------------------------------------------------- cluster banks


BANK_SIZE = 4096  # windows of a bank (at most; fewer when the padded index would be too big)
_BANK_ENTRIES = 1 << 24  # cap on bank windows × padded width (index memory: 128 MiB)


@dataclass(frozen=True, eq=False)
class ClusterBank:
    """Square windows of one sheet drawn once, as a padded index kept on the device.

    A step picks rows with :meth:`draw`: no host reads and shapes fixed by the bank, so the
    draw can be captured in a CUDA graph.

    Attributes:
        index: ``[Kbank, nmax]`` long: each window's units ascending, then padding that repeats
            its first unit.
        valid: ``[Kbank, nmax]`` bool, False on padding.
        counts: ``[Kbank]`` long, units per window (>= 2 each).
        window_mm: side of the windows (mm).
        num_units: ``N`` of the sheet.
    """

    index: Tensor
    valid: Tensor
    counts: Tensor
    window_mm: float
    num_units: int

    @property
    def width(self) -> int:
        """``nmax``: the padded width, the largest window."""
        return int(self.index.shape[1])

    def draw(
        self, num_clusters: int, max_units: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``num_clusters`` windows picked uniformly (with replacement), each subsampled to at
        most ``max_units`` units (random keys, the smallest), on the bank's device.

        Returns ``(index [K, m], valid [K, m])`` with ``m = min(max_units, nmax)``, in the form
        of :func:`sample_cluster_index` (units ascending, then padding repeating the first).
        Random numbers come from ``generator`` (on its device; None: the device's default).
        """
        device = self.index.device
        draw_device = generator.device if generator is not None else device
        rows = torch.randint(
            self.index.shape[0], (int(num_clusters),), generator=generator, device=draw_device
        ).to(device)
        index, valid = self.index.index_select(0, rows), self.valid.index_select(0, rows)
        width = min(int(max_units), self.width)
        if width == self.width:
            return index, valid  # no window holds more than max_units: nothing to subsample
        keys = torch.rand(index.shape, generator=generator, device=draw_device).to(device)
        return _smallest_keys(keys, valid, width, self.num_units, units=index)


def build_cluster_bank(
    sheet: Sheet,
    *,
    window_mm: float | None = None,
    size: int = BANK_SIZE,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClusterBank:
    """Draw a :class:`ClusterBank` of ``sheet``: windows as :func:`sample_cluster_index` draws.

    Corners are stratified: one uniform corner in each cell of a ``g×g`` grid over
    ``[0, side_mm − window]²`` (``g = ⌈√size⌉``), so a row picked uniformly has a uniform corner,
    as in :func:`sample_cluster_index`, while every part of the sheet is covered about equally.
    Windows holding fewer than 2 units are left out (the per-step sampler draws them again).
    The bank is a function of ``(sheet, window_mm, size, seed)`` alone; membership is tested in
    float64 on ``device`` (exact comparisons, so every device builds the same bank).

    Args:
        window_mm: window side (default ``sheet.neighbourhood_mm``, capped at the sheet side).
        size: windows drawn (fewer if ``size × nmax`` would pass 2²⁴ entries, at least 256).
        seed: seed of the corners.
    """
    if int(size) != size or size < 1:
        raise ConfigError(f"bank size must be a positive integer, got {size!r}")
    side = window_side(sheet, window_mm)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(int(seed))
    grid = math.ceil(math.sqrt(int(size)))
    cells = torch.stack(
        torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="xy"), -1
    ).reshape(-1, 2)
    jitter = torch.rand(cells.shape, generator=generator, dtype=torch.float64)
    corners = (cells + jitter) / grid * (sheet.side_mm - side)  # [g², 2] mm
    coords = sheet.positions.T.to(device, torch.float64).contiguous()  # [2, N]
    units, counts = _bank_members(coords, corners.to(device), side)
    keep = counts >= 2
    if not bool(keep.any()):
        raise ConfigError(
            f"area {sheet.area!r}: none of {corners.shape[0]} {side:g} mm windows held >= 2 "
            "units; use a larger window (window_mm / window_factor)"
        )
    counts = counts[keep]
    order = torch.randperm(int(counts.numel()), generator=generator).to(device)
    index, valid = pad_clusters([u for u, k in zip(units, keep.tolist(), strict=True) if k])
    index, valid, counts = index[order], valid[order], counts[order]
    rows = max(min(int(size), _BANK_ENTRIES // index.shape[1]), 256)
    return ClusterBank(index[:rows], valid[:rows], counts[:rows], side, sheet.num_units)


def _bank_members(coords: Tensor, corners: Tensor, side: float) -> tuple[list[Tensor], Tensor]:
    """Ascending unit indices inside each window, and the counts ``[W]`` (chunks of windows,
    so the ``[chunk, N]`` comparison stays below 2²⁶ entries)."""
    n = coords.shape[1]
    chunk = max(1, (1 << 26) // max(n, 1))
    units: list[Tensor] = []
    counts = []
    for start in range(0, corners.shape[0], chunk):
        inside = _inside(coords, corners[start : start + chunk], side)
        sizes = inside.sum(1)
        flat = inside.nonzero()[:, 1]  # row-major: each window's units, ascending
        units += list(flat.split(sizes.tolist()))
        counts.append(sizes)
    return units, torch.cat(counts)


# ----------------------------------------------------------------------------- cached on the sheet


def _fixed_key(radius_mm: float | None, connectivity: int, wrap: bool) -> tuple:
    """The cache key of :func:`pair_set`'s pairs (before the device)."""
    if radius_mm is not None:
        return ("radius_pairs", radius_mm)
    return ("lattice_pairs", connectivity, wrap)


def pair_set(
    sheet: Sheet,
    radius_mm: float | None = None,
    connectivity: int = 4,
    wrap: bool = False,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The fixed ``[P, 2]`` unit pairs of a sheet on ``device``, cached on the sheet: every pair
    within ``radius_mm`` when it is given (:func:`radius_pairs`), else the ``connectivity``
    neighbours of a ``tiled``/``grid`` sheet's lattice (:func:`lattice_pairs`)."""
    device = torch.device(device)
    key = _fixed_key(radius_mm, connectivity, wrap)
    if radius_mm is not None:
        cpu = sheet.cached(key, lambda: csr_to_pairs(*radius_pairs(sheet.positions, radius_mm)))
    else:
        cpu = lattice_pairs(sheet, connectivity, wrap)
    return sheet.cached((*key, str(device)), lambda: cpu.to(device))


def pair_plan(
    sheet: Sheet,
    radius_mm: float | None,
    connectivity: int,
    wrap: bool,
    device: torch.device,
) -> Tensor | PairTiles:
    """What a loss on :func:`pair_set`'s pairs reduces over: on CUDA their tiles (built once per
    sheet and device, :func:`~tdsnn.ops.tiles.pair_tiles` on the sheet's positions), which the
    tiled kernels read; elsewhere the pair list itself."""
    pairs = pair_set(sheet, radius_mm, connectivity, wrap, device)
    if device.type != "cuda":
        return pairs
    key = ("pair_tiles", *_fixed_key(radius_mm, connectivity, wrap), str(device))
    return sheet.cached(key, lambda: pair_tiles(pairs, sheet.num_units, sheet.positions))


def cluster_bank(
    sheet: Sheet, window_mm: float, device: torch.device | str, seed: int = 0
) -> ClusterBank:
    """The sheet's :class:`ClusterBank` of ``window_mm`` windows on ``device``, built once and
    cached on the sheet; its seed is derived from ``seed`` and the area's name."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # the key features' devices give
        device = torch.device("cuda", torch.cuda.current_device())
    bank_seed = (int(seed) * 1_000_003 + zlib.crc32(sheet.area.encode())) % 2**63
    key = ("cluster_bank", window_mm, bank_seed, str(device))
    return sheet.cached(
        key, lambda: build_cluster_bank(sheet, window_mm=window_mm, seed=bank_seed, device=device)
    )
