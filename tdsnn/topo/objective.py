"""The topographic part of a training objective, for an area stack or hooked layers.

:class:`TopoObjective` turns a :class:`~tdsnn.topo.TopoConfig` and the areas' sheets into:

- what the forward pass must return (:meth:`~TopoObjective.recording`: spikes, membrane),
- each area's terms for one pass (:meth:`~TopoObjective.terms`: for activity on clusters all
  areas at once on clusters picked from device-resident banks, :func:`cluster_terms`; else,
  and with ``reference=True``, per area via :func:`topo_loss`),
- their weighted sum over areas (:meth:`~TopoObjective.loss`; ``topo.area_weights``, 1 each by
  default; the mean instead for ``topo.area_reduction: mean``, what old run configs computed),
  the value added to the task loss,
- the warm-up factor on it (:meth:`~TopoObjective.ramp`).

The training loop, ``benchmarks/train_step.py`` and :class:`tdsnn.interop.TopoRegularizer` all
compute the topographic loss through it::

    objective = TopoObjective(config.topo, sheets, model.area_names)
    out = model(images, **objective.recording())
    terms = objective.stack_terms(model, out, generator)   # {area: {"total", "rate", ...}}
    loss = task_loss + objective.ramp(step, total_steps) * objective.loss(terms)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tdsnn.sheet import Sheet
from tdsnn.topo.apply import cluster_bank, cluster_terms, topo_loss
from tdsnn.topo.presets import TopoConfig

__all__ = ["TopoObjective"]

Terms = dict[str, dict[str, Tensor]]


class TopoObjective:
    """Topographic loss of a set of areas (or layers) under one config.

    Args:
        config: the topographic loss.
        sheets: ``{area: Sheet}``; read when terms are computed, so a mapping that is filled
            lazily (sheets built on a layer's first forward pass) works.
        areas: the stack's area (or layer) names in order; ``config.areas`` picks among them.
        seed: seed of the cluster banks (:func:`~tdsnn.topo.apply.cluster_bank`); None: the
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
        """Whether :meth:`terms` takes the batched cluster-bank path (:func:`cluster_terms`)."""
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
                cluster_bank(self.config, self.sheets[area], device, seed)

    @property
    def needs_membrane(self) -> bool:
        return self.config.feature == "membrane" or self.config.gamma > 0

    @property
    def needs_weights(self) -> bool:
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

        Activity on clusters (:attr:`batched`) takes :func:`cluster_terms`, every area at once
        on device-resident cluster banks; ``reference=True`` takes the per-area reference,
        :func:`topo_loss` with fresh windows (the same loss and window distribution, other
        random clusters).

        Args:
            spikes: ``{area: [T, B, C, H, W] or [T, B, N]}`` output spikes.
            membrane: ``{area: traces shaped like spikes}`` (needed for :attr:`needs_membrane`).
            weights: ``{area: incoming weights [C, ...]}`` (needed for :attr:`needs_weights`).
            generator: ``torch.Generator`` of the cluster draws, on the features' device.
            reference: the per-area reference path.

        Returns:
            ``{area: {"total": weighted sum, "rate"?, "synchrony"?, "membrane"?, "weights"?}}``.
        """
        membrane = membrane or {}
        weights = weights or {}
        if self.batched and not reference:
            sheets = {area: self.sheets[area] for area in self.areas}
            return cluster_terms(
                self.config,
                sheets,
                spikes=spikes,
                membrane=membrane,
                generator=generator,
                seed=self._bank_seed(generator),
            )
        return {
            area: topo_loss(
                self.config,
                self.sheets[area],
                spikes=spikes.get(area),
                v=membrane.get(area),
                weights=weights.get(area),
                generator=generator,
            )
            for area in self.areas
        }

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
