"""``tdsnn train``: train an area stack and write a run directory (DESIGN section 12)."""

from __future__ import annotations

import argparse
import os

from tdsnn.errors import ConfigError

# command-line flag -> (dotted config key, type, help); None defaults keep the config's value
TRAIN_OPTIONS: dict[str, tuple[str, type, str]] = {
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
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "--download": ("data.download", "download a real dataset into --data-root if missing"),
    "--amp": ("run.amp", "bf16 autocast on CUDA"),
    "--quiet": ("run.quiet", "no progress bar or per-epoch lines"),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an area stack and write a run directory")
    p.add_argument("--config", help="YAML run config; command-line options override it")
    # values are parsed as text and converted by the config, which checks type and range once
    for flag, (_, _, text) in TRAIN_OPTIONS.items():
        p.add_argument(flag, default=None, help=text)
    for flag, (_, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, action="store_true", default=None, help=text)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """``{"section.key": value}`` for every option given on the command line."""
    overrides = {}
    for flag, (key, *_) in {**TRAIN_OPTIONS, **TRAIN_FLAGS}.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    from tdsnn.config import load_config
    from tdsnn.rundir import config_for_resume
    from tdsnn.train import train

    if args.resume and args.config:
        raise ConfigError("--resume takes the run's config from its checkpoint; drop --config")
    overrides = overrides_from_args(args)
    config = config_for_resume(overrides) if args.resume else load_config(args.config, overrides)
    summary = train(config, resume=args.resume)
    if summary is None:  # stopped by Ctrl-C or SIGTERM at a step boundary, last.pt saved
        return 130
    if not config.run.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"test accuracy {summary['test_acc']:.4f} after {summary['epochs']} epochs, "
            f"{summary['images_per_s']:.0f} images/s, {summary['wall_seconds']:.0f} s; "
            f"run directory {summary['run_dir']}"
        )
    return 0
