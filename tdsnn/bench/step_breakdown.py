"""Where a training step's time goes (the ``breakdown`` row of suite ``cpu-step``): the step
timed round robin with its parts, each replayed alone on the inputs it got in one step."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from tdsnn.areas import SeqConvBN
from tdsnn.bench.timing import measure, measure_round_robin
from tdsnn.bench.train_steps import TrainStep
from tdsnn.neurons import LIF
from tdsnn.ops.bn_lif import bn_lif, fusable

__all__ = ["BREAKDOWN_METHOD", "PARTS", "step_breakdown"]


BREAKDOWN_METHOD = (
    "the step and each part's forward+backward (one backward per part, as the step has one), "
    "replayed alone on the inputs it got in one training step, timed round robin (step, parts, "
    "step, ...), median over the repeats after warm-up. Parts: 'conv' = the convolutions of the "
    "spiking blocks; 'conv+bn' = convolution + batch norm of the stem and the projection "
    "shortcuts; 'bn+lif' = batch norm + shortcut + LIF of each block as the step runs it (the "
    "fused op where it applies); 'lif' = LIF units called alone (the stem's, an fc readout's); "
    "'stc' = the topographic loss; 'optimizer' = AdamW. 'other' = the step median minus the "
    "parts (encoding, readout, cross-entropy, autograd bookkeeping); 'data' = one batch from "
    "the training DataLoader (EpochSampler over the shapes split, moved to the device), not "
    "part of the timed step"
)

PARTS = ("conv", "conv+bn", "bn+lif", "lif")  # the module parts of the breakdown

# A replayed call: (function, its input tensors (leaves, or None), the parameters it trains).
Call = tuple[Callable[..., object], tuple, list[Tensor]]


def _leaf(t: object) -> object:
    """A tensor argument as a leaf that needs a gradient where ``t`` did; others as they are."""
    return t.detach().requires_grad_(t.requires_grad) if isinstance(t, Tensor) else t


@contextmanager
def _recording(model: nn.Module) -> Iterator[dict[str, list]]:
    """Record the arguments of every outermost ``SeqConvBN.spiking``, ``SeqConvBN`` and
    ``LIF`` call of ``model`` inside the block: ``{"spiking" | "conv+bn" | "lif": [(module,
    args, kwargs)]}``, tensors as leaves.

    The methods are wrapped by instance attributes, not hooks: a hook would make
    ``SeqConvBN.spiking`` run the modules one by one instead of the fused op.
    """
    calls: dict[str, list] = {"spiking": [], "conv+bn": [], "lif": []}
    active: list[nn.Module] = []
    wrapped: list[tuple[nn.Module, str]] = []

    def wrap(module: nn.Module, method: str, kind: str) -> None:
        original = getattr(module, method)

        def wrapper(*args, **kwargs):
            if not active:  # a call inside another one is part of it
                calls[kind].append(
                    (module, tuple(map(_leaf, args)), {k: _leaf(v) for k, v in kwargs.items()})
                )
            active.append(module)
            try:
                return original(*args, **kwargs)
            finally:
                active.pop()

        setattr(module, method, wrapper)
        wrapped.append((module, method))

    for m in model.modules():
        if isinstance(m, SeqConvBN):
            wrap(m, "spiking", "spiking")
            wrap(m, "forward", "conv+bn")
        elif isinstance(m, LIF):
            wrap(m, "forward", "lif")
    try:
        yield calls
    finally:
        for m, method in wrapped:
            delattr(m, method)  # the class's method again


def _capture(step: TrainStep) -> tuple[dict[str, list[Call]], dict, bool]:
    """The calls of every breakdown part in one forward pass of the step (gradients on, so that
    the inputs need them where the step's do), the recorded features, and whether every block's
    batch norm + LIF ran as the fused op."""
    with _recording(step.model) as calls:
        out = step.model(step.images, **step.objective.recording())
    features = {"spikes": out.spikes, "membrane": out.membrane}
    del out
    parts: dict[str, list[Call]] = {name: [] for name in PARTS}
    fused = True
    signature = inspect.signature(SeqConvBN.spiking)
    for m, args, kwargs in calls["spiking"]:
        bound = signature.bind(m, *args, **kwargs)
        bound.apply_defaults()
        x, units, shortcut, membrane = (
            bound.arguments[k] for k in ("x", "units", "shortcut", "return_membrane")
        )
        conv = _block_conv(m)
        with torch.no_grad():
            y = conv(x)
        fused = fused and fusable(y, m.bn, units)
        parts["conv"].append((conv, (x,), list(m.conv.parameters())))
        parts["bn+lif"].append(
            (_block_bn_lif(m, units, membrane), (y.requires_grad_(), shortcut),
             [*m.bn.parameters(), *units.parameters()])
        )  # fmt: skip
    for m, args, kwargs in calls["conv+bn"]:
        parts["conv+bn"].append((_with(m, kwargs), args, list(m.parameters())))
    for m, args, kwargs in calls["lif"]:
        parts["lif"].append((_with(m, kwargs), args, list(m.parameters())))
    return parts, features, fused


def _block_conv(m: SeqConvBN) -> Callable[[Tensor], Tensor]:
    """The convolution of a block: ``x [T, B, C, H, W]`` -> ``y [T, B, C', H', W']``."""
    return lambda x: m.conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _block_bn_lif(m: SeqConvBN, units: nn.Module, membrane: bool) -> Callable[..., object]:
    """Batch norm + shortcut + units of a block on its convolution's output, as
    ``SeqConvBN.spiking`` runs them."""
    return lambda y, shortcut: bn_lif(y, m.bn, units, shortcut, membrane)


def _with(module: nn.Module, kwargs: dict) -> Callable[..., object]:
    return lambda *args: module(*args, **kwargs)


def _tensors(out: object) -> list[Tensor]:
    """The tensor outputs of a call (one tensor, or a tuple of them)."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [t for t in items if isinstance(t, Tensor)]


def _replay(calls: list[Call]) -> Callable[[], None] | None:
    """Forward of every call, then one backward of all their outputs with fixed random output
    gradients (as the step's one backward); the gradients of the inputs and parameters are
    cleared first, as the step's ``zero_grad`` does. None without calls."""
    if not calls:
        return None
    with torch.no_grad():
        grads = [torch.randn_like(o) for fn, inputs, _ in calls for o in _tensors(fn(*inputs))]
    leaves = [
        t for _, inputs, params in calls for t in (*inputs, *params)
        if isinstance(t, Tensor) and t.requires_grad
    ]  # fmt: skip

    def run() -> None:
        for t in leaves:
            t.grad = None
        outs = [o for fn, inputs, _ in calls for o in _tensors(fn(*inputs))]
        torch.autograd.backward(outs, grads)

    return run


def _stc_replay(step: TrainStep, features: dict) -> Callable[[], None] | None:
    objective = step.objective
    if not objective.enabled:
        return None
    spikes = {a: s.detach().requires_grad_() for a, s in features["spikes"].items()}
    membrane = {a: v.detach().requires_grad_() for a, v in features["membrane"].items()}
    weights = {}
    if objective.needs_weights:
        weights = {a: step.model.areas[a].output_weight for a in objective.areas}

    def run() -> None:
        terms = objective.terms(
            spikes=spikes, membrane=membrane, weights=weights, generator=step.generator
        )
        objective.loss(terms).backward()

    return run


def _fetcher(loader, device: torch.device) -> Callable[[], None]:
    """One batch from ``loader`` (started again when it runs out), moved to ``device``."""
    iterator = iter(loader)

    def fetch() -> None:
        nonlocal iterator
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        batch[0].to(device, non_blocking=True)

    return fetch


def step_breakdown(
    step: TrainStep,
    loader,
    device: torch.device,
    *,
    variant: str,
    warmup: int,
    repeats: int,
) -> dict:
    """Where the step's time goes: conv, conv+bn, bn+lif, lif, STC, optimizer, other, data
    (see :data:`BREAKDOWN_METHOD`); the step is timed round robin with its parts, so that
    machine load hits the whole and the parts alike."""
    calls, features, fused = _capture(step)
    parts: dict[str, Callable[[], object] | None] = {
        **{name: _replay(calls[name]) for name in PARTS},
        "stc": _stc_replay(step, features),
        "optimizer": step.optimizer.step,
    }
    timed = {"step": step, **{k: fn for k, fn in parts.items() if fn is not None}}
    timings = measure_round_robin(timed, device, warmup=warmup, repeats=repeats)
    step_ms = timings["step"].median_ms
    ms = {k: timings[k].median_ms if k in timings else 0.0 for k in parts}
    ms["other"] = step_ms - sum(ms.values())
    ms["data"] = measure(_fetcher(loader, device), device, warmup=warmup, repeats=repeats).median_ms
    step.optimizer.zero_grad(set_to_none=True)
    whole = step_ms + ms["data"]
    return {
        "kind": "breakdown",
        "variant": variant,
        "method": BREAKDOWN_METHOD,
        "step_ms": step_ms,
        "parts_ms": ms,
        "fraction_of_step_plus_data": {k: v / whole for k, v in ms.items()},
        "modules": {name: len(calls[name]) for name in PARTS},
        "fused_bn_lif": fused,
    }
