"""The topographic part of a training objective, for an area stack or hooked layers.

:class:`TopoObjective` turns a :class:`~tdsnn.topo.TopoConfig` and the areas' sheets into:

- what the forward pass must return (:meth:`~TopoObjective.recording`: spikes, membrane),
- each area's terms for one pass (:meth:`~TopoObjective.terms`): for activity on clusters all
  areas in one :func:`~tdsnn.topo.losses.stc_loss` call on clusters picked from the sheets'
  device-resident :func:`~tdsnn.topo.pairs.cluster_bank` (no host reads, static shapes: CUDA-graph
  capturable); else, and with ``reference=True``, area by area on fresh windows
  (:func:`~tdsnn.topo.pairs.sample_cluster_index`, which reads their sizes back) or on the
  fixed pairs of :func:`~tdsnn.topo.pairs.pair_plan`; weight losses (WS, TopoLoss) on the
  channel grid,
- their weighted sum over areas (:meth:`~TopoObjective.loss`; ``topo.area_weights``, 1 each by
  default; the mean instead for ``topo.area_reduction: mean``, what old run configs computed),
  the value added to the task loss,
- the warm-up factor on it (:meth:`~TopoObjective.ramp`).

The training loop, ``benchmarks/train_step.py`` and :class:`tdsnn.interop.TopoRegularizer` all
compute the topographic loss through it::

    objective = TopoObjective(config.objective_topo(), sheets, model.area_names)
    out = model(images, **objective.recording())
    terms = objective.stack_terms(model, out, generator)   # {area: {"total", "rate", ...}}
    loss = task_loss + objective.ramp(step, total_steps) * objective.loss(terms)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.sheet import Sheet, near_square
from tdsnn.topo.features import flatten_units, incoming_weights
from tdsnn.topo.losses import as_loss, stc_loss, toploss_loss, ws_loss
from tdsnn.topo.pairs import channel_pairs, cluster_bank, pair_plan, pair_set, sample_cluster_index
from tdsnn.topo_config import TopoConfig

__all__ = ["TopoObjective"]

Terms = dict[str, dict[str, Tensor]]


class TopoObjective:
    """Topographic loss of a set of areas (or layers) under one config.

    Args:
        config: the topographic loss.
        sheets: ``{area: Sheet}``; read when terms are computed, so a mapping that is filled
            lazily (sheets built on a layer's first forward pass) works.
        areas: the stack's area (or layer) names in order; ``config.areas`` picks among them.
        seed: seed of the cluster banks (:func:`~tdsnn.topo.pairs.cluster_bank`); None: the
            initial seed of the first generator given to :meth:`terms` (0 without one).
    """

    def __init__(
        self,
        config: TopoConfig,
        sheets: Mapping[str, Sheet],
        areas: Sequence[str],
        seed: int | None = None,
    ):
        self.config = config
        self.sheets = sheets
        self.seed = seed
        self.areas: tuple[str, ...] = config.select_areas(tuple(areas))
        # {area: weight}; a name that gets no loss is a ConfigError now, not at the first step
        self.area_weights = config.area_weight_map(config.configured_areas(tuple(areas)))

    @property
    def enabled(self) -> bool:
        """Whether any area gets a loss."""
        return bool(self.areas)

    @property
    def batched(self) -> bool:
        """Whether :meth:`terms` takes the batched cluster-bank path (all areas at once)."""
        cfg = self.config  # enabled: some area gets the loss, so the loss is on
        return self.enabled and cfg.pairs == "clusters" and cfg.feature != "weights"

    def _bank_seed(self, generator: torch.Generator | None) -> int:
        """:attr:`seed`, fixed at its first use: the initial seed of ``generator`` (0 without
        one) when it was not given."""
        if self.seed is None:
            self.seed = generator.initial_seed() if generator is not None else 0
        return self.seed

    def prepare(self, device: torch.device | str, generator: torch.Generator | None = None) -> None:
        """Build the cluster banks of the batched path on ``device`` now (start-up) rather than
        at the first step; needs the sheets. ``generator``: the one :meth:`terms` will get (it
        fixes an unset :attr:`seed` the same way). Nothing to do otherwise."""
        if self.batched:
            seed = self._bank_seed(generator)
            for area in self.areas:
                sheet = self.sheets[area]
                cluster_bank(sheet, self.config.cluster_window_mm(sheet), device, seed)

    @property
    def needs_membrane(self) -> bool:
        """Whether the terms need membrane traces (feature ``membrane``, or γ > 0)."""
        config = self.config
        pre = config.feature == "spikes" and config.as_input == "pre"
        return config.feature == "membrane" or pre or "membrane" in config.term_weights.terms

    @property
    def needs_weights(self) -> bool:
        """Whether the terms need the areas' incoming weights (feature ``weights``)."""
        return self.config.feature == "weights"

    def recording(self) -> dict[str, tuple[str, ...]]:
        """The ``record`` / ``record_membrane`` arguments of :class:`~tdsnn.areas.AreaStack`."""
        spikes = self.config.feature == "spikes"
        return {
            "record": self.areas if spikes else (),
            "record_membrane": self.areas if self.needs_membrane else (),
        }

    def terms(
        self,
        *,
        spikes: Mapping[str, Tensor],
        membrane: Mapping[str, Tensor] | None = None,
        weights: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        reference: bool = False,
    ) -> Terms:
        """Each area's terms for one forward pass.

        Activity on clusters (:attr:`batched`) takes every area at once on clusters picked from
        device-resident cluster banks; ``reference=True`` takes the per-area reference with
        fresh windows (the same loss and window distribution, other random clusters).

        Args:
            spikes: ``{area: [T, B, C, H, W] or [T, B, N]}`` output spikes.
            membrane: ``{area: traces shaped like spikes}`` (needed for :attr:`needs_membrane`).
            weights: ``{area: incoming weights [C, ...]}`` (needed for :attr:`needs_weights`).
            generator: ``torch.Generator`` of the cluster draws, on the features' device.
            reference: the per-area reference path.

        Returns:
            ``{area: {"total": weighted sum, "rate"?, "synchrony"?, "membrane"?, "weights"?}}``:
            the unweighted terms (logged) and their sum weighted by ``config.term_weights``.
        """
        membrane = membrane or {}
        weights = weights or {}
        if self.batched and not reference:
            return self._bank_terms(spikes, membrane, generator)
        return {
            area: _area_terms(
                self.config,
                self.sheets[area],
                spikes=spikes.get(area),
                v=membrane.get(area),
                weights=weights.get(area),
                generator=generator,
            )
            for area in self.areas
        }

    def _bank_terms(
        self,
        spikes: Mapping[str, Tensor],
        membrane: Mapping[str, Tensor],
        generator: torch.Generator | None,
    ) -> Terms:
        """The batched path: per area, ``num_clusters`` rows of its cluster bank picked with
        ``generator`` and subsampled to ``max_units`` on the features' device, then all areas
        in one :func:`~tdsnn.topo.losses.stc_loss` call; nothing is read back to the host."""
        config = self.config
        seed = self._bank_seed(generator)
        xs, vs, positions, clusters = {}, {}, {}, {}
        for area in self.areas:
            sheet = self.sheets[area]
            v = membrane.get(area)
            xs[area] = _area_features(config, sheet, spikes.get(area), v)
            if v is not None:
                vs[area] = v
            positions[area] = _positions(sheet, xs[area].device)
            window = config.cluster_window_mm(sheet)
            bank = cluster_bank(sheet, window, xs[area].device, seed)
            clusters[area] = bank.draw(config.num_clusters, config.max_units, generator)
        return stc_loss(xs, positions, clusters, v=vs, **_stc_options(config))

    def stack_terms(
        self, model, out, generator: torch.Generator | None = None, reference: bool = False
    ) -> Terms:
        """:meth:`terms` of an :class:`~tdsnn.areas.AreaStack` forward pass ``out``."""
        weights = {}
        if self.needs_weights:
            weights = {area: model.areas[area].output_weight for area in self.areas}
        return self.terms(
            spikes=out.spikes,
            membrane=out.membrane,
            weights=weights,
            generator=generator,
            reference=reference,
        )

    def loss(self, terms: Terms) -> Tensor | None:
        """Weighted sum (or, for ``area_reduction: mean``, mean) over areas of the areas' totals,
        each times its ``topo.area_weights`` entry (``None`` when no area has a loss)."""
        if not terms:
            return None
        total = sum(self.area_weights.get(area, 1.0) * t["total"] for area, t in terms.items())
        return total / len(terms) if self.config.area_reduction == "mean" else total

    def ramp(self, step: int, total_steps: int) -> float:
        """Factor on the loss at optimiser step ``step`` (0-based): 0 → 1 over ``warmup``."""
        warmup_steps = self.config.warmup * total_steps
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / warmup_steps)


# ----------------------------------------------------------------------------- one area


def _area_terms(
    config: TopoConfig,
    sheet: Sheet,
    *,
    spikes: Tensor | None,
    v: Tensor | None,
    weights: Tensor | None,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """One area's terms under ``config`` (the loss is on): the per-area path of
    :meth:`TopoObjective.terms`, clusters drawn fresh by
    :func:`~tdsnn.topo.pairs.sample_cluster_index`. ``spikes``, ``v``: ``[T, B, C, H, W]`` or
    ``[T, B, N]``; ``weights``: the incoming weights ``[C, ...]`` of the area's channels."""
    if config.feature == "weights":
        return _weight_terms(config, sheet, weights)
    x = _area_features(config, sheet, spikes, v)
    positions = _positions(sheet, x.device)
    options = {**_stc_options(config), "v": v}
    if config.pairs == "clusters":
        clusters = sample_cluster_index(
            sheet,
            config.num_clusters,
            window_mm=config.cluster_window_mm(sheet),
            max_units=config.max_units,
            generator=generator,
            device=x.device,
        )
        return stc_loss(x, positions, clusters, **options)
    fixed = _fixed_pairs(config, sheet)  # (radius_mm or None, connectivity, wrap)
    pairs = pair_plan(sheet, *fixed, x.device)
    weights = config.term_weights
    local_as = config.form == "local" and config.feature == "spikes"
    if local_as and config.metric != "correlation" and weights.alpha > 0:
        # AS with another metric: the rate term compares spike-count vectors with it (the
        # STC rate term is 1 - Pearson, i.e. the correlation metric); synchrony and membrane
        # terms, if weighted, stay STC's
        rate = as_loss(x, pair_set(sheet, *fixed, x.device), metric=config.metric)
        options["weights"] = dataclasses.replace(weights, alpha=0.0)
        rest = stc_loss(x, positions, pairs, **options)
        rest.pop("rate", None)
        return {**rest, "rate": rate, "total": weights.alpha * rate + rest["total"]}
    return stc_loss(x, positions, pairs, **options)


def _fixed_pairs(config: TopoConfig, sheet: Sheet) -> tuple[float | None, int, bool]:
    """The :func:`~tdsnn.topo.pairs.pair_set` arguments of ``config`` on ``sheet``: for
    ``pairs: radius`` every pair within its neighbourhood width × ``window_factor``, for
    ``grid-neighbours`` the lattice's ``connectivity`` neighbours (toroidal with ``wrap``)."""
    radius = sheet.neighbourhood_mm * config.window_factor if config.pairs == "radius" else None
    return radius, config.connectivity, config.wrap


def _stc_options(config: TopoConfig) -> dict:
    """The keyword arguments of :func:`~tdsnn.topo.losses.stc_loss` that ``config`` sets: its
    term weights, CCG window and form."""
    form = "alignment" if config.form == "alignment" else "local"
    return {"weights": config.term_weights, "window": config.ccg_window, "form": form}


def _positions(sheet: Sheet, device: torch.device) -> Tensor:
    """``[N, 2]`` mm positions on ``device`` (cached on the sheet)."""
    return sheet.cached(("positions", str(device)), lambda: sheet.positions.to(device))


def _area_features(
    config: TopoConfig, sheet: Sheet, spikes: Tensor | None, v: Tensor | None
) -> Tensor:
    """The ``[T, B, N]`` features the STC terms compare (spikes, or membrane for ``membrane``
    and for ``spikes`` read before the nonlinearity, ``as_input: pre``)."""
    x = spikes if config.feature == "spikes" and config.as_input != "pre" else v
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


def _weight_terms(config: TopoConfig, sheet: Sheet, weights: Tensor | None) -> dict[str, Tensor]:
    """``{"weights", "total"}`` of WS (local form on the channel grid's neighbours) or TopoLoss
    (``form: blur``) on the incoming weights ``[C, ...]`` of the area's channels."""
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
    return {"weights": value, "total": config.term_weights.alpha * value}
