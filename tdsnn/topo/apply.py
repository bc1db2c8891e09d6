"""One area's topographic loss from a :class:`TopoConfig`: what the training loop calls per step.

Per step and area::

    terms = topo_loss(cfg, sheets[area], spikes=spikes[area], v=v.get(area),
                      weights=incoming.get(area), generator=gen)
    terms["total"]            # weighted sum to add (averaged over areas) to the task loss
    terms["rate"], ...        # unweighted terms for logging

Pair sets that do not change between steps (radius CSR lists, lattice and channel-grid
neighbours), on CUDA their tile plans (:func:`pair_plan`, read by the tiled pair kernels),
cluster banks and device copies of the positions are cached on the :class:`~tdsnn.sheet.Sheet`.

Clusters (``pairs: clusters``) have two paths with the same loss and the same window
distribution: :func:`cluster_terms`, what training uses, computes all areas at once on clusters
picked on the device from each sheet's :class:`~tdsnn.sheet.ClusterBank` (no host reads,
static shapes: CUDA-graph capturable); :func:`topo_loss`, the reference, draws fresh windows
per area with :func:`~tdsnn.sheet.sample_cluster_index` (which reads their sizes back).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.ops.tiles import PairTiles, pair_tiles
from tdsnn.sheet import (
    ClusterBank,
    Sheet,
    build_cluster_bank,
    csr_to_pairs,
    grid_neighbours,
    lattice_pairs,
    near_square,
    radius_pairs,
    sample_cluster_index,
)
from tdsnn.topo.features import flatten_units, incoming_weights
from tdsnn.topo.losses import (
    as_loss,
    stc_loss,
    stc_loss_areas,
    stc_loss_clusters,
    toploss_loss,
    ws_loss,
)
from tdsnn.topo.presets import TopoConfig

__all__ = [
    "topo_loss",
    "cluster_terms",
    "cluster_bank",
    "pair_set",
    "pair_plan",
    "channel_pairs",
]


def channel_pairs(channels: int, connectivity: int = 4, wrap: bool = False) -> Tensor:
    """``[P, 2]`` neighbour pairs of the ``near_square(C)`` channel grid (weight losses)."""
    return grid_neighbours(near_square(channels), connectivity, wrap)


def _pair_key(config: TopoConfig, sheet: Sheet) -> tuple:
    if config.pairs == "radius":
        return ("radius_pairs", sheet.neighbourhood_mm * config.window_factor)
    if config.pairs == "grid-neighbours":
        return ("lattice_pairs", config.connectivity, config.wrap)
    raise ConfigError("pair_set: clusters are drawn per step by tdsnn.sheet.sample_cluster_index")


def pair_set(config: TopoConfig, sheet: Sheet, device: torch.device | str = "cpu") -> Tensor:
    """The fixed ``[P, 2]`` unit pairs of a ``radius`` or ``grid-neighbours`` config (cached).

    ``radius``: every pair within ``neighbourhood_mm × window_factor``; ``grid-neighbours``:
    lattice neighbours of a ``tiled``/``grid`` sheet (:func:`tdsnn.sheet.lattice_pairs`).
    """
    device = torch.device(device)
    key = _pair_key(config, sheet)
    if key[0] == "radius_pairs":
        cpu = sheet.cached(key, lambda: csr_to_pairs(*radius_pairs(sheet.positions, key[1])))
    else:
        cpu = lattice_pairs(sheet, config.connectivity, config.wrap)
    return sheet.cached((*key, str(device)), lambda: cpu.to(device))


def pair_plan(config: TopoConfig, sheet: Sheet, device: torch.device) -> Tensor | PairTiles:
    """What the STC terms reduce over: on CUDA the tiles of :func:`pair_set` (built once per
    sheet and device, :func:`~tdsnn.ops.tiles.pair_tiles` on the sheet's positions), which the
    tiled kernels read; elsewhere the pair list itself."""
    pairs = pair_set(config, sheet, device)
    if device.type != "cuda":
        return pairs
    key = ("pair_tiles", *_pair_key(config, sheet), str(device))
    return sheet.cached(key, lambda: pair_tiles(pairs, sheet.num_units, sheet.positions))


def _positions(sheet: Sheet, device: torch.device) -> Tensor:
    return sheet.cached(("positions", str(device)), lambda: sheet.positions.to(device))


def topo_loss(
    config: TopoConfig,
    sheet: Sheet,
    *,
    spikes: Tensor | None = None,
    v: Tensor | None = None,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Topographic loss of one area under ``config``.

    For ``pairs: clusters`` this is the reference of :func:`cluster_terms` (the training path):
    fresh windows per call, drawn by :func:`~tdsnn.sheet.sample_cluster_index`.

    Args:
        config: the :class:`TopoConfig`.
        sheet: the area's sheet.
        spikes: ``[T, B, C, H, W]`` or ``[T, B, N]`` output spikes (feature ``spikes``).
        v: membrane / pre-spike traces shaped like ``spikes`` (feature ``membrane``, or
            ``gamma > 0``).
        weights: incoming weights of the area's output channels, ``[C, ...]`` (conv weight) or
            ``[C, F]`` (feature ``weights``; append the bias with
            :func:`~tdsnn.topo.features.incoming_weights` if wanted).
        generator: ``torch.Generator`` of the cluster draws (best on the features' device).

    Returns:
        ``{"total": α·rate + β·sync + γ·membrane (or α·weights), plus the unweighted terms}``:
        ``"rate"``, ``"synchrony"``, ``"membrane"`` (terms with non-zero weight) or
        ``"weights"``. ``none`` gives ``{"total": 0}``.
    """
    if not config.enabled:
        ref = spikes if spikes is not None else (v if v is not None else weights)
        return {"total": torch.zeros((), device=ref.device if ref is not None else "cpu")}
    if config.feature == "weights":
        return _weight_loss(config, sheet, weights)

    x = _area_features(config, sheet, spikes, v)
    positions = _positions(sheet, x.device)
    kwargs = {**_stc_weights(config), "v": v}
    if config.pairs == "clusters":
        clusters = sample_cluster_index(
            sheet,
            config.num_clusters,
            window_mm=config.cluster_window_mm(sheet),
            max_units=config.max_units,
            generator=generator,
            device=x.device,
        )
        return stc_loss_clusters(x, positions, clusters, **kwargs)
    pairs = pair_plan(config, sheet, x.device)
    local_as = config.form == "local" and config.feature == "spikes"
    if local_as and config.metric != "correlation" and config.alpha > 0:
        # AS with another metric: the rate term compares spike-count vectors with it (the
        # STC rate term is 1 - Pearson, i.e. the correlation metric); synchrony and membrane
        # terms, if weighted, stay STC's
        rate = as_loss(x, pair_set(config, sheet, x.device), metric=config.metric)
        rest = stc_loss(x, positions, pairs, **{**kwargs, "alpha": 0.0})
        rest.pop("rate", None)
        return {**rest, "rate": rate, "total": config.alpha * rate + rest["total"]}
    return stc_loss(x, positions, pairs, **kwargs)


def cluster_terms(
    config: TopoConfig,
    sheets: Mapping[str, Sheet],
    *,
    spikes: Mapping[str, Tensor],
    membrane: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Tensor]]:
    """Every area's STC terms on clusters picked from its :func:`cluster_bank`, in one batch.

    The training path of ``pairs: clusters`` (``feature`` spikes or membrane): per area,
    ``config.num_clusters`` bank rows are picked with ``generator`` and subsampled to
    ``config.max_units`` on the features' device, then :func:`~tdsnn.topo.losses.stc_loss_areas`
    computes all areas together. Same loss and window distribution as :func:`topo_loss` (the
    reference); nothing is read back to the host.

    Args:
        sheets: ``{area: Sheet}`` of the areas that get the loss, in drawing order.
        spikes, membrane: ``{area: [T, B, C, H, W] or [T, B, N]}`` (as :func:`topo_loss`).
        generator: ``torch.Generator`` of the picks (best on the features' device).
        seed: seed of the banks (each area's is derived from it and the area name).

    Returns:
        ``{area: {"total", "rate"?, "synchrony"?, "membrane"?}}``.
    """
    if config.pairs != "clusters" or config.feature == "weights" or not config.enabled:
        raise ConfigError(
            f"cluster_terms: topo preset {config.name!r} does not compare activity on clusters"
        )
    membrane = membrane or {}
    xs, vs, positions, clusters = {}, {}, {}, {}
    for area, sheet in sheets.items():
        v = membrane.get(area)
        xs[area] = _area_features(config, sheet, spikes.get(area), v)
        if v is not None:
            vs[area] = v
        positions[area] = _positions(sheet, xs[area].device)
        bank = cluster_bank(config, sheet, xs[area].device, seed)
        clusters[area] = bank.draw(config.num_clusters, config.max_units, generator)
    return stc_loss_areas(xs, positions, clusters, v=vs, **_stc_weights(config))


def cluster_bank(
    config: TopoConfig, sheet: Sheet, device: torch.device | str, seed: int = 0
) -> ClusterBank:
    """The sheet's :class:`~tdsnn.sheet.ClusterBank` for ``config``'s windows on ``device``
    (built once and cached on the sheet; its seed is derived from ``seed`` and the area)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # the key features' devices give
        device = torch.device("cuda", torch.cuda.current_device())
    window = config.cluster_window_mm(sheet)
    bank_seed = (int(seed) * 1_000_003 + zlib.crc32(sheet.area.encode())) % 2**63
    key = ("cluster_bank", window, bank_seed, str(device))
    return sheet.cached(
        key, lambda: build_cluster_bank(sheet, window_mm=window, seed=bank_seed, device=device)
    )


def _area_features(
    config: TopoConfig, sheet: Sheet, spikes: Tensor | None, v: Tensor | None
) -> Tensor:
    """The ``[T, B, N]`` features the STC terms compare (spikes, or membrane for ``membrane``)."""
    x = spikes if config.feature == "spikes" else v
    if x is None:
        need = "spikes=" if config.feature == "spikes" else "v= (membrane/pre-spike traces)"
        raise ConfigError(f"topo preset {config.name!r} needs {need} for area {sheet.area!r}")
    x = flatten_units(x)
    if x.shape[-1] != sheet.num_units:
        raise ConfigError(
            f"area {sheet.area!r}: features have {x.shape[-1]} units but its sheet has "
            f"{sheet.num_units} (shape {sheet.shape}); was the sheet built for this model?"
        )
    return x


def _stc_weights(config: TopoConfig) -> dict:
    """The STC keyword arguments of ``config``: term weights, CCG window and form."""
    return dict(
        alpha=config.alpha,
        beta=config.beta,
        gamma=config.gamma,
        window=config.ccg_window,
        form="alignment" if config.form == "alignment" else "local",
    )


def _weight_loss(config: TopoConfig, sheet: Sheet, weights: Tensor | None) -> dict[str, Tensor]:
    if weights is None:
        raise ConfigError(
            f"topo preset {config.name!r} needs weights= (incoming weights [C, ...] of the "
            f"channels of area {sheet.area!r})"
        )
    w = incoming_weights(weights)
    channels = sheet.shape[0]
    if w.shape[0] != channels:
        raise ConfigError(
            f"area {sheet.area!r} has {channels} channels but weights have {w.shape[0]} rows"
        )
    if config.form == "blur":
        value = toploss_loss(w, near_square(channels), config.toploss_factor)
    else:
        key = ("channel_pairs", config.connectivity, config.wrap, str(w.device))
        pairs = sheet.cached(
            key, lambda: channel_pairs(channels, config.connectivity, config.wrap).to(w.device)
        )
        value = ws_loss(w, pairs, metric=config.metric)
    return {"weights": value, "total": config.alpha * value}
