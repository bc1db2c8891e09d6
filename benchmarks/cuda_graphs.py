"""Time the training step with and without ``--cuda-graphs`` on small models (CUDA only).

    python benchmarks/cuda_graphs.py                         # widths 0.0625, 0.125, 0.25
    python benchmarks/cuda_graphs.py --widths 0.25,0.5 --batch-size 128 --json out.json

Per width, three variants of the step of ``tdsnn train`` (forward, STC loss of the ``--topo``
preset, backward, AdamW) on one batch of ``shapes`` images, each on its own copy of the model
(same initial weights), timed round robin: ``reference-stc`` (eager, the per-area reference
cluster sampler, which reads window sizes back to the host), ``eager`` (eager, clusters picked
on the device from the cluster banks) and ``graphed`` (:class:`tdsnn.step.GraphedStep`, the
step captured in CUDA graphs after 3 warm-up steps). All use the capturable AdamW that
``--cuda-graphs`` trains with, built by :func:`tdsnn.bench.train_steps.capturable_step` (the
builder of the ``tdsnn-graphed`` variant of ``tdsnn bench --suite step``, which times the
graphed step against the eager one with the plain AdamW at the suite's size). Prints the
median step times and the speed-up of ``graphed`` over ``eager``: what the graphs save with the
same optimiser, across model sizes, and what the banked clusters save over the reference
sampler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tdsnn.areas import AreaStack
from tdsnn.bench.timing import measure_round_robin
from tdsnn.bench.train_steps import capturable_step, shapes_batch, step_config
from tdsnn.errors import ConfigError
from tdsnn.topo.objective import TopoObjective


class ReferenceObjective(TopoObjective):
    """The objective on the per-area reference path (fresh windows, host reads)."""

    @property
    def batched(self) -> bool:
        return False


KINDS = ("reference-stc", "eager", "graphed")


def variants(config, device, images, labels) -> dict:
    """``{kind: one training step}`` of each of :data:`KINDS`, each on its own copy of one
    model (same initial weights)."""
    torch.manual_seed(0)
    template = AreaStack(config.model, num_classes=10).to(device)
    return {
        kind: capturable_step(
            template,
            config,
            images,
            labels,
            graphed=kind == "graphed",
            objective_type=ReferenceObjective if kind == "reference-stc" else TopoObjective,
        )
        for kind in KINDS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="0.0625,0.125,0.25", help="comma-separated")
    parser.add_argument("--area-stack", default="v1-v4-it")
    parser.add_argument("--topo", default="stc")
    parser.add_argument("--image-size", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(str(ConfigError("--cuda-graphs needs --device cuda")))
    device = torch.device("cuda")
    rows = []
    for width in (float(w) for w in args.widths.split(",")):
        config = step_config(
            args.area_stack, width, None, args.image_size, args.timesteps, args.batch_size,
            args.topo,
        )  # fmt: skip
        images, labels = shapes_batch(args.image_size, args.batch_size, device)
        fns = variants(config, device, images, labels)
        timings = measure_round_robin(fns, device, warmup=5, repeats=args.repeats)
        ms = {kind: timings[kind].median_ms for kind in KINDS}
        row = {"width": width, "median_ms": ms, "graphed_speedup": ms["eager"] / ms["graphed"]}
        rows.append(row)
        print(
            f"width {width:g}: reference-stc {ms['reference-stc']:.2f} ms, eager "
            f"{ms['eager']:.2f} ms, graphed {ms['graphed']:.2f} ms "
            f"(x{row['graphed_speedup']:.2f} over eager)"
        )
    if args.json:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({**meta, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
