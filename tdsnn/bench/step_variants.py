"""The variants of a benchmarked training step (suites ``step`` and ``cpu-step``), and the
check of their outputs against the first one's.

tdsnn's variants are the step of :mod:`tdsnn.bench.train_steps` under a kernel policy (the
compiled kernels, or the PyTorch reference). The peer variants are the *same module object*
with every tdsnn :class:`~tdsnn.neurons.LIF` replaced by a spikingjelly or snntorch neuron of
the same dynamics (:mod:`tdsnn.peers.neurons`), so weights, optimiser and data are shared.

A variant that needs another optimiser has a step of its own
(:class:`~tdsnn.bench.train_steps.CapturableStep`): ``tdsnn-graphed`` of the ``step`` suite is
the step captured in CUDA graphs (:class:`tdsnn.step.GraphedStep`, as ``tdsnn train
--cuda-graphs``) on a copy of the model with the same initial weights and the capturable
AdamW; its logits of a replay are checked against the first variant's before timing.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tdsnn.areas import AreaStack
from tdsnn.bench.timing import kernel_policy, synchronize
from tdsnn.bench.train_steps import CapturableStep, TrainStep, capturable_step
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError
from tdsnn.peers.detect import PeerMissing
from tdsnn.peers.neurons import peer_modules, set_modules, spikingjelly_backend

__all__ = [
    "GRAPHED",
    "Variant",
    "compare_outputs",
    "graphed_variant",
    "peer_variants",
    "tdsnn_variants",
    "variant_fn",
]


@dataclass
class Variant:
    """A benchmarked network variant: neurons to put in (``None`` = tdsnn's) and the policy;
    ``step``: a step of its own (another optimiser, its own model copy) instead of the shared
    one, in which case ``modules`` is None."""

    name: str
    modules: dict[str, nn.Module] | None
    policy: str | None
    implementation: str
    step: CapturableStep | None = None


def variant_fn(step: TrainStep, variant: Variant, originals: dict[str, nn.Module]):
    """One step of ``variant`` under its kernel policy: its own step, or the shared ``step``
    with the variant's neurons put in (``originals``: tdsnn's, for the tdsnn variants)."""

    def run() -> None:
        with kernel_policy(variant.policy):
            if variant.step is not None:
                variant.step()
                return
            set_modules(step.model, variant.modules if variant.modules is not None else originals)
            step()

    return run


@torch.no_grad()
def compare_outputs(
    model: AreaStack, images: Tensor, variants: list[Variant], originals: dict[str, nn.Module]
) -> dict:
    """Logits of each variant on one batch against the first variant's.

    Returns ``{variant: {"max_abs_diff", "equal"}}`` (``equal``: ``allclose`` at rtol = atol =
    1e-4) and ``"spikes_differing"``: the fraction of the last area's spikes that differ. A
    variant with a step of its own gives the logits of one of its steps from ``model``'s
    current weights (a replay, when graphed) and no spikes (``spikes_differing`` None).
    """
    last = model.area_names[-1]
    results = {}
    ref = None
    for variant in variants:
        set_modules(model, variant.modules if variant.modules is not None else originals)
        with kernel_policy(variant.policy):
            if variant.step is not None:
                logits, spikes = variant.step.logits_at(model.state_dict()).float(), None
            else:
                out = model(images, record=(last,))
                logits, spikes = out.logits.float(), out.spikes[last].float()
        if ref is None:
            ref = (logits, spikes, variant.name)
            continue
        results[variant.name] = {
            "against": ref[2],
            "max_abs_diff": float((logits - ref[0]).abs().max()),
            "equal": bool(torch.allclose(logits, ref[0], rtol=1e-4, atol=1e-4)),
            "spikes_differing": (
                None if spikes is None else float((spikes != ref[1]).float().mean())
            ),
        }
    set_modules(model, originals)
    return results


def peer_variants(model: AreaStack, device: torch.device, peers: list[str], policy: str | None):
    """The variants of ``peers`` (their neurons in ``model``'s place) and a note row for each
    peer that is missing or cannot take the config's neurons. ``policy``: that of the tdsnn
    variant they are compared with, so that only the neuron differs (the same convolutions,
    batch norms, topographic loss and optimiser: a user's model with its LIF swapped)."""
    variants, notes = [], []
    for peer in peers:
        try:
            modules = peer_modules(model, peer, device)
            impl = (
                f"spikingjelly LIF ({spikingjelly_backend(device)})"
                if peer == "spikingjelly"
                else "snntorch Leaky looped over T"
            )
            rest = " + tdsnn's kernels elsewhere" if policy == "cuda" else " + PyTorch reference"
            variants.append(Variant(peer, modules, policy, impl + rest))
        except (PeerMissing, ConfigError) as exc:
            notes.append({"kind": "note", "variant": peer, "status": f"skipped: {exc}"})
    return variants, notes


def _held_mib(device: torch.device) -> float:
    """CUDA memory reserved after freeing the cached blocks, in MiB: the difference across
    building and capturing a step is what its state holds (weights, optimiser state,
    gradients, and the graphs' private pool, which keeps the captured step's activations)."""
    gc.collect()
    synchronize(device)
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved(device) / 2**20


def tdsnn_variants(kernels: dict, device: torch.device, case: str) -> tuple[list, list[dict]]:
    """tdsnn's variants of a step: its compiled kernels (``tdsnn-kernel``: CUDA kernels, or
    the fused CPU LIF) when they built, then the PyTorch reference (``tdsnn-reference``); and
    a failed row for the kernels when they did not."""
    compiled = "CUDA kernels" if device.type == "cuda" else "the fused CPU LIF kernel"
    kernel = Variant("tdsnn-kernel", None, "cuda", f"tdsnn LIF + {compiled}")
    reference = Variant("tdsnn-reference", None, "reference", "tdsnn LIF + PyTorch reference ops")
    if kernels.get("available"):
        return [kernel, reference], []
    failed = {"kind": "time", "case": case, "variant": kernel.name,
              "status": f"failed: kernel build: {kernels.get('error')}"}  # fmt: skip
    return [reference], [failed]


GRAPHED = "tdsnn-graphed"


def graphed_variant(
    model: AreaStack,
    config: RunConfig,
    images: Tensor,
    labels: Tensor,
    kernels: dict,
    case: str,
) -> tuple[list[Variant], list[dict]]:
    """``tdsnn-graphed``: ``config``'s step captured in CUDA graphs (:func:`capturable_step`,
    tdsnn's CUDA kernels) on a copy of ``model``, warmed up and captured; or, where it cannot
    run (off CUDA, kernels not built, a failing capture), a row saying why."""
    row = {"kind": "time", "case": case, "variant": GRAPHED}
    device = images.device
    if device.type != "cuda":
        return [], [{**row, "status": "skipped: CUDA graphs need a CUDA device"}]
    if not kernels.get("available"):
        return [], [{**row, "status": "skipped: needs tdsnn's CUDA kernels (see tdsnn-kernel)"}]
    before = _held_mib(device)
    try:
        with kernel_policy("cuda"):
            step = capturable_step(model, config, images, labels)
            step.prime()
    except Exception as exc:  # noqa: BLE001 - a failing capture must not end the benchmark
        return [], [{**row, "status": f"failed: capture: {type(exc).__name__}: {exc}"}]
    step.held_mib = _held_mib(device) - before
    impl = "tdsnn LIF + CUDA kernels, step captured in CUDA graphs, capturable AdamW"
    return [Variant(GRAPHED, None, "cuda", impl, step)], []
