"""Training-step benchmarks (suites ``step`` and ``cpu-step``).

A step is :func:`tdsnn.step.train_step`, the function :class:`tdsnn.train.Trainer` calls per
batch, here without the warm-up ramp: forward, cross-entropy + the topographic loss of
:class:`~tdsnn.topo.objective.TopoObjective`, backward, AdamW. The peer variants are the *same
module object* with every tdsnn :class:`~tdsnn.neurons.LIF` replaced by a spikingjelly or
snntorch neuron of the same dynamics (:mod:`tdsnn.peers.neurons`), so weights, optimiser and
data are shared; the variants' steps alternate (round robin).

A variant that needs another optimiser has a step of its own (:class:`CapturableStep`, built by
:func:`capturable_step`): ``tdsnn-graphed`` of the ``step`` suite is the step captured in CUDA
graphs (:class:`tdsnn.step.GraphedStep`, as ``tdsnn train --cuda-graphs``) on a copy of the
model with the same initial weights and the capturable AdamW; its logits of a replay are
checked against the first variant's before timing, and it takes part in the same round robin.
"""

from __future__ import annotations

import copy
import gc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack, SeqConvBN
from tdsnn.bench.timing import kernel_policy, measure, measure_round_robin, synchronize
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError
from tdsnn.neurons import LIF
from tdsnn.ops.bn_lif import bn_lif, fusable
from tdsnn.peers.detect import PeerMissing
from tdsnn.peers.neurons import lif_paths, peer_modules, set_modules, spikingjelly_backend
from tdsnn.step import (
    GraphedStep,
    StepResult,
    Training,
    build_training,
    make_capturable,
    train_step,
)
from tdsnn.topo.objective import TopoObjective

__all__ = [
    "CapturableStep",
    "TrainStep",
    "capturable_step",
    "compare_outputs",
    "cpu_step_suite",
    "graphed_variant",
    "make_step",
    "step_suite",
]


# ----------------------------------------------------------------------------- the step


@dataclass
class TrainStep:
    """One training step on fixed ``images [B, 3, S, S]`` and ``labels [B]``; call it to run."""

    model: AreaStack
    objective: TopoObjective
    optimizer: torch.optim.Optimizer
    images: Tensor
    labels: Tensor
    generator: torch.Generator
    synchronize: bool = True
    amp: bool = False  # bf16 autocast of the forward, as ``tdsnn train --amp``

    def __call__(self) -> None:
        train_step(
            self.model,
            self.objective,
            self.optimizer,
            self.images,
            self.labels,
            self.generator,
            amp=self.amp,
        )
        if self.synchronize:
            synchronize(self.images.device)


def make_step(
    model: AreaStack,
    config: RunConfig,
    images: Tensor,
    labels: Tensor,
    seed: int,
    *,
    synchronize: bool = True,
    amp: bool = False,
) -> TrainStep:
    """One training step as :class:`tdsnn.train.Trainer` takes it, built by the same
    :func:`tdsnn.step.build_training` (the config's optimiser; run seed ``seed``; without the
    warm-up ramp)."""
    training = _training(model, config, images.device, seed)
    return TrainStep(
        model=model,
        objective=training.objective,
        optimizer=training.optimizer,
        images=images,
        labels=labels,
        generator=training.generator,
        synchronize=synchronize,
        amp=amp,
    )


def _training(
    model: AreaStack,
    config: RunConfig,
    device: torch.device,
    seed: int,
    objective_type: type[TopoObjective] = TopoObjective,
) -> Training:
    """:func:`tdsnn.step.build_training` of ``config`` with run seed ``seed``, for one step."""
    config = config.with_overrides({"run.seed": seed})
    sheets = build_area_sheets(model, config)
    return build_training(config, model, sheets, device, total_steps=1,
                          objective_type=objective_type)  # fmt: skip


@dataclass
class CapturableStep:
    """One training step on a model of its own with the capturable AdamW that ``tdsnn train
    --cuda-graphs`` trains with, on fixed ``images [B, 3, S, S]`` and ``labels [B]``: captured
    in CUDA graphs by ``graphed`` (:class:`tdsnn.step.GraphedStep`), or eager
    (:func:`tdsnn.step.train_step`) when ``graphed`` is None. Call it to run one step."""

    model: AreaStack
    objective: TopoObjective
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    images: Tensor
    labels: Tensor
    graphed: GraphedStep | None
    held_mib: float | None = None  # CUDA memory its state holds once captured (see _held_mib)

    def __call__(self) -> StepResult:
        if self.graphed is not None:
            return self.graphed(self.images, self.labels)
        return train_step(
            self.model, self.objective, self.optimizer, self.images, self.labels, self.generator
        )

    def prime(self) -> None:
        """Take the graphed step's eager warm-up steps and its capture (nothing when eager)."""
        while self.graphed is not None and not self.graphed.captured:
            self()

    @torch.enable_grad()
    def logits_at(self, weights: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, classes]`` of one step (a replay when graphed) taken from ``weights`` (a
        state dict), copied into the model in place, where the captured graphs read them."""
        self.prime()
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(weights[name])
        return self().logits


def capturable_step(
    template: AreaStack,
    config: RunConfig,
    images: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    graphed: bool = True,
    objective_type: type[TopoObjective] = TopoObjective,
) -> CapturableStep:
    """The step of ``config`` under ``--cuda-graphs`` on a copy of ``template`` (same weights;
    ``template`` untouched), built by :func:`tdsnn.step.build_training` (an ``objective_type``
    objective, the config's optimiser made capturable, run seed ``seed``); ``graphed``:
    captured in CUDA graphs after 3 eager warm-up steps (:class:`tdsnn.step.GraphedStep`)."""
    model = copy.deepcopy(template)
    config = config.with_overrides({"run.cuda_graphs": True})
    training = _training(model, config, images.device, seed, objective_type)
    step = training.capture(model, model) if graphed else None
    if not graphed:
        make_capturable(training.optimizer, images.device)
    return CapturableStep(model, training.objective, training.optimizer, training.generator,
                          images, labels, step)  # fmt: skip


def step_config(
    stack: str,
    width: float,
    blocks: int | None,
    image_size: int,
    timesteps: int,
    batch: int,
    topo: str,
) -> RunConfig:
    """The run config of a benchmarked step (options checked by the config)."""
    return RunConfig().with_overrides(
        {
            "model.area_stack": stack,
            "model.width": width,
            "model.blocks": blocks,
            "model.timesteps": timesteps,
            "data.image_size": image_size,
            "optim.batch_size": batch,
            "topo.name": topo,
        }
    )


def shapes_batch(image_size: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``batch`` images ``[B, 3, S, S]`` and labels ``[B]`` of the built-in ``shapes`` data."""
    from tdsnn.data import ShapesDataset

    data = ShapesDataset("train", n=batch, seed=0, image_size=image_size)
    images, labels = data[list(range(batch))]
    return images.to(device), labels.to(device)


def _setup(config: RunConfig, model: AreaStack, device: torch.device) -> dict:
    m = config.model
    params = sum(p.numel() for p in model.parameters())
    text = (
        f"{m.area_stack} width {m.width} blocks {m.blocks or 'table'}, "
        f"{config.data.image_size} px, batch {config.optim.batch_size}, T = {m.timesteps}, "
        f"fp32, {params / 1e6:.2f} M parameters, shapes images"
    )
    if device.type == "cpu":
        text += f", {torch.get_num_threads()} threads"
    return {"kind": "setup", "text": text, "config": config.to_dict(), "parameters": params}


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


def _variant_fn(step: TrainStep, variant: Variant, originals: dict[str, nn.Module]):
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


def _peer_variants(model: AreaStack, device: torch.device, peers: list[str], policy: str | None):
    variants, notes = [], []
    for peer in peers:
        try:
            modules = peer_modules(model, peer, device)
            impl = (
                f"spikingjelly LIF ({spikingjelly_backend(device)})"
                if peer == "spikingjelly"
                else "snntorch Leaky looped over T"
            )
            variants.append(Variant(peer, modules, policy, impl + " + PyTorch reference STC"))
        except (PeerMissing, ConfigError) as exc:
            notes.append({"kind": "note", "variant": peer, "status": f"skipped: {exc}"})
    return variants, notes


def _check_and_time(
    step, model, images, variants, originals, notes, case, device, warmup, repeats
) -> list[dict]:
    """Rows for one case: the peers' notes, the output check of every variant against tdsnn,
    then the round-robin step timings."""
    rows = [dict(n, case=case) for n in notes]
    outputs = compare_outputs(model, images, variants, originals)
    rows.append({"kind": "check", "case": case, "outputs": outputs})
    return rows + _time_variants(step, variants, originals, device, warmup, repeats, case)


def _time_variants(step, variants, originals, device, warmup, repeats, case) -> list[dict]:
    """Round-robin timing of ``variants`` on ``step``; rows of the ones that ran."""
    runnable, rows = [], []
    for v in variants:  # one call each first: a variant that fails is reported, not timed
        try:
            _variant_fn(step, v, originals)()
            runnable.append(v)
        except Exception as exc:  # noqa: BLE001 - a failing variant must not end the benchmark
            rows.append(
                {
                    "kind": "time",
                    "case": case,
                    "variant": v.name,
                    "implementation": v.implementation,
                    "status": f"failed: {type(exc).__name__}: {exc}",
                }
            )
    fns = {v.name: _variant_fn(step, v, originals) for v in runnable}
    timings = measure_round_robin(fns, device, warmup=warmup, repeats=repeats) if fns else {}
    memory = _variant_memory(runnable, fns, device) if device.type == "cuda" else {}
    batch = step.images.shape[0]
    for v in runnable:
        t = timings[v.name]
        rows.append(
            {
                "kind": "time",
                "case": case,
                "variant": v.name,
                "implementation": v.implementation,
                "status": "ok",
                "median_ms": t.median_ms,
                "min_ms": t.min_ms,
                "images_per_s": batch / (t.median_ms * 1e-3),
                "timing": t.to_dict(),
                **memory.get(v.name, {}),
            }
        )
    set_modules(step.model, originals)
    return rows


def _variant_memory(variants: list[Variant], fns: dict, device: torch.device) -> dict:
    """``{variant: peak memory}`` (:func:`_peak_memory`). The variants with a step of their own
    go first, with the memory their state holds, and are then released (``step`` None), so
    that the shared step's peaks are as without them."""
    own = [v for v in variants if v.step is not None]
    memory = {v.name: _peak_memory(fns[v.name], device, held_mib=v.step.held_mib) for v in own}
    for v in own:
        v.step = None
    memory.update(
        {v.name: _peak_memory(fns[v.name], device) for v in variants if v.name not in memory}
    )
    return memory


def _peak_memory(fn: Callable[[], None], device: torch.device, held_mib: float | None = None):
    """Peak allocated memory of one more call, in MiB: absolute (or, given ``held_mib``, what
    a step of its own holds plus what the call allocates above it) and above the start."""
    gc.collect()
    torch.cuda.empty_cache()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    above = (peak - start) / 2**20
    return {
        "peak_mib": peak / 2**20 if held_mib is None else held_mib + above,
        "peak_above_start_mib": above,
    }


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


def step_suite(device: torch.device, sizes, *, warmup: int, repeats: int) -> list[dict]:
    """Suite ``step``: tdsnn (kernels, the kernels' step captured in CUDA graphs, reference) vs
    spikingjelly neurons + reference STC."""
    from tdsnn.bench.report import kernel_status

    rows: list[dict] = []
    kernels = kernel_status(device)
    for topo in sizes.step_topos:
        config = step_config(
            sizes.step_stack,
            sizes.step_width,
            sizes.step_blocks,
            sizes.step_image_size,
            sizes.timesteps,
            sizes.step_batch,
            topo,
        )
        torch.manual_seed(0)
        model = AreaStack(config.model, num_classes=10).to(device)
        images, labels = shapes_batch(config.data.image_size, config.optim.batch_size, device)
        step = make_step(model, config, images, labels, seed=0, synchronize=False)
        originals = {p: model.get_submodule(p) for p in lif_paths(model)}
        case = f"topo={topo}"
        if topo == sizes.step_topos[0]:
            rows.append(_setup(config, model, device))
        variants, failed = tdsnn_variants(kernels, device, case)
        rows += failed
        peers, notes = _peer_variants(model, device, ["spikingjelly"], "reference")
        graphed, skipped = graphed_variant(model, config, images, labels, kernels, case)
        variants += peers + graphed  # graphed last, where its skip row goes off CUDA
        rows += _check_and_time(step, model, images, variants, originals, notes, case,
                                device, warmup, repeats)  # fmt: skip
        rows += skipped
        del model, step, originals, variants, peers, graphed
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- cpu-step


def cpu_step_suite(device: torch.device, sizes, *, warmup: int, repeats: int) -> list[dict]:
    """Suite ``cpu-step``: the default run's step, tdsnn (fused CPU LIF kernel, PyTorch
    reference) vs spikingjelly vs snntorch neurons, the first tdsnn variant's step without the
    topographic loss (its overhead), and where that variant's step time goes."""
    from tdsnn.bench.report import kernel_status

    defaults = RunConfig()
    config = defaults.with_overrides(
        {
            "model.width": sizes.cpu_width,
            "data.image_size": sizes.cpu_image_size,
            "optim.batch_size": sizes.cpu_batch,
            "model.timesteps": sizes.timesteps,
        }
    )
    torch.manual_seed(0)
    model = AreaStack(config.model, num_classes=10).to(device)
    loader = _train_loader(config, device, batches=sizes.cpu_loader_batches)
    images, labels = (t.to(device) for t in next(iter(loader)))
    step = make_step(model, config, images, labels, seed=0, synchronize=False)
    originals = {p: model.get_submodule(p) for p in lif_paths(model)}
    case = f"topo={config.topo.name}"
    rows: list[dict] = [_setup(config, model, device)]
    variants, failed = tdsnn_variants(kernel_status(device), device, case)
    rows += failed
    peers, notes = _peer_variants(model, device, ["spikingjelly", "snntorch"], "reference")
    variants += peers
    rows += _check_and_time(step, model, images, variants, originals, notes, case,
                            device, warmup, repeats)  # fmt: skip
    if config.topo.name != "none":
        rows += _without_topo(model, config, images, labels, variants[0], originals, device,
                              warmup, repeats)  # fmt: skip
    ran = {r["variant"] for r in rows if r.get("kind") == "time" and r.get("status") == "ok"}
    base = variants[0]
    if base.name in ran:
        with kernel_policy(base.policy):
            rows.append(step_breakdown(step, loader, device, variant=base.name,
                                       warmup=warmup, repeats=repeats))  # fmt: skip
    return rows


def _without_topo(model, config, images, labels, variant, originals, device, warmup, repeats):
    """Time rows of ``variant`` on the same step without the topographic loss (case
    ``topo=none``), which with the ``topo=stc`` case gives the loss's overhead on the step."""
    config = config.with_overrides({"topo.name": "none"})
    step = make_step(model, config, images, labels, seed=0, synchronize=False)
    case = f"topo={config.topo.name}"
    return _time_variants(step, [variant], originals, device, warmup, repeats, case)


def _train_loader(config: RunConfig, device: torch.device, batches: int):
    """The training DataLoader of ``config`` over ``batches`` batches of ``shapes`` images."""
    from tdsnn.data import build_datasets, make_loader
    from tdsnn.data.order import EpochSampler

    batch = config.optim.batch_size
    train, _, _ = build_datasets(
        "shapes", image_size=config.data.image_size, seed=0, train_size=batch * batches, test_size=1
    )
    sampler = EpochSampler(len(train), batch, seed=0)
    return make_loader(
        train, batch, shuffle=False, seed=0, batch_sampler=sampler, pin_memory=device.type == "cuda"
    )


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
