"""Topographic losses for networks built with spikingjelly or snntorch: hooks, sheets, STC.

:class:`TopoRegularizer` attaches forward hooks to the spiking layers of a user's own
``nn.Module``, records what they return during the forward pass, gives every recorded layer a
cortical sheet (:func:`tdsnn.sheet.build_sheet`) and turns the recording into the topographic loss
of a :class:`~tdsnn.topo.TopoConfig` (default preset ``stc``, DESIGN §8) that the user adds to the
task loss in their own training loop. The recorded tensors keep their autograd graph, so the loss
backpropagates into the network.

spikingjelly 2.0, multi-step (``step_mode='m'``); one call of each neuron sees the whole sequence::

    from spikingjelly.activation_based import functional
    from tdsnn.interop import TopoRegularizer

    topo = TopoRegularizer(net, preset="stc", alpha=1.0, beta=1.0)
    for x, y in loader:                     # x: [T, B, C, H, W]
        out = net(x)                        # hooks record every LIFNode's spikes [T, B, C, H, W]
        loss = F.cross_entropy(out.mean(0), y) + topo.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(net)           # the user's usual reset
    topo.close()                            # or use ``with TopoRegularizer(...) as topo:``

snntorch 1.0 (single-step ``Leaky``); the user's ``forward`` loops over T, each call is recorded
and the steps are stacked to ``[T, B, ...]`` when the loss is computed::

    class Net(nn.Module):
        def forward(self, x):               # x: [T, B, F]
            mem1, mem2, out = self.lif1.reset_mem(), self.lif2.reset_mem(), []
            for t in range(x.shape[0]):
                spk1, mem1 = self.lif1(self.fc1(x[t]), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                out.append(spk2)
            return torch.stack(out)         # [T, B, classes]

    topo = TopoRegularizer(net, preset="stc", alpha=1.0, beta=1.0)
    for x, y in loader:
        out = net(x)
        loss = F.cross_entropy(out.sum(0), y) + topo.loss()
        ...

Which layers. ``layers=None`` (or ``"all"``) records every spiking neuron layer found in
``net.named_modules()`` order: spikingjelly ``BaseNode`` subclasses (``LIFNode``, ``IFNode``, …),
snntorch ``SpikingNeuron`` subclasses (``Leaky``, ``Synaptic``, …) and tdsnn's own
:class:`~tdsnn.neurons.LIF`, recognised by :mod:`tdsnn.peers.detect` (by class name and
module, so neither peer is imported). ``layers=["3", "encoder.lif1"]`` names modules as in
``net.named_modules()``; any module may be named. The config's ``areas`` then picks among these
layers (``"last"`` for the ``as`` preset). Weight-based presets (``ws``, ``toploss``) are not
supported: they need each layer's incoming weights, not its activity.

One call or one step. A layer's call is one whole sequence (multi-step) for spikingjelly modules
with ``step_mode='m'``, snntorch ``StateLeaky``, tdsnn ``LIF`` and any other module named in
``layers``; it is one time step (single-step) for spikingjelly ``step_mode='s'`` and every other
snntorch neuron. Multi-step outputs must be ``[T, B, N]`` or ``[T, B, C, H, W]``, single-step
outputs ``[B, N]`` or ``[B, C, H, W]``; anything else is a :class:`~tdsnn.errors.ConfigError`.
Call :meth:`TopoRegularizer.loss` (or :meth:`TopoRegularizer.reset`) once per forward pass:
single-step records keep stacking until then, and a multi-step layer that ran twice is an error.
With ``train_only=True`` (default) nothing is recorded while the hooked module is in eval mode,
so validation passes under ``net.eval()`` leave the record alone.

Membrane. A module that returns a tuple contributes ``output[0]`` as spikes and ``output[-1]`` as
membrane (snntorch ``(spk, mem)`` with ``init_hidden=False`` or ``output=True``;
``Synaptic``'s ``(spk, syn, mem)``; tdsnn ``LIF(..., return_membrane=True)``). snntorch's ``mem``
with the default ``reset_delay=True`` is the potential the spike was computed from (H, before the
reset, which snntorch applies at the next step); with ``reset_delay=False`` it is after the reset.
Only returned tensors are recorded, never snntorch's ``mem`` buffer (``init_hidden=True`` without
``output=True`` gives no membrane). spikingjelly neurons return spikes only: their membrane is
recorded when the neuron was built with ``store_v_seq=True`` (``v_seq [T, B, ...]`` after a
multi-step call, ``v`` after a single step), and it is V **after** the reset, not the charged
potential H of DESIGN §8. The membrane is needed for ``gamma > 0`` and the ``tdann`` preset.

Sheets. The first recorded call of a layer fixes its unit shape ``(C, H, W)`` (a ``[T, B, N]``
output is ``(N, 1, 1)``) and builds its sheet: side ``sheet_mm`` (default 10 mm), neighbourhood
width ``neighbourhood_mm`` (default: 2 mm on a 10 mm sheet, i.e. ``0.2·side``, widened for small
layers to ``side·sqrt(32/N)`` (at most ``side``) so a cluster window holds about 32 units on
average), layout ``layout`` (default ``config.sheet_layout(shape)``: ``retinotopic`` for STC),
seed ``seed + i`` for the ``i``-th layer. Sheets stay fixed afterwards; :attr:`sheets` exposes
them and :meth:`state_dict` / :meth:`load_state_dict` checkpoint them with the cluster generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from tdsnn.errors import CheckpointError, ConfigError, check_state_version
from tdsnn.peers.detect import is_multistep, spikes_and_membrane, spiking_layers
from tdsnn.sheet import LAYOUTS, Sheet, build_sheet
from tdsnn.topo.objective import TopoObjective
from tdsnn.topo_config import TopoConfig

__all__ = ["TopoRegularizer", "DEFAULT_SHEET_MM"]

DEFAULT_SHEET_MM = 10.0
_DEFAULT_NEIGHBOURHOOD_FRACTION = 0.2
_UNITS_PER_WINDOW = 32
STATE_VERSION = 1


# ----------------------------------------------------------------------------- records


@dataclass
class _Record:
    """What the hooks saw of one layer since the last :meth:`TopoRegularizer.loss`."""

    name: str
    index: int
    multistep: bool
    kind: str  # class name, for messages
    spikes: list[Tensor] = field(default_factory=list)
    v: list[Tensor | None] = field(default_factory=list)

    def clear(self) -> None:
        self.spikes.clear()
        self.v.clear()

    def describe(self) -> str:
        return f"layer {self.name!r} ({self.kind}, {'multi' if self.multistep else 'single'}-step)"

    def stacked(self) -> tuple[Tensor, Tensor | None]:
        """``(spikes, membrane or None)`` of the pass: a multi-step layer's one call, or the
        single-step calls stacked along a new time axis ``[T, B, ...]``."""
        if self.multistep:
            if len(self.spikes) > 1:
                raise ConfigError(
                    f"{self.describe()} ran {len(self.spikes)} times since the last loss(); call "
                    "loss() (or reset()) once per forward pass"
                )
            return self.spikes[0], self.v[0]
        spikes = torch.stack(self.spikes)  # [T, B, ...]
        v = None if any(v is None for v in self.v) else torch.stack(self.v)
        return spikes, v


def _unit_shape(x: Tensor, multistep: bool) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of one recorded output (``(N, 1, 1)`` for ``N`` features), None if unsupported.

    ``x`` is ``[T, B, ...]`` (multi-step) or ``[B, ...]`` (single-step).
    """
    dims = tuple(int(d) for d in x.shape[2 if multistep else 1 :])
    if len(dims) == 1:
        return (dims[0], 1, 1)
    if len(dims) == 3:
        return dims
    return None


# ----------------------------------------------------------------------------- layers


def _select_layers(net: nn.Module, layers) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers to record, in ``net.named_modules()`` order: every
    spiking layer for ``layers`` None or ``"all"``, else the modules named."""
    found = spiking_layers(net)
    if layers is None or layers == "all":
        if not found:
            raise ConfigError(
                "TopoRegularizer: no spiking layers found in net (looked for spikingjelly "
                "BaseNode, snntorch SpikingNeuron and tdsnn LIF modules); name the layers to "
                "record with layers=[...]"
            )
        chosen = found
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"layers must be None, 'all' or a non-empty list of module names, got {layers!r}"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"layers names a module twice: {names!r}")
        every = dict(net.named_modules())
        missing = [n for n in names if n not in every]
        if missing:
            raise ConfigError(
                f"TopoRegularizer: layer(s) {missing} not found in net; spiking layers "
                f"available: {list(found)}"
            )
        wanted = set(names)
        chosen = {n: m for n, m in every.items() if n in wanted}  # net order
    return chosen


def _per_layer_mm(value, what: str, candidates, modules) -> dict[str, float]:
    """``{layer: mm}`` for the recorded ``modules``; mapping keys must be ``candidates``."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(candidates))
        if unknown:
            raise ConfigError(
                f"{what} names layer(s) {unknown} that are not among the layers {list(candidates)}"
            )
        out = {n: value[n] for n in value if n in modules}
        if what == "sheet_mm":
            out = {n: out.get(n, DEFAULT_SHEET_MM) for n in modules}
    else:
        out = {n: value for n in modules}
    for name, mm in out.items():
        number = isinstance(mm, (int, float)) and not isinstance(mm, bool)
        if not (number and mm > 0 and math.isfinite(mm)):
            raise ConfigError(
                f"{what} of layer {name!r} must be a number > 0 (mm) or a mapping "
                f"{{layer: mm}}, got {mm!r}"
            )
    return {name: float(mm) for name, mm in out.items()}


# ----------------------------------------------------------------------------- regularizer


class TopoRegularizer:
    """Record a network's spiking layers with forward hooks and compute their topographic loss.

    Args:
        net: the user's network (spikingjelly, snntorch, tdsnn, or a mix).
        preset: topographic preset name (:data:`tdsnn.topo.TOPO_PRESETS`), default ``"stc"``.
        config: a ready :class:`~tdsnn.topo.TopoConfig` instead of ``preset`` + ``overrides``.
        layers: ``None`` / ``"all"``: every recognised spiking layer (see the module docstring);
            or module names as in ``net.named_modules()``.
        sheet_mm: sheet side (mm), one value for all layers or ``{layer name: side}`` (missing
            names get :data:`DEFAULT_SHEET_MM`).
        neighbourhood_mm: neighbourhood width (mm), one value or ``{layer name: width}``; default
            ``max(0.2·side, side·sqrt(32/N))`` capped at ``side`` for a layer of ``N`` units.
        layout: sheet layout for all layers (:data:`tdsnn.sheet.LAYOUTS`); default
            ``config.sheet_layout(shape)``.
        seed: seeds the sheet of the ``i``-th layer with ``seed + i`` and the cluster generator
            with ``seed``.
        train_only: record only while the hooked module is in training mode.
        **overrides: :class:`TopoConfig` fields applied to ``preset``, e.g. ``alpha=1.0``.

    Attributes:
        config: the :class:`TopoConfig` in use.
        layers: names of the recorded layers, in ``named_modules()`` order.
    """

    def __init__(
        self,
        net: nn.Module,
        preset: str = "stc",
        *,
        config: TopoConfig | None = None,
        layers: Sequence[str] | str | None = None,
        sheet_mm: float | Mapping[str, float] = DEFAULT_SHEET_MM,
        neighbourhood_mm: float | Mapping[str, float] | None = None,
        layout: str | None = None,
        seed: int = 0,
        train_only: bool = True,
        **overrides,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise ConfigError(f"TopoRegularizer: net must be a torch.nn.Module, got {type(net)}")
        if config is not None:
            if not isinstance(config, TopoConfig):
                raise ConfigError(
                    f"TopoRegularizer: config must be a TopoConfig, got {type(config).__name__}"
                )
            if overrides or preset != "stc":
                raise ConfigError(
                    "TopoRegularizer: give either config=TopoConfig(...) or preset=NAME with "
                    f"overrides, not both (got preset={preset!r}, overrides {sorted(overrides)})"
                )
        else:
            config = TopoConfig.preset(preset, **overrides)
        if config.feature == "weights":
            raise ConfigError(
                f"TopoRegularizer: preset {config.name!r} compares incoming weights, but "
                "TopoRegularizer records activity (spikes, membrane); use stc, stc-dense, as or "
                "tdann"
            )
        if layout is not None and layout not in LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)} (or None)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.config = config
        self.train_only = bool(train_only)
        self._layout = layout
        self._seed = seed
        candidates = _select_layers(net, layers)
        self._sheets: dict[str, Sheet] = {}  # built on each layer's first forward pass
        self._objective = TopoObjective(config, self._sheets, tuple(candidates))
        modules = {name: candidates[name] for name in self._objective.areas}
        self._sheet_mm = _per_layer_mm(sheet_mm, "sheet_mm", candidates, modules)
        self._nbhd_mm = (
            None
            if neighbourhood_mm is None
            else _per_layer_mm(neighbourhood_mm, "neighbourhood_mm", candidates, modules)
        )
        self.layers: tuple[str, ...] = tuple(modules)
        self._records = {
            name: _Record(name, i, is_multistep(m), type(m).__name__)
            for i, (name, m) in enumerate(modules.items())
        }
        self._generator = torch.Generator().manual_seed(seed)
        self._handles = [
            m.register_forward_hook(partial(self._on_forward, self._records[name]))
            for name, m in modules.items()
        ]

    # ------------------------------------------------------------------ construction helpers

    # ------------------------------------------------------------------ hooks

    def _on_forward(self, record: _Record, module: nn.Module, args, output) -> None:
        if self.train_only and not module.training:
            return
        spikes, v = spikes_and_membrane(module, output, record.multistep)
        if not isinstance(spikes, Tensor):
            raise ConfigError(
                f"{record.describe()} returned {type(spikes).__name__}, expected a spike tensor "
                "(or a tuple whose first element is one)"
            )
        shape = _unit_shape(spikes, record.multistep)
        if shape is None:
            want = "[T, B, N] or [T, B, C, H, W]" if record.multistep else "[B, N] or [B, C, H, W]"
            raise ConfigError(
                f"{record.describe()} returned spikes of shape {tuple(spikes.shape)}, expected "
                f"{want}; name layers whose output is spikes in one of these shapes"
            )
        self._sheet_for(record, shape)
        if record.spikes and not record.multistep:
            prev = record.spikes[-1].shape
            if prev != spikes.shape:
                raise ConfigError(
                    f"{record.describe()}: step output {tuple(spikes.shape)} differs from the "
                    f"previous step's {tuple(prev)}; call loss() or reset() after every forward "
                    "pass"
                )
        record.spikes.append(spikes)
        record.v.append(v)

    def _sheet_for(self, record: _Record, shape: tuple[int, int, int]) -> Sheet:
        sheet = self._sheets.get(record.name)
        if sheet is not None:
            if sheet.shape != shape:
                raise ConfigError(
                    f"{record.describe()} now has units of shape {shape}, but its sheet was "
                    f"built (or loaded) for {sheet.shape}; sheets are fixed after the first "
                    "forward pass: keep the input size, or build a new TopoRegularizer"
                )
            return sheet
        side = self._sheet_mm[record.name]
        n = shape[0] * shape[1] * shape[2]
        if self._nbhd_mm is not None and record.name in self._nbhd_mm:
            nbhd = self._nbhd_mm[record.name]
        else:
            frac = max(_DEFAULT_NEIGHBOURHOOD_FRACTION, math.sqrt(_UNITS_PER_WINDOW / n))
            nbhd = side * min(1.0, frac)
        layout = self._layout or self.config.sheet_layout(shape)
        sheet = build_sheet(record.name, shape, side, nbhd, layout, seed=self._seed + record.index)
        self._sheets[record.name] = sheet
        return sheet

    # ------------------------------------------------------------------ public API

    @property
    def sheets(self) -> dict[str, Sheet]:
        """``{layer name: Sheet}`` of the layers seen so far (built on their first forward)."""
        return dict(self._sheets)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` removed the hooks."""
        return self._handles is None

    def captured(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """The current record, without clearing it: ``{layer: (spikes, membrane or None)}``.

        Spikes and membrane are ``[T, B, C, H, W]`` or ``[T, B, N]`` (single-step calls stacked
        along a new time axis), with their autograd graph. Layers not seen are left out.
        """
        return {name: rec.stacked() for name, rec in self._records.items() if rec.spikes}

    def loss(self, return_terms: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Topographic loss of the recorded layers, then clear the record for the next step.

        Returns:
            :meth:`~tdsnn.topo.objective.TopoObjective.loss` of the recorded layers, a scalar
            tensor with the graph back into the network (zero for the ``none`` preset); with
            ``return_terms=True`` also ``{"<layer>/<term>": detached scalar}`` holding each
            layer's unweighted terms (``rate``, ``synchrony``, ``membrane``) and ``total``.

        Raises:
            ConfigError: nothing recorded (no forward pass since the last call, hooks closed, or
                the network in eval mode with ``train_only``), a layer missing from the record,
                or no membrane where the config needs it.
        """
        try:
            if not self.config.enabled:
                total, terms = torch.zeros(()), {}
            else:
                total, terms = self._compute()
        finally:
            self.reset()
        return (total, terms) if return_terms else total

    def _compute(self) -> tuple[Tensor, dict[str, Tensor]]:
        if self.closed:
            raise ConfigError("TopoRegularizer.loss(): the hooks were removed by close()")
        seen = [n for n, r in self._records.items() if r.spikes]
        if not seen:
            raise ConfigError(
                f"TopoRegularizer.loss(): nothing was recorded from layers {list(self.layers)}; "
                "run the network's forward pass first (in training mode, or build the "
                "regularizer with train_only=False)"
            )
        missing = [n for n in self.layers if n not in seen]
        if missing:
            raise ConfigError(
                f"TopoRegularizer.loss(): layers {missing} did not run in this forward pass "
                f"(recorded: {seen}); pass layers=[...] naming only the layers that run"
            )
        spikes, membrane = {}, {}
        for name in self.layers:
            rec = self._records[name]
            spikes[name], v = rec.stacked()
            if self._objective.needs_membrane and v is None:
                raise ConfigError(
                    f"preset {self.config.name!r} (gamma={self.config.gamma:g}, feature "
                    f"{self.config.feature!r}) needs the membrane of {rec.describe()}, which was "
                    "not recorded: build spikingjelly neurons with store_v_seq=True; let snntorch "
                    "neurons return (spk, mem) (init_hidden=False, or output=True)"
                )
            if self._objective.needs_membrane:
                membrane[name] = v
        terms = self._objective.terms(spikes=spikes, membrane=membrane, generator=self._generator)
        flat = {
            f"{name}/{term}": value.detach()
            for name, layer_terms in terms.items()
            for term, value in layer_terms.items()
        }
        return self._objective.loss(terms), flat

    __call__ = loss

    def reset(self) -> None:
        """Clear the record without computing a loss (e.g. after an evaluation pass)."""
        for rec in self._records.values():
            rec.clear()

    def close(self) -> None:
        """Remove the hooks and clear the record; sheets stay available."""
        if self._handles is not None:
            for handle in self._handles:
                handle.remove()
            self._handles = None
        self.reset()

    def __enter__(self) -> TopoRegularizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TopoRegularizer(preset={self.config.name!r}, layers={list(self.layers)}, "
            f"sheets={len(self._sheets)}/{len(self.layers)} built, closed={self.closed})"
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """``{"version", "sheets": {layer: Sheet.state_dict()}, "generator": ByteTensor}``.

        Plain types and tensors only, loadable with ``torch.load(..., weights_only=True)``.
        """
        return {
            "version": STATE_VERSION,
            "sheets": {name: sheet.state_dict() for name, sheet in self._sheets.items()},
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore sheets (and the cluster generator) saved by :meth:`state_dict`.

        Loaded sheets replace any built ones; the next forward pass checks each layer's unit
        shape against its sheet. A sheet for a layer this regularizer does not record is a
        :class:`~tdsnn.errors.CheckpointError`.
        """
        self._sheets.update(_sheets_from_state(state, self.layers))
        if "generator" in state:
            gen = state["generator"]
            if not isinstance(gen, Tensor) or gen.dtype != torch.uint8:
                raise CheckpointError("TopoRegularizer state: 'generator' must be a uint8 tensor")
            self._generator.set_state(gen)


def _sheets_from_state(state: dict, layers: Sequence[str]) -> dict[str, Sheet]:
    """``{layer: Sheet}`` of a :meth:`TopoRegularizer.state_dict`, checked: its version, and a
    sheet only for the recorded ``layers``, each stored under its own area's name."""
    if not isinstance(state, dict) or "sheets" not in state:
        raise CheckpointError(
            "TopoRegularizer.load_state_dict: expected the dict from state_dict() with a "
            f"'sheets' entry, got {type(state).__name__}"
        )
    check_state_version(state, STATE_VERSION, "TopoRegularizer state")
    sheets = state["sheets"]
    if not isinstance(sheets, dict):
        raise CheckpointError("TopoRegularizer state: 'sheets' must be {layer: sheet state}")
    unknown = sorted(set(sheets) - set(layers))
    if unknown:
        raise CheckpointError(
            f"TopoRegularizer state has sheets for layers {unknown} that this regularizer "
            f"does not record (recorded: {list(layers)}); was it saved for another model?"
        )
    loaded = {}
    for name, sheet_state in sheets.items():
        sheet = Sheet.from_state_dict(sheet_state)
        if sheet.area != name:
            raise CheckpointError(
                f"TopoRegularizer state: the sheet stored under {name!r} is for area {sheet.area!r}"
            )
        loaded[name] = sheet
    return loaded
