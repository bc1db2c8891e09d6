"""The ``tdsnn`` command line: ``tdsnn train``, ``tdsnn sheet optimize``, ``tdsnn info``.

User mistakes (:class:`tdsnn.errors.UserError`) are printed as one line with a non-zero exit;
set ``TDSNN_DEBUG=1`` to see their traceback too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from tdsnn.errors import ConfigError, UserError

# command-line flag -> dotted config key; None defaults mean "keep the config's value"
TRAIN_OPTIONS: dict[str, tuple[str, type | None, str]] = {
    "--area-stack": ("model.area_stack", str, "areas in ventral order, e.g. v1-v4-it"),
    "--width": ("model.width", float, "channel multiplier of the area table"),
    "--blocks": ("model.blocks", int, "spiking residual blocks per area"),
    "--timesteps": ("model.timesteps", int, "simulation steps T per image"),
    "--encoding": ("model.encoding", str, "input encoding: direct or rate"),
    "--surrogate": ("model.surrogate", str, "surrogate gradient: atan, sigmoid, ..."),
    "--tau": ("model.tau", float, "LIF membrane time constant (steps)"),
    "--dataset": ("data.dataset", str, "shapes (built in), mnist, cifar10 or imagefolder"),
    "--data-root": ("data.data_root", str, "folder holding a real dataset"),
    "--image-size": ("data.image_size", int, "images are resized to this side (pixels)"),
    "--train-size": ("data.train_size", int, "training images to use (default: all)"),
    "--test-size": ("data.test_size", int, "test images to use (default: all)"),
    "--num-workers": ("data.num_workers", int, "data-loading worker processes"),
    "--epochs": ("optim.epochs", int, "training epochs"),
    "--batch-size": ("optim.batch_size", int, "images per step per process"),
    "--lr": ("optim.lr", float, "peak learning rate (warm-up, then cosine decay)"),
    "--weight-decay": ("optim.weight_decay", float, "AdamW weight decay"),
    "--topo": ("topo.name", str, "topographic loss: stc, stc-dense, ws, as, tdann, toploss, none"),
    "--alpha": ("topo.alpha", float, "weight of the rate term (or of ws/as/toploss)"),
    "--beta": ("topo.beta", float, "weight of the synchrony (r_CCG) term"),
    "--gamma": ("topo.gamma", float, "weight of the membrane term"),
    "--topo-warmup": ("topo.warmup", float, "fraction of training over which it ramps up"),
    "--layout": ("sheet.layout", str, "sheet layout: auto, retinotopic, tiled or grid"),
    "--sheets": ("sheet.positions", str, "sheets.pt written by `tdsnn sheet optimize`"),
    "--device": ("run.device", str, "auto, cpu or cuda"),
    "--seed": ("run.seed", int, "seed of every random choice"),
    "--out": ("run.out", str, "run directory (default runs/<stack>-<dataset>-seed<seed>)"),
    "--log-every": ("run.log_every", int, "optimiser steps between metrics lines"),
}
TRAIN_FLAGS = {
    "--download": ("data.download", "download a real dataset into --data-root if missing"),
    "--amp": ("run.amp", "bf16 autocast on CUDA"),
    "--quiet": ("run.quiet", "no progress bar or per-epoch lines"),
}


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an area stack and write a run directory")
    p.add_argument("--config", help="YAML run config; command-line options override it")
    for flag, (_, kind, text) in TRAIN_OPTIONS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    for flag, (_, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, action="store_true", default=None, help=text)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.set_defaults(func=run_train)


def train_overrides(args: argparse.Namespace) -> dict:
    overrides = {}
    for flag, (key, *_) in {**TRAIN_OPTIONS, **TRAIN_FLAGS}.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from tdsnn.config import load_config
    from tdsnn.train import config_for_resume, train

    if args.resume and args.config:
        raise ConfigError("--resume takes the run's config from its checkpoint; drop --config")
    overrides = train_overrides(args)
    config = config_for_resume(overrides) if args.resume else load_config(args.config, overrides)
    try:
        summary = train(config, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if summary and not config.run.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"test accuracy {summary['test_acc']:.4f} after {summary['epochs']} epochs, "
            f"{summary['images_per_s']:.0f} images/s, {summary['wall_seconds']:.0f} s; "
            f"run directory {summary['run_dir']}"
        )
    return 0


def add_info_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="versions, device and kernel status (for bug reports)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from tdsnn.info import collect_info

    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def add_sheet_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sheet", help="cortical sheets of a run")
    actions = p.add_subparsers(dest="action", required=True)
    opt = actions.add_parser(
        "optimize", help="swap-optimise a trained run's sheets on grating responses (TDANN)"
    )
    opt.add_argument("run_dir", help="run directory written by tdsnn train")
    opt.add_argument("--steps", type=int, default=2000, help="neighbourhoods per area")
    opt.add_argument("--swaps-per-step", type=int, default=500, help="swap proposals each")
    opt.add_argument("--areas", help="comma-separated areas (default: every area)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--quiet", action="store_true")
    opt.set_defaults(func=run_sheet_optimize)


def run_sheet_optimize(args: argparse.Namespace) -> int:
    from tdsnn.swapopt import optimize_run_sheets

    if args.steps < 1 or args.swaps_per_step < 1:
        raise ConfigError("--steps and --swaps-per-step must be >= 1")
    areas = tuple(a.strip() for a in args.areas.split(",") if a.strip()) if args.areas else None
    report = optimize_run_sheets(
        args.run_dir, steps=args.steps, swaps_per_step=args.swaps_per_step, areas=areas,
        seed=args.seed, quiet=args.quiet,
    )  # fmt: skip
    for area, losses in report.items():
        print(
            f"{area}: rate loss on gratings {losses['rate_loss_before']:.4f} -> "
            f"{losses['rate_loss_after']:.4f}"
        )
    print(f"wrote {args.run_dir}/sheets.pt; train on it with --sheets {args.run_dir}/sheets.pt")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdsnn", description="Topographic deep spiking neural networks of the ventral stream."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_sheet_parser(subparsers)
    add_info_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if os.environ.get("TDSNN_DEBUG"):
            raise
        print(f"tdsnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
