"""Tile plans of pair lists (:class:`PairTiles`, built by :func:`pair_tiles`): the pairs grouped
into tiles of at most :data:`MAX_TILE_UNITS` distinct units and :data:`MAX_TILE_PAIRS` pairs,
which the tiled CUDA kernels of :mod:`tdsnn.ops.pairs` read one block per tile, staging the
tile's rows in shared memory. Also the one check of a ``[P, 2]`` pair list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tdsnn.errors import ConfigError

__all__ = [
    "MAX_TILE_PAIRS",
    "MAX_TILE_UNITS",
    "TILINGS",
    "PairTiles",
    "check_pairs",
    "check_tile_inputs",
    "decode_tiles",
    "pair_tiles",
    "spatial_rank",
]

# Limits of one tile, shared with cuda_kernels/pairs.cu (kMaxTileUnits, kMaxTilePairs).
MAX_TILE_UNITS = 128
MAX_TILE_PAIRS = 1024


@dataclass(frozen=True)
class PairTiles:
    """A pair list grouped into tiles of neighbouring units (built by :func:`pair_tiles`).

    Attributes:
        pairs: ``[P, 2]`` int64, the pair list as given.
        units: ``[G, U]`` int64, the units each tile reads (``-1`` pads), ``U <= MAX_TILE_UNITS``.
        local: ``[P, 2]`` int32, each pair's two slots in its tile's ``units``, in tile order.
        offsets: ``[G + 1]`` int64, tile ``g`` holds the tile-ordered pairs
            ``offsets[g]:offsets[g+1]`` (at most ``MAX_TILE_PAIRS``).
        order: ``[P]`` int64, the given index of each tile-ordered pair; ``None`` when the
            tile order is the given order (pairs sorted by their first unit).
        num_units: ``N``, the rows the indices refer to.
    """

    pairs: Tensor
    units: Tensor
    local: Tensor
    offsets: Tensor
    order: Tensor | None
    num_units: int

    def to(self, device: torch.device | str) -> PairTiles:
        move = {k: getattr(self, k) for k in ("pairs", "units", "local", "offsets", "order")}
        moved = {k: None if v is None else v.to(device) for k, v in move.items()}
        return PairTiles(**moved, num_units=self.num_units)

    def tile_pairs(self) -> Tensor:
        """``[P, 2]`` int64: the pairs in tile order, decoded from ``units`` and ``local``."""
        return decode_tiles(self.units, self.local, self.offsets)

    def in_tile_order(self, values: Tensor) -> Tensor:
        """Per-pair ``values [P, ...]`` given in the list's order, in tile order."""
        return values if self.order is None else values[self.order]

    def in_given_order(self, values: Tensor) -> Tensor:
        """Per-pair ``values [P, ...]`` in tile order, back in the list's order."""
        if self.order is None:
            return values
        return values.new_empty(values.shape).index_copy_(0, self.order, values)


def decode_tiles(units: Tensor, local: Tensor, offsets: Tensor) -> Tensor:
    """``[P, 2]`` int64 unit pairs in tile order from a plan's ``units``, ``local``, ``offsets``
    (see :class:`PairTiles`)."""
    counts = offsets.diff()
    if local.dim() != 2 or local.shape[1] != 2 or int(counts.sum()) != local.shape[0]:
        raise ConfigError(
            f"tiles: local must be [P, 2] with P = offsets[-1] = {int(counts.sum())}, got "
            f"{tuple(local.shape)}"
        )
    tile = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return units[tile[:, None], local.long()]


def check_tile_inputs(
    op: str,
    x: Tensor,
    y: Tensor,
    units: Tensor,
    local: Tensor,
    offsets: Tensor,
    weights: Tensor | None = None,
) -> None:
    """The checks of the tiled ops' CPU implementations, with the CUDA kernels' messages, plus
    the plan's values (slots inside their tile, offsets in order, units in ``[-1, N)``): a
    ``ConfigError`` naming ``op`` instead of an indexing error."""

    def fail(message: str) -> None:
        raise ConfigError(f"{op}: {message}")

    if x.dim() != 2 or y.shape != x.shape:
        fail(f"x and y must be rows [N, M] of the same shape, got {tuple(x.shape)} and "
             f"{tuple(y.shape)}")  # fmt: skip
    if x.dtype != y.dtype or x.dtype not in (torch.float32, torch.float64):
        fail(f"x and y must be float32 or float64 of one dtype, got {x.dtype} and {y.dtype}")
    if units.dim() != 2 or units.dtype != torch.long:
        fail(
            f"units must be a [G, U] int64 tensor, got {units.dtype} of shape {tuple(units.shape)}"
        )
    if not 1 <= units.shape[1] <= MAX_TILE_UNITS:
        fail(f"a tile reads 1 to {MAX_TILE_UNITS} units, got units of width {units.shape[1]}")
    if local.dim() != 2 or local.shape[1] != 2 or local.dtype != torch.int32:
        fail(f"local must be a [P, 2] int32 tensor, got {local.dtype} of shape "
             f"{tuple(local.shape)}")  # fmt: skip
    if offsets.shape != (units.shape[0] + 1,) or offsets.dtype != torch.long:
        fail(f"offsets must be a [G + 1] = [{units.shape[0] + 1}] int64 tensor, got "
             f"{offsets.dtype} of shape {tuple(offsets.shape)}")  # fmt: skip
    if weights is not None and weights.shape != (local.shape[0],):
        fail(f"weights must be [P] = [{local.shape[0]}], got {tuple(weights.shape)}")
    if weights is not None and weights.dtype != x.dtype:
        fail(f"weights must be {x.dtype}, got {weights.dtype}")
    for name, t in (("units", units), ("local", local), ("offsets", offsets), ("y", y)):
        if t.device != x.device:
            fail(f"{name} is on {t.device} but the rows are on {x.device}")
    counts = offsets.diff()
    if offsets[0] != 0 or (counts < 0).any() or offsets[-1] != local.shape[0]:
        fail(f"offsets must rise from 0 to P = {local.shape[0]}")
    if (counts > MAX_TILE_PAIRS).any():
        fail(f"a tile holds at most {MAX_TILE_PAIRS} pairs")
    if local.numel() and (local.min() < 0 or local.max() >= units.shape[1]):
        fail(f"local slots must lie in [0, {units.shape[1]})")
    if units.numel() and (units.min() < -1 or units.max() >= x.shape[0]):
        fail(f"units must lie in [-1, N = {x.shape[0]})")


def check_pairs(pairs: Tensor, num_units: int | None = None) -> Tensor:
    """``pairs`` as an int64 ``[P, 2]`` tensor; a ``ConfigError`` for another shape or (CPU
    tensors, with ``num_units``) an index outside ``[0, num_units)``."""
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ConfigError(f"pairs must be a [P, 2] long tensor, got shape {tuple(pairs.shape)}")
    pairs = pairs.long()
    if num_units is None or pairs.device.type != "cpu" or not pairs.numel():
        return pairs
    if pairs.min() < 0 or pairs.max() >= num_units:
        raise ConfigError(f"pairs hold unit indices outside [0, {num_units})")
    return pairs


def _tile_ids(key: Tensor, cap: int) -> Tensor:
    """Tile of each entry of a sorted ``key [P]``: one per key value, cut every ``cap`` entries."""
    start = torch.ones_like(key, dtype=torch.bool)
    start[1:] = key[1:] != key[:-1]
    group_start = torch.cummax(torch.where(start, torch.arange(len(key)), 0), 0).values
    sub = (torch.arange(len(key)) - group_start) // cap
    new = start.clone()
    new[1:] |= sub[1:] != sub[:-1]
    return torch.cumsum(new.long(), 0) - 1


def _tile_reads(tile: Tensor, pairs: Tensor, n: int) -> tuple[int, int]:
    """``(widest, total)``: the most distinct units one tile reads, and the sum over tiles."""
    keys = torch.unique(tile[:, None] * n + pairs)
    counts = torch.unique_consecutive(keys // n, return_counts=True)[1]
    return int(counts.max()), len(keys)


def _spread_bits(v: Tensor) -> Tensor:
    """The 16 low bits of ``v`` moved to the even bit positions (half a Morton code)."""
    v = v & 0xFFFF
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << shift)) & mask
    return v


def spatial_rank(positions: Tensor) -> Tensor:
    """``[N]`` int64 rank of each unit along the Z-order (Morton) curve of its position.

    Positions ``[N, 2]`` are quantised to a grid of about one unit per cell; ties keep the unit
    order. Runs of 4ᵏ consecutive ranks cover square patches of the sheet.
    """
    pos = positions.detach().double().cpu()
    low, high = pos.min(0).values, pos.max(0).values
    cell = float(((high - low).prod() / len(pos)).sqrt()) if len(pos) > 1 else 0.0
    cells = ((pos - low) / cell).floor().long().clamp(0, 0xFFFF) if cell > 0 else pos.long() * 0
    code = _spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << 1)
    return torch.argsort(torch.argsort(code, stable=True))


# (first-unit span, second-unit span) of the tilings tried; 0: any second unit
TILINGS = ((64, 0), (16, 0), (4, 0), (1, 0), (64, 64), (16, 16))


def _best_tiling(ranks: Tensor, n: int, max_units: int, max_pairs: int) -> tuple[Tensor, Tensor]:
    """``(order, tile)`` of pairs given as unit ranks ``[P, 2]``: the tiling of :data:`TILINGS`
    whose tiles fit in ``max_units`` units and that reads the fewest rows in all."""
    best, best_reads = None, None
    by_first = torch.argsort(ranks[:, 0], stable=True)
    if not len(ranks):
        return by_first, by_first
    for first_span, second_span in TILINGS:
        key = ranks[by_first, 0] // first_span
        if second_span:
            key = key * (n // second_span + 1) + ranks[by_first, 1] // second_span
        within = torch.argsort(key, stable=True)
        order, tile = by_first[within], _tile_ids(key[within], max_pairs)
        widest, reads = _tile_reads(tile, ranks[order], n)
        if widest <= max_units and (best_reads is None or reads < best_reads):
            best, best_reads = (order, tile), reads
    if best is None:  # fewer units than any tiling needs: runs of max_units // 2 pairs
        tile = torch.arange(len(ranks)) // min(max_pairs, max_units // 2)
        best = (by_first, tile)
    return best


def pair_tiles(
    pairs: Tensor,
    num_units: int,
    positions: Tensor | None = None,
    max_units: int = MAX_TILE_UNITS,
    max_pairs: int = MAX_TILE_PAIRS,
) -> PairTiles:
    """Group ``pairs [P, 2]`` into tiles that read at most ``max_units`` distinct rows each.

    Units are ranked along the Z-order curve of ``positions [N, 2]`` (by index without them),
    so that runs of ranks cover patches of the sheet. A tiling cuts the pairs by blocks of
    their first unit's rank (``[a·s, (a+1)·s)``), or by blocks of both units' ranks, and every
    ``max_pairs`` pairs; of the tilings in :data:`TILINGS` whose tiles read at most
    ``max_units`` units, the one that reads the fewest rows in all is kept (failing all, runs
    of ``max_units // 2`` pairs). Few neighbours per unit favour first-unit blocks (a patch and
    its halo); many favour blocks of both. Built on the CPU once per pair list (seconds for
    10⁷ pairs); returned on the pairs' device.
    """
    if not (2 <= max_units <= MAX_TILE_UNITS and 1 <= max_pairs <= MAX_TILE_PAIRS):
        raise ConfigError(
            f"tiles need 2 <= max_units <= {MAX_TILE_UNITS} and 1 <= max_pairs <= "
            f"{MAX_TILE_PAIRS}, got {max_units} and {max_pairs}"
        )
    if positions is not None and positions.shape != (num_units, 2):
        raise ConfigError(
            f"positions must be [N, 2] = [{num_units}, 2], got {tuple(positions.shape)}"
        )
    device = pairs.device
    given = check_pairs(pairs.cpu(), num_units)
    rank = torch.arange(num_units) if positions is None else spatial_rank(positions)
    order, tile = _best_tiling(rank[given], num_units, max_units, max_pairs)
    ordered = given[order]
    keys, inverse = torch.unique(tile[:, None] * num_units + ordered, return_inverse=True)
    key_tile, key_unit = keys // num_units, keys % num_units
    num_tiles = int(tile[-1]) + 1 if len(tile) else 0
    slot = torch.arange(len(keys)) - torch.searchsorted(key_tile, key_tile)
    units = torch.full((num_tiles, int(slot.max()) + 1 if len(slot) else 1), -1)
    units[key_tile, slot] = key_unit
    offsets = torch.zeros(num_tiles + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=num_tiles), 0)
    identity = bool((order == torch.arange(len(order))).all())
    tiles = PairTiles(
        pairs=given,
        units=units,
        local=slot[inverse].to(torch.int32),
        offsets=offsets,
        order=None if identity else order,
        num_units=num_units,
    )
    return tiles.to(device)
