"""Named topographic-loss presets and their frozen config (``--topo NAME`` on the command line).

=============  =====================================================================================
preset         meaning
=============  =====================================================================================
``stc``        TDSNN's recipe (after TDANN): spike rates + synchrony (γ=0), alignment form, M=10
               random square clusters per area per step, each spanning at least
               ``cluster_positions`` = 3 map positions (hypercolumns) per side (and at least
               the neighbourhood width × ``window_factor``; ≤ ``max_units`` = 200 units); all
               areas, their totals (times ``area_weights``) summed (``area_reduction: sum``).
               Weights α=β=0.1 per area, ramped in over the first half of training
               (``warmup``): of the weights measured on the default demo, the largest that keeps
               it above 90 % test accuracy (README "TDSNN's recipe"). TDSNN also swap-optimises
               the positions before training and freezes them: ``--layout swap``, not the
               default, since it cost accuracy and topography here (README). The paper's α=β=50
               belong to its ImageNet SResNet-18: on tdsnn's small stacks (mean over clusters)
               they make the topographic gradient 10²–10³× the task gradient and the network
               does not learn; ``--alpha 50 --beta 50 --topo-warmup 0`` reproduces them. The
               default before the recipe (areas averaged, clusters of one neighbourhood width,
               α=β=1, random positions) is ``configs/stc-mean.yaml``.
``stc-dense``  as ``stc`` but on every pair within radius = neighbourhood width × ``window_factor``
               (CSR list built once per sheet).
``ws``         Weight Similarity: distance ``metric`` (default ``correlation``) between the incoming
               weight rows of the area's channels, local form, 4-neighbours of the
               ``near_square(C)`` channel grid; last area only; α=1.
``as``         Activation Similarity: distance ``metric`` (default ``correlation`` = 1 − Pearson)
               between the units' spike-count vectors over the batch, local form, lattice
               neighbours of a ``tiled``/``grid`` sheet; last area only; α=1.
``tdann``      TDANN: alignment form on real-valued rates (the time-mean of the membrane /
               pre-spike trace ``v``, Pearson over the batch), clusters; α=0.25 (TDANN's weight).
``toploss``    TopoLoss: ``1 − cos(W, blur(W))`` on the channel grid of incoming weights, bilinear
               down/up factor ``toploss_factor`` (3); all areas; α=1.
``none``       no topographic loss.
=============  =====================================================================================

Fields: ``feature`` is what the units are compared on (``spikes``: ``[T, B, N]`` spike trains;
``membrane``: real-valued traces ``v`` whose time-mean plays the rate; ``weights``: incoming
weight rows), ``form`` how (``alignment``, ``local``, or ``blur`` = TopoLoss, weights only),
``pairs`` over which pairs. ``alpha``, ``beta``, ``gamma`` weight the rate, synchrony and membrane
terms (for weight presets ``alpha`` is the single weight). ``areas`` lists the areas that get the
loss: ``None`` = every area of the stack, ``"last"`` names the last one. ``metric`` is the distance
of ``ws`` and ``as`` (the local form on a pair list), named as in ``scipy.spatial.distance``:
``euclidean`` ``‖a − b‖₂``, ``sqeuclidean`` ``‖a − b‖²``, ``cosine`` ``1 − cos``, ``correlation``
``1 − Pearson r``; the other presets ignore it. ``configs/{ws,as}-{mnist,cifar10}.yaml`` set up
the WS / AS runs of Truong & Hasson (arXiv 2508.00043) on a spiking stack.

Configs written before ``metric`` existed hold ``ws_kind`` (``euclidean`` meant the squared
distance); :meth:`TopoConfig.from_dict` reads it as ``metric`` with a FutureWarning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from functools import cached_property

from tdsnn.choices import SIMILARITY_METRICS as METRICS
from tdsnn.errors import ConfigError
from tdsnn.fields import check_fields, option

__all__ = [
    "TOPO_PRESETS",
    "PAIR_KINDS",
    "AS_INPUTS",
    "FEATURES",
    "CONFIG_FORMS",
    "AREA_REDUCTIONS",
    "STC_TERMS",
    "TermWeights",
    "TopoConfig",
    "parse_area_weights",
]

TOPO_PRESETS = ("stc", "stc-dense", "ws", "as", "tdann", "toploss", "none")
PAIR_KINDS = ("clusters", "radius", "grid-neighbours")
FEATURES = ("spikes", "membrane", "weights")
AS_INPUTS = ("pre", "post")
CONFIG_FORMS = ("alignment", "local", "blur")
AREA_REDUCTIONS = ("mean", "sum")
STC_TERMS = ("rate", "synchrony", "membrane")
# the retired ``ws_kind`` of old configs and checkpoints -> ``metric`` (``euclidean`` was squared)
_WS_KIND_METRICS = {"euclidean": "sqeuclidean", "cosine": "cosine"}

# the fields' defaults are ``stc`` (TDSNN's recipe); the other losses average their areas
_AVERAGED = {"area_reduction": "mean", "cluster_positions": 0}
_PRESET_VALUES: dict[str, dict] = {
    "stc": {},
    "stc-dense": {"pairs": "radius"},
    "ws": {
        **_AVERAGED,
        "alpha": 1.0,
        "beta": 0.0,
        "feature": "weights",
        "form": "local",
        "pairs": "grid-neighbours",
        "areas": ("last",),
    },
    "as": {
        **_AVERAGED,
        "alpha": 1.0,
        "beta": 0.0,
        "form": "local",
        "pairs": "grid-neighbours",
        "areas": ("last",),
    },
    "tdann": {**_AVERAGED, "alpha": 0.25, "beta": 0.0, "feature": "membrane"},
    "toploss": {**_AVERAGED, "alpha": 1.0, "beta": 0.0, "feature": "weights", "form": "blur"},
    "none": {**_AVERAGED, "alpha": 0.0, "beta": 0.0, "gamma": 0.0},
}


@dataclass(frozen=True)
class TermWeights:
    """Weights of the STC terms, ``α·L_rate + β·L_sync + γ·L_membrane`` (DESIGN §8): the one
    place they are checked and paired with their terms.

    :class:`TopoConfig` builds its :attr:`~TopoConfig.term_weights` from ``topo.alpha``,
    ``topo.beta`` and ``topo.gamma`` (``section="topo"`` names them so in errors), and
    :func:`tdsnn.topo.losses.stc_loss` takes one. A term of weight 0 is not computed.

    Attributes:
        alpha: weight of the rate term, >= 0.
        beta: weight of the synchrony (r_CCG) term, >= 0.
        gamma: weight of the membrane term, >= 0.
    """

    alpha: float = option(1.0, low=0, high=1e6)
    beta: float = option(1.0, low=0, high=1e6)
    gamma: float = option(0.0, low=0, high=1e6)
    section: InitVar[str] = ""

    def __post_init__(self, section: str) -> None:
        check_fields(self, section)

    @cached_property
    def terms(self) -> dict[str, float]:
        """``{term: weight}`` of the terms of weight > 0, in :data:`STC_TERMS` order."""
        weights = zip(STC_TERMS, (self.alpha, self.beta, self.gamma), strict=True)
        return {term: weight for term, weight in weights if weight > 0}


@dataclass(frozen=True)
class TopoConfig:
    """Frozen topographic-loss configuration; build it with :meth:`preset` or :meth:`from_dict`.

    Attributes:
        name: one of :data:`TOPO_PRESETS`, the preset the other fields started from (the field is
            ``name`` because ``TopoConfig.preset(...)`` is the constructor).
        alpha, beta, gamma: weights of the rate, synchrony and membrane terms (>= 0), checked
            and held as :attr:`term_weights` (a :class:`TermWeights`, built once).
        pairs: ``clusters``, ``radius`` or ``grid-neighbours``.
        num_clusters: clusters per area per step (``clusters``).
        window_factor: cluster window side / radius = area neighbourhood width × this.
        max_units: at most this many units per cluster (random subsample).
        ccg_window: CCG lag window ``W`` (``None`` = ``⌊T/2⌋``).
        feature: ``spikes``, ``membrane`` or ``weights``.
        form: ``alignment``, ``local`` or ``blur`` (TopoLoss; weights only).
        areas: area names that get the loss, ``None`` = all; ``"last"`` = the stack's last area.
        metric: distance of ``ws`` (weight rows) and ``as`` (spike-count vectors) in the local
            form on a pair list: ``euclidean``, ``sqeuclidean``, ``cosine`` or ``correlation``
            (as in ``scipy.spatial.distance``); ignored by the other presets.
        connectivity: 4 or 8 grid neighbours; ``wrap``: toroidal grid.
        toploss_factor: TopoLoss bilinear down/up factor.
        warmup: fraction of the training steps over which the loss weight ramps linearly from 0
            to its full value (0 = full weight from the first step; TopoLoss-style warm-up).
            The default 0.5 lets the task shape the features before topography does.
        area_weights: ``{area: weight >= 0}`` on each area's total; areas not named weigh 1
            (``None`` = 1 each). Given as a mapping or as ``"V1=1,V4=0.5"``.
        area_reduction: how the weighted area totals combine: ``sum`` (TDSNN's recipe, the
            ``stc`` and ``stc-dense`` presets: adding an area leaves the others' weights alone)
            or ``mean`` over areas (the other presets; what run configs written before this
            field computed, :meth:`tdsnn.config.RunConfig.from_saved`).
        as_input: what the activity-based terms (``feature: spikes``, e.g. AS) read: ``post``,
            the units' output (spikes; ReLU activations), or ``pre``, the input to the units'
            nonlinearity (the membrane potential; the ReLU's pre-activation, which Truong &
            Hasson's AS reads). ``None``: the architecture's (:meth:`RunConfig` makes it
            ``pre`` for ``model.arch: wsas-*`` and ``post`` for the area stacks).
        cluster_positions: a cluster window spans at least this many map positions per side
            (hypercolumns: ``side_mm / max(H, W)`` each), whatever the neighbourhood width;
            0 = the neighbourhood width alone (the other presets); ``stc`` uses 3.
    """

    name: str = option("stc", choices=TOPO_PRESETS)
    alpha: float = 0.1  # alpha, beta, gamma: range declared and checked by TermWeights
    beta: float = 0.1
    gamma: float = 0.0
    pairs: str = option("clusters", choices=PAIR_KINDS)
    num_clusters: int = option(10, low=1, high=10_000)
    window_factor: float = option(1.0, low=0, low_open=True, high=100)
    max_units: int = option(200, low=2, high=100_000)
    ccg_window: int | None = option(None, low=0, high=10_000)
    feature: str = option("spikes", choices=FEATURES)
    form: str = option("alignment", choices=CONFIG_FORMS)
    areas: tuple[str, ...] | None = None
    metric: str = option("correlation", choices=METRICS)
    connectivity: int = option(4, choices=(4, 8))
    wrap: bool = False
    toploss_factor: float = option(3.0, low=1, high=100)
    warmup: float = option(0.5, low=0, high=1)
    area_weights: tuple[tuple[str, float], ...] | None = None
    area_reduction: str = option("sum", choices=AREA_REDUCTIONS)
    cluster_positions: int = option(3, low=0, high=1000)
    as_input: str | None = option(None, choices=AS_INPUTS)

    def __post_init__(self) -> None:
        weights = TermWeights(self.alpha, self.beta, self.gamma, section="topo")
        object.__setattr__(self, "term_weights", weights)
        if isinstance(self.areas, str):
            object.__setattr__(self, "areas", (self.areas,))
        if self.area_weights is not None:
            object.__setattr__(self, "area_weights", parse_area_weights(self.area_weights))
        check_fields(self, "topo")
        if self.area_weights is not None:  # the generic coercion leaves the weights as text
            object.__setattr__(self, "area_weights", parse_area_weights(self.area_weights))
        if self.areas is not None and len(self.areas) == 0:
            raise ConfigError("topo.areas must name at least one area (or be null = all), got []")
        if self.form == "blur" and self.feature != "weights":
            raise ConfigError("topo.form 'blur' (TopoLoss) works on topo.feature 'weights' only")
        if self.feature == "weights":
            if self.form == "alignment":
                raise ConfigError(
                    "topo.feature 'weights' takes topo.form 'local' (WS) or 'blur' (TopoLoss), "
                    "not 'alignment'"
                )
            if self.form == "local" and self.pairs != "grid-neighbours":
                raise ConfigError(
                    "topo.feature 'weights' with topo.form 'local' needs topo.pairs "
                    f"'grid-neighbours', got {self.pairs!r}"
                )

    # ------------------------------------------------------------------ construction

    @classmethod
    def preset(cls, name: str, **overrides) -> TopoConfig:
        """Config of preset ``name`` with ``overrides`` applied (unknown keys: ConfigError)."""
        if name not in TOPO_PRESETS:
            raise ConfigError(
                f"unknown topo preset (topo.name) {name!r}; valid presets: {list(TOPO_PRESETS)}"
            )
        _check_keys(overrides)
        if overrides.pop("name", name) != name:
            raise ConfigError("TopoConfig.preset: give the preset name once (not also name=...)")
        values = {**_PRESET_VALUES[name], **overrides}
        return cls(name=name, **values)

    @classmethod
    def from_dict(cls, data: dict) -> TopoConfig:
        """Inverse of :meth:`to_dict`: preset ``data["name"]`` (default ``stc``) + the other keys.

        Unknown keys are a ConfigError listing the valid ones. The retired key ``ws_kind`` (of
        configs and checkpoints written before ``metric``) is read here and only here, with a
        FutureWarning: see :func:`_read_ws_kind`.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"topo config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        legacy = "ws_kind" in data
        ws_kind = data.pop("ws_kind", None)
        _check_keys(data)
        if legacy and "metric" in data:
            raise ConfigError(
                "topo.ws_kind is deprecated and replaced by topo.metric; give only topo.metric"
            )
        name = data.pop("name", "stc")
        config = cls.preset(name, **data)
        return _read_ws_kind(config, ws_kind) if legacy else config

    def to_dict(self) -> dict:
        """Plain dict (YAML/JSON-safe: lists, not tuples)."""
        out = dataclasses.asdict(self)
        if out["areas"] is not None:
            out["areas"] = list(out["areas"])
        if self.area_weights is not None:
            out["area_weights"] = dict(self.area_weights)
        return out

    # ------------------------------------------------------------------ queries

    @property
    def enabled(self) -> bool:
        """Whether this config adds any loss at all."""
        return self.name != "none" and bool(self.term_weights.terms)

    def spiking_terms(self) -> list[str]:
        """The enabled parts of this loss that only spiking units have, each with what turns
        it off (empty for a loss that rate-coded or real-valued units can take too)."""
        if not self.enabled:
            return []
        terms = []
        if self.feature == "spikes" and self.beta > 0:
            terms.append(f"the r_CCG synchrony term (topo.beta = {self.beta:g}; pass --beta 0)")
        if self.gamma > 0:
            terms.append(f"the membrane term (topo.gamma = {self.gamma:g}; pass --gamma 0)")
        if self.feature == "membrane":
            terms.append("membrane traces (topo.feature 'membrane'; use --topo stc --beta 0)")
        return terms

    def select_areas(self, stack: Sequence[str]) -> tuple[str, ...]:
        """Areas of ``stack`` (ordered names) that get the loss, spelled as in ``stack``: the
        :meth:`configured_areas`, or none when the loss is off."""
        return self.configured_areas(stack) if self.enabled else ()

    def configured_areas(self, stack: Sequence[str]) -> tuple[str, ...]:
        """Areas of ``stack`` that ``areas`` names, whatever the weights: a loss at weight 0
        (a control) has the areas, and so the sheet layouts, of the loss it controls for.

        Names match case-insensitively; ``"last"`` is the stack's last area. A name not in the
        stack is a ConfigError listing the stack.
        """
        stack = tuple(stack)
        if self.areas is None:
            return stack
        lower = {a.lower(): a for a in stack}
        chosen: list[str] = []
        for name in self.areas:
            if name.lower() == "last":
                if not stack:
                    raise ConfigError("topo.areas: 'last' needs a non-empty area stack")
                area = stack[-1]
            elif name.lower() in lower:
                area = lower[name.lower()]
            else:
                raise ConfigError(
                    f"topo.areas names {name!r}, which is not in the area stack; "
                    f"valid: {list(stack)} or 'last'"
                )
            if area not in chosen:
                chosen.append(area)
        return tuple(a for a in stack if a in chosen)

    def area_weight_map(self, areas: Sequence[str]) -> dict[str, float]:
        """``{area: weight}`` for ``areas`` (the areas that get the loss; 1 where not named).

        A named area that is not in ``areas`` is a ConfigError listing them.
        """
        lower = {a.lower(): a for a in areas}
        weights = dict.fromkeys(areas, 1.0)
        for name, weight in self.area_weights or ():
            if name.lower() not in lower:
                raise ConfigError(
                    f"topo.area_weights names area {name!r}, which gets no topographic loss; "
                    f"valid: {list(areas)}"
                )
            weights[lower[name.lower()]] = weight
        return weights

    def cluster_window_mm(self, sheet) -> float:
        """Side (mm) of the cluster windows on ``sheet`` (a :class:`~tdsnn.sheet.Sheet`).

        ``max(neighbourhood_mm × window_factor, cluster_positions × side_mm / max(H, W))``: at
        least ``cluster_positions`` map positions (hypercolumns) per side, so that a cluster
        holds units of several positions and the rate term cannot be met by making the
        channels of one position co-vary.
        """
        _, h, w = sheet.shape
        hypercolumn = sheet.side_mm / max(h, w)
        return max(
            sheet.neighbourhood_mm * self.window_factor, self.cluster_positions * hypercolumn
        )

    def sheet_layout(self, shape: tuple[int, int, int]) -> str:
        """Sheet layout this loss expects for an area of output ``shape`` (C, H, W).

        Lattice-neighbour losses (``as``) need ``tiled`` (``grid`` for 1×1 maps); weight losses
        (``ws``, ``toploss``) shape the ``near_square(C)`` channel grid, which is the tile of a
        ``tiled`` sheet, so they get ``tiled``/``grid`` too (positions then show the map they
        make). Everything else uses the default ``retinotopic`` sheet.
        """
        if self.feature == "weights" or self.pairs == "grid-neighbours":
            return "grid" if shape[1] * shape[2] == 1 else "tiled"
        return "retinotopic"


def parse_area_weights(value) -> tuple[tuple[str, float], ...]:
    """``topo.area_weights`` as ``((area, weight), ...)``: from a mapping, pairs, or the command
    line's ``"V1=1,V4=0.5"``. A weight must be a finite number >= 0 (else a ConfigError)."""
    if isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",")):
            name, sep, weight = part.partition("=")
            if not part or not sep or not name.strip():
                raise ConfigError(f"topo.area_weights must look like V1=1,V4=0.5, got {value!r}")
            items.append((name.strip(), weight.strip()))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        try:
            items = [(name, weight) for name, weight in value]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"topo.area_weights must be a mapping of area to weight, got {value!r}"
            ) from exc
    out = []
    for name, weight in items:
        try:
            number = float(weight)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"topo.area_weights[{name}] must be a number, got {weight!r}"
            ) from exc
        if not (number >= 0 and math.isfinite(number)) or isinstance(weight, bool):
            raise ConfigError(f"topo.area_weights[{name}] must be a number >= 0, got {weight!r}")
        out.append((str(name), number))
    names = [name.lower() for name, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"topo.area_weights names an area twice: {value!r}")
    return tuple(out)


def _check_keys(data: dict) -> None:
    valid = [f.name for f in dataclasses.fields(TopoConfig)]
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        raise ConfigError(f"unknown topo config key(s) {unknown}; valid keys: {valid}")


def _read_ws_kind(config: TopoConfig, ws_kind) -> TopoConfig:
    """``config`` with the retired ``topo.ws_kind`` applied.

    ``ws_kind`` only ever shaped the WS loss (feature ``weights``, form ``local``): there
    ``euclidean`` (the squared distance) becomes metric ``sqeuclidean`` and ``cosine`` stays
    ``cosine``, with one FutureWarning saying so. Every other config ignored it (``as`` used
    1 − Pearson), so it is dropped without a word (every config written before ``metric``
    existed holds it) and the config computes the loss it computed before.
    """
    if not isinstance(ws_kind, str) or ws_kind not in _WS_KIND_METRICS:
        raise ConfigError(
            f"topo.ws_kind (deprecated, use topo.metric) must be one of "
            f"{list(_WS_KIND_METRICS)}, got {ws_kind!r}"
        )
    if config.feature == "weights" and config.form == "local":
        metric = _WS_KIND_METRICS[ws_kind]
        why = " ('euclidean' there meant the squared distance)" if ws_kind == "euclidean" else ""
        message = f"ws_kind {ws_kind!r} was read as metric {metric!r}{why}"
        config = dataclasses.replace(config, metric=metric)
    else:
        return config
    warnings.warn(
        f"topo.ws_kind is deprecated, use topo.metric: {message}", FutureWarning, stacklevel=3
    )
    return config
