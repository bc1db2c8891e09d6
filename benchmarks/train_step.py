"""Time one training step (forward, topographic loss, backward, AdamW) with each --topo preset.

    python benchmarks/train_step.py                      # the default run's model, CPU
    python benchmarks/train_step.py --topo none,stc --width 0.25 --device cuda
    python benchmarks/train_step.py --config configs/paper-resnet18.yaml --device cuda --amp

Prints device, versions, shapes and the median step time of each preset, and the overhead of
each preset relative to the first. Steps alternate between presets so that drifts in machine
load hit all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tdsnn.areas import AreaStack
from tdsnn.bench.train_steps import make_step  # the step `tdsnn bench` times too
from tdsnn.config import load_config


def _blocks(text: str) -> int | None:
    """``--blocks``: a count per area, or ``table`` for the area table's own."""
    return None if text == "table" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config (YAML) whose model, sizes and presets to use")
    args, _ = parser.parse_known_args()
    defaults = load_config(args.config)
    parser.add_argument("--topo", default="none,stc", help="comma-separated presets")
    parser.add_argument("--area-stack", default=defaults.model.area_stack)
    parser.add_argument("--width", type=float, default=defaults.model.width)
    parser.add_argument(
        "--blocks", type=_blocks, default=defaults.model.blocks, help="per area, or 'table'"
    )
    parser.add_argument("--timesteps", type=int, default=defaults.model.timesteps)
    parser.add_argument("--image-size", type=int, default=defaults.data.image_size)
    parser.add_argument("--batch-size", type=int, default=defaults.optim.batch_size)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--max-units", type=int, help="override the presets' cluster size cap")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--profile", help="also profile 5 steps of each preset (torch.profiler) into this folder"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    steps = {}
    for name in args.topo.split(","):
        config = defaults.with_overrides({
            "model.area_stack": args.area_stack, "model.width": args.width,
            "model.blocks": args.blocks, "model.timesteps": args.timesteps,
            "data.image_size": args.image_size,
        })  # fmt: skip
        config = config.with_overrides({"topo.name": name})
        if args.max_units is not None:
            config = config.with_overrides({"topo.max_units": args.max_units})
        model = AreaStack(config.model, num_classes=10).to(device)
        steps[name] = make_step(model, config, images, labels, seed=0, amp=args.amp)
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    first = next(iter(medians.values()))
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"{args.area_stack} width {args.width} blocks {args.blocks} T={args.timesteps} "
        f"batch {args.batch_size} image {args.image_size}px amp {args.amp}"
    )
    for name, median in medians.items():
        print(
            f"  {name:10s} {median * 1e3:8.1f} ms/step  {args.batch_size / median:7.1f} images/s"
            f"  overhead {100 * (median / first - 1):+6.1f} %"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "median_s": medians}, f, indent=2)
    if args.profile:
        for name, step in steps.items():
            profile(name, step, device, Path(args.profile))


def profile(name: str, step, device: torch.device, folder: Path, steps: int = 5) -> None:
    """Profile ``steps`` calls of ``step``: the operators by self time (``NAME.txt``), the
    kernel launches and device syncs per step, and a Chrome trace (``NAME.json``)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    folder.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=40)
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    syncs = sum(
        e.count
        for e in averages
        if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync")
    )
    summary = (
        f"{name}: {launches / steps:.0f} kernel launches, {syncs / steps:.1f} memcpy/syncs per step"
    )
    (folder / f"{name}.txt").write_text(summary + "\n" + table)
    prof.export_chrome_trace(str(folder / f"{name}.json"))
    print(summary)
    print(averages.table(sort_by=sort, row_limit=15))


if __name__ == "__main__":
    main()
