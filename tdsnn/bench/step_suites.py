"""Training-step benchmarks (suites ``step`` and ``cpu-step``): the variants of a step
(:mod:`tdsnn.bench.step_variants`) checked against the first one, then timed round robin, with
their peak memory on CUDA; ``cpu-step`` adds the step without the topographic loss and where
the step's time goes (:mod:`tdsnn.bench.step_breakdown`).

The steps are those of :mod:`tdsnn.bench.train_steps`; the variants' steps alternate (round
robin), so that machine load hits them alike.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from tdsnn.areas import AreaStack
from tdsnn.bench.step_breakdown import step_breakdown
from tdsnn.bench.step_variants import (
    Variant,
    compare_outputs,
    graphed_variant,
    peer_variants,
    tdsnn_variants,
    variant_fn,
)
from tdsnn.bench.timing import kernel_policy, measure_round_robin, synchronize
from tdsnn.bench.train_steps import make_step, shapes_batch, step_config
from tdsnn.config import RunConfig
from tdsnn.peers.neurons import lif_paths, set_modules

__all__ = ["cpu_step_suite", "step_suite"]


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
            variant_fn(step, v, originals)()
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
    fns = {v.name: variant_fn(step, v, originals) for v in runnable}
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


def step_suite(device: torch.device, sizes, *, warmup: int, repeats: int) -> list[dict]:
    """Suite ``step``: tdsnn (kernels, the kernels' step captured in CUDA graphs, reference) vs
    the same step with spikingjelly's neurons (tdsnn's kernels elsewhere)."""
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
        peers, notes = peer_variants(model, device, ["spikingjelly"], variants[0].policy)
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
    reference) vs the same step with spikingjelly's or snntorch's neurons (only the neuron
    swapped), the first tdsnn variant and the peers again without the topographic loss (its
    overhead), and where that variant's step time goes."""
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
    peers, notes = peer_variants(model, device, ["spikingjelly", "snntorch"], variants[0].policy)
    rows += _check_and_time(step, model, images, variants + peers, originals, notes, case,
                            device, warmup, repeats)  # fmt: skip
    if config.topo.name != "none":
        rows += _without_topo(model, config, images, labels, [variants[0], *peers], originals,
                              device, warmup, repeats)  # fmt: skip
    ran = {r["variant"] for r in rows if r.get("kind") == "time" and r.get("status") == "ok"}
    base = variants[0]
    if base.name in ran:
        with kernel_policy(base.policy):
            rows.append(step_breakdown(step, loader, device, variant=base.name,
                                       warmup=warmup, repeats=repeats))  # fmt: skip
    return rows


def _without_topo(model, config, images, labels, variants, originals, device, warmup, repeats):
    """Time rows of ``variants`` on the same step without the topographic loss (case
    ``topo=none``), which with the ``topo=stc`` case gives the loss's overhead on the step."""
    config = config.with_overrides({"topo.name": "none"})
    step = make_step(model, config, images, labels, seed=0, synchronize=False)
    case = f"topo={config.topo.name}"
    return _time_variants(step, variants, originals, device, warmup, repeats, case)


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
