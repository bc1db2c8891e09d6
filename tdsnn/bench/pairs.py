"""Suite ``pairs``: pairwise similarities and STC losses on a V1 sheet, kernel vs reference.

The sheet is a real model's V1 sheet (:func:`tdsnn.area_sheets.build_area_sheets` of a
``v1-v2-v4-it`` stack, retinotopic layout); the pair list is every pair within the radius of the
``stc-dense`` preset (neighbourhood width × ``window_factor``). Cases, each timed under
``TDSNN_KERNELS=cuda`` and ``reference``:

- ``pair_similarity fwd``: :func:`~tdsnn.topo.similarity.pair_dot` of z-scores ``[N, S]`` on the
  pair list (the warp-per-pair kernel ``pair_similarity``), with a bandwidth floor: x and y
  ``[N, S]`` float32 read once each, the pair list ``[P, 2]`` int64 read once, ``[P]`` float32
  written; floor time = those bytes at the copy bandwidth measured in the same run;
- ``pair_similarity fwd (tiles)``: the same on the pairs' :class:`~tdsnn.ops.pairs.PairTiles`
  (``pair_similarity_tiled``), against the same floor;
- ``pair_moments fwd+bwd (tiles)``: :func:`~tdsnn.ops.pairs.pair_moments` of the z-scores with
  the centred distance kernel as weights (what the STC Pearson terms reduce), and its gradient;
- ``pearson_pairs fwd+bwd`` on ``x [S, N]``; ``ccg_pairs fwd+bwd`` on spikes ``[T, B, N]``;
- ``stc-dense fwd+bwd``: :func:`~tdsnn.topo.losses.stc_loss` on the radius pairs' tiles (as
  training passes them on CUDA);
- ``stc clusters fwd+bwd``: :func:`~tdsnn.topo.losses.stc_loss` on the ``stc`` preset's 10
  clusters (drawn once, the same for every sample).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from tdsnn.bench.timing import copy_bandwidth, kernel_policy, measure

__all__ = ["pairs_suite", "v1_sheet"]


def v1_sheet(image_size: int, width: float):
    """``(sheet, config)``: the V1 sheet of a ``v1-v2-v4-it`` stack under ``stc-dense``."""
    from tdsnn.area_sheets import build_area_sheets
    from tdsnn.areas import AreaStack
    from tdsnn.bench.train_steps import step_config

    config = step_config("v1-v2-v4-it", width, 1, image_size, 4, 8, "stc-dense")
    model = AreaStack(config.model, num_classes=10)
    return build_area_sheets(model, config)["V1"], config


def _implementation(op: str, device: torch.device, policy: str) -> str:
    from tdsnn.info import op_implementation

    with kernel_policy(policy):
        return op_implementation(op, str(device.type))


def _cases(sheet, config, pairs: Tensor, tiles, device: torch.device, sizes) -> dict:
    """``{case: (fn returning the differentiated output, names of the compiled ops it uses)}``."""
    from tdsnn.ops.pairs import pair_moments
    from tdsnn.topo.forms import distance_kernel
    from tdsnn.topo.losses import stc_loss
    from tdsnn.topo.pairs import pair_distances, sample_cluster_index
    from tdsnn.topo.similarity import ccg_pairs, guarded_zscore, pair_dot, pearson_pairs
    from tdsnn.topo_config import TopoConfig

    gen = torch.Generator(device).manual_seed(0)
    n, s, t = sheet.num_units, sizes.pairs_samples, sizes.timesteps
    x = torch.randn(s, n, generator=gen, device=device).requires_grad_()
    spikes = (torch.rand(t, s, n, generator=gen, device=device) < 0.2).float().requires_grad_()
    z = guarded_zscore(x.detach(), 0).t().contiguous()  # [N, S]
    z_grad = z.clone().requires_grad_()
    positions = sheet.positions.to(device)
    kern = distance_kernel(pair_distances(positions, pairs))
    kc = kern - kern.mean()
    stc = TopoConfig.preset("stc")
    clusters = sample_cluster_index(
        sheet,
        stc.num_clusters,
        window_mm=sheet.neighbourhood_mm * stc.window_factor,
        max_units=stc.max_units,
        generator=gen,
        device=device,
    )

    def grad_of(out_fn: Callable[[], Tensor], wrt: Tensor) -> Callable[[], Tensor]:
        def run() -> Tensor:
            out = out_fn()
            torch.autograd.grad(out.sum() if out.dim() else out, wrt)
            return out.detach()

        return run

    return {
        "pair_similarity fwd": (lambda: pair_dot(z, z, pairs), ("pair_similarity",)),
        "pair_similarity fwd (tiles)": (lambda: pair_dot(z, z, tiles), ("pair_similarity",)),
        "pair_moments fwd+bwd (tiles)": (
            grad_of(lambda: pair_moments(z_grad, z_grad, tiles, kc), z_grad),
            ("pair_similarity",),
        ),
        "pearson_pairs fwd+bwd": (
            grad_of(lambda: pearson_pairs(x, pairs), x),
            ("pair_similarity",),
        ),
        "ccg_pairs fwd+bwd": (grad_of(lambda: ccg_pairs(spikes, pairs), spikes), ("pair_ccg",)),
        "stc-dense fwd+bwd": (
            grad_of(lambda: stc_loss(spikes, positions, tiles)["total"], spikes),
            ("pair_similarity", "pair_ccg"),
        ),
        "stc clusters fwd+bwd": (
            grad_of(lambda: stc_loss(spikes, positions, clusters)["total"], spikes),
            (),
        ),
    }


def pairs_suite(device: torch.device, sizes, *, warmup: int, repeats: int) -> list[dict]:
    """Rows: ``copy``, ``setup`` (sheet, pair count), then ``time`` rows per case and policy."""
    from tdsnn.bench.report import kernel_status
    from tdsnn.ops.tiles import pair_tiles
    from tdsnn.topo.pairs import csr_to_pairs, radius_pairs

    copy = copy_bandwidth(device, sizes.copy_bytes, warmup=warmup, repeats=repeats)
    sheet, config = v1_sheet(sizes.pairs_image_size, sizes.pairs_width)
    radius = sheet.neighbourhood_mm * config.topo.window_factor
    begin = time.perf_counter()
    pairs = csr_to_pairs(*radius_pairs(sheet.positions, radius)).to(device)
    pair_build_s = time.perf_counter() - begin
    begin = time.perf_counter()
    tiles = pair_tiles(pairs, sheet.num_units, sheet.positions)
    tiles_build_s = time.perf_counter() - begin
    n_pairs, n_units, m = int(pairs.shape[0]), sheet.num_units, sizes.pairs_samples
    rows_read = int((tiles.units >= 0).sum())
    rows: list[dict] = [
        {"kind": "copy", **copy},
        {
            "kind": "setup",
            "sheet": sheet.area,
            "shape": list(sheet.shape),
            "units": n_units,
            "radius_mm": radius,
            "pairs": n_pairs,
            "samples": m,
            "timesteps": sizes.timesteps,
            "pair_build_s": pair_build_s,
            "tiles": len(tiles.offsets) - 1,
            "tiles_build_s": tiles_build_s,
            "row_reads_per_pair": rows_read / max(n_pairs, 1),
        },
    ]
    rows[1]["text"] = (
        f"V1 sheet {tuple(sheet.shape)} = {n_units} units, radius {radius:.3f} mm: {n_pairs} "
        f"pairs (built in {pair_build_s:.1f} s) in {rows[1]['tiles']} tiles (built in "
        f"{tiles_build_s:.1f} s; {rows[1]['row_reads_per_pair']:.2f} row reads per pair, 2 "
        f"untiled); x [S={m}, N], spikes [T={sizes.timesteps}, B={m}, N]; %floor = "
        "bandwidth-floor time / median"
    )
    floor_bytes = 2 * n_units * m * 4 + n_pairs * 2 * 8 + n_pairs * 4
    floor_ms = floor_bytes / (copy["gb_per_s"] * 1e9) * 1e3
    kernels = kernel_status(device)
    variants = {"tdsnn-kernel": "cuda", "tdsnn-reference": "reference"}
    min_sample = 1.0 if device.type == "cuda" else 0.0
    for case, (fn, op) in _cases(sheet, config, pairs, tiles, device, sizes).items():
        ref = None
        for name, policy in variants.items():
            row = {"kind": "time", "case": case, "variant": name, "ops": list(op)}
            rows.append(row)
            if name == "tdsnn-kernel" and device.type != "cuda":
                row["status"] = (
                    "skipped: the pair ops have no CPU kernel (the PyTorch reference runs)"
                )
                continue
            if name == "tdsnn-kernel" and not kernels.get("available"):
                row["status"] = f"failed: kernel build: {kernels.get('error')}"
                continue
            row["implementation"] = (
                "; ".join(f"{o}: {_implementation(o, device, policy)}" for o in op)
                or "batched matmuls (no compiled op)"
            )
            try:
                with kernel_policy(policy):
                    out = fn()
                    timing = measure(
                        fn, device, warmup=warmup, repeats=repeats, min_sample_ms=min_sample
                    )
            except Exception as exc:  # noqa: BLE001 - report the variant, keep going
                row["status"] = f"failed: {type(exc).__name__}: {exc}"
                continue
            row.update(
                status="ok",
                median_ms=timing.median_ms,
                min_ms=timing.min_ms,
                timing=timing.to_dict(),
            )
            if policy == "reference":
                ref = out
            elif ref is None:
                row["_out"] = out  # compared once the reference has run
            if case.startswith("pair_similarity fwd"):
                row.update(
                    floor_bytes=floor_bytes,
                    floor_ms=floor_ms,
                    fraction_of_floor=floor_ms / timing.median_ms,
                )
        for row in rows:
            if row.get("case") == case and "_out" in row:
                out = row.pop("_out")
                if ref is not None:
                    scale = float(ref.abs().max()) or 1.0
                    row["max_rel_diff_vs_reference"] = float((out - ref).abs().max()) / scale
    return rows
