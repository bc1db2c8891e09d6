"""Suite ``lif``: forward+backward throughput of the multi-step LIF on ``x [T, N]``.

Default neuron (tau 2, V_th 1, hard reset to 0, atan surrogate, ``decay_input``) in four
implementations: tdsnn's CUDA kernel (``TDSNN_KERNELS=cuda``), tdsnn's PyTorch reference
(``TDSNN_KERNELS=reference``), spikingjelly 2.0 (its own fastest CUDA path) and snntorch 1.0
``Leaky`` looped over T. One sample = spikes = LIF(x), then dL/dx for a fixed random dL/dS.

Effective bandwidth uses the tdsnn kernel's bytes model for every variant (see
:func:`bytes_per_neuron_step`), next to a device-to-device copy measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tdsnn.bench.timing import copy_bandwidth, kernel_policy, measure
from tdsnn.neurons import LIF, lif_multistep

__all__ = ["DTYPES", "VARIANTS", "bytes_per_neuron_step", "lif_suite"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ("tdsnn-kernel", "tdsnn-reference", "spikingjelly", "snntorch")


def bytes_per_neuron_step(dtype: torch.dtype) -> dict:
    """Bytes the tdsnn kernel must move per neuron and time step (forward + backward).

    Forward reads x and writes spikes and the saved membrane; backward reads dL/dS and the
    membrane and writes dL/dx. Elements have x's size; the membrane is saved in x's dtype for
    bf16/fp16 and in float32 for fp32.
    """
    e = torch.empty((), dtype=dtype).element_size()
    m = e if dtype in (torch.float16, torch.bfloat16) else 4
    forward, backward = e + e + m, e + m + e
    return {
        "forward": forward,
        "backward": backward,
        "total": forward + backward,
        "model": "forward: read x, write spikes + saved membrane; backward: read dL/dS + "
        "membrane, write dL/dx; membrane in x's dtype for bf16, float32 for fp32",
    }


Runner = Callable[[Tensor], Tensor]


def _runners(device: torch.device) -> tuple[dict[str, tuple[Runner, str | None, str]], dict]:
    """``{variant: (x -> spikes, kernel policy, implementation)}`` and ``{variant: status}``
    for the variants that cannot run here."""
    from tdsnn.bench.report import kernel_status
    from tdsnn.peers.detect import PeerMissing
    from tdsnn.peers.neurons import SnnTorchLIF, SpikingJellyLIF, spikingjelly_backend

    runners: dict[str, tuple[Runner, str | None, str]] = {}
    missing: dict[str, str] = {}
    kernels = kernel_status(device)
    if not kernels.get("available"):
        missing["tdsnn-kernel"] = f"failed: kernel build: {kernels.get('error')}"
    else:
        compiled = "CUDA" if device.type == "cuda" else "fused CPU"
        impl = f"torch.ops.tdsnn.lif_forward/backward ({compiled} kernel)"
        runners["tdsnn-kernel"] = (lif_multistep, "cuda", impl)
    runners["tdsnn-reference"] = (lif_multistep, "reference", "tdsnn PyTorch reference")
    for name, cls in (("spikingjelly", SpikingJellyLIF), ("snntorch", SnnTorchLIF)):
        try:
            module = cls(LIF()).to(device)
        except PeerMissing as exc:
            missing[name] = f"skipped: {exc}"
            continue
        if name == "spikingjelly":
            impl = f"functional.lif_multi_step, fp32 state: {spikingjelly_backend(device)}"
        else:
            impl = "Leaky(beta=0.5, reset_mechanism='zero', reset_delay=False), Python loop over T"
        runners[name] = (module, None, impl)
    return runners, missing


def _fwd_bwd(run: Runner, policy: str | None, x: Tensor, g: Tensor) -> Callable[[], tuple]:
    def call() -> tuple[Tensor, Tensor]:
        with kernel_policy(policy):
            spikes = run(x)
            (grad,) = torch.autograd.grad(spikes, x, g)
        return spikes, grad

    return call


def _agreement(out: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor] | None) -> dict:
    """Spike mismatch fraction and the largest dL/dx difference against the tdsnn reference."""
    if ref is None:
        return {}
    spikes, grad = out
    scale = float(ref[1].float().abs().max()) or 1.0
    return {
        "spikes_differing_vs_reference": float((spikes.float() != ref[0].float()).float().mean()),
        "grad_max_rel_diff_vs_reference": float((grad.float() - ref[1].float()).abs().max())
        / scale,
    }


def lif_suite(device: torch.device, sizes, *, warmup: int, repeats: int) -> list[dict]:
    """Rows: one ``copy`` row, then one ``time`` row per (dtype, T, variant)."""
    copy = copy_bandwidth(device, sizes.copy_bytes, warmup=warmup, repeats=repeats)
    runners, missing = _runners(device)
    n = sizes.lif_neurons
    per = {d: bytes_per_neuron_step(DTYPES[d])["total"] for d in sizes.dtypes}
    text = (
        f"x [T, N], N = {n}; LIF tau 2, V_th 1, hard reset 0, atan; GB/s = "
        + ", ".join(f"{b} B ({d})" for d, b in per.items())
        + " per neuron-step (fwd: x, spikes, membrane; bwd: dL/dS, membrane, dL/dx) / median"
    )
    rows: list[dict] = [{"kind": "setup", "text": text, "N": n}, {"kind": "copy", **copy}]
    gen = torch.Generator(device).manual_seed(0)
    min_sample = 1.0 if device.type == "cuda" else 0.0
    for dtype_name in sizes.dtypes:
        dtype = DTYPES[dtype_name]
        model = bytes_per_neuron_step(dtype)
        for steps in sizes.lif_steps:
            case = f"T={steps} {dtype_name}"
            x = (torch.randn(steps, n, generator=gen, device=device) * 2 + 1).to(dtype)
            x.requires_grad_()
            g = torch.randn(steps, n, generator=gen, device=device).to(dtype)
            ref = None
            if "tdsnn-reference" in runners:
                run, policy, _ = runners["tdsnn-reference"]
                ref = tuple(t.detach() for t in _fwd_bwd(run, policy, x, g)())
            for name in VARIANTS:
                row = {
                    "kind": "time",
                    "case": case,
                    "variant": name,
                    "T": steps,
                    "N": n,
                    "dtype": dtype_name,
                    "bytes_per_neuron_step": model,
                }
                rows.append(row)
                if name in missing:
                    row["status"] = missing[name]
                    continue
                run, policy, row["implementation"] = runners[name]
                fn = _fwd_bwd(run, policy, x, g)
                try:
                    row.update(_agreement(fn(), ref))
                    timing = measure(
                        fn, device, warmup=warmup, repeats=repeats, min_sample_ms=min_sample
                    )
                except Exception as exc:  # noqa: BLE001 - report the variant, keep going
                    row["status"] = f"failed: {type(exc).__name__}: {exc}"
                    continue
                gb = model["total"] * steps * n / (timing.median_ms * 1e-3) / 1e9
                row.update(
                    status="ok",
                    median_ms=timing.median_ms,
                    min_ms=timing.min_ms,
                    gb_per_s=gb,
                    fraction_of_copy=gb / copy["gb_per_s"],
                    timing=timing.to_dict(),
                )
            del x, g, ref
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
