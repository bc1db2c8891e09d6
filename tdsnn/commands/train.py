"""``tdsnn train``: train an area stack and write a run directory (DESIGN section 12)."""

from __future__ import annotations

import argparse
import os

from tdsnn.errors import ConfigError
from tdsnn.options import TRAIN_FLAGS, TRAIN_OPTIONS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an area stack and write a run directory")
    p.add_argument("--config", help="YAML run config; command-line options override it")
    # values are parsed as text and converted by the config, which checks type and range once
    for flag, (_, _, text) in TRAIN_OPTIONS.items():
        p.add_argument(flag, default=None, help=text)
    for flag, (_, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, action="store_true", default=None, help=text)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from last.pt (from the start if killed before one)",
    )
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """``{"section.key": value}`` for every option given on the command line."""
    overrides = {}
    for flag, (key, *_) in {**TRAIN_OPTIONS, **TRAIN_FLAGS}.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[key] = value
    return overrides


STACK_ONLY = ("--area-stack", "--width", "--blocks", "--readout")


def check_arch_options(arch: str, overrides: dict) -> None:
    """Refuse the options that shape an area stack for a published network (``--arch``)."""
    given = [flag for flag in STACK_ONLY if TRAIN_OPTIONS[flag][0] in overrides]
    if arch != "stack" and given:
        raise ConfigError(
            f"--arch {arch} is a fixed published network: {', '.join(given)} shape(s) the area "
            "stacks only (--arch stack); drop them"
        )


def run(args: argparse.Namespace) -> int:
    from tdsnn.config import load_config  # no torch: a bad option is answered at once

    if args.resume and args.config:
        raise ConfigError("--resume takes the run's config from its checkpoint; drop --config")
    overrides = overrides_from_args(args)
    if overrides.get("model.arch", "stack") != "stack" and not (args.config or args.resume):
        # a published network trains as published (no topographic loss) unless --topo says
        overrides.setdefault("topo.name", "none")
    if args.resume:
        from tdsnn.rundir import config_for_resume

        config = config_for_resume(overrides)
    else:
        config = load_config(args.config, overrides)
    check_arch_options(config.model.arch, overrides)
    summary = train_config(config, resume=args.resume)
    if not config.run.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"test accuracy {summary['test_acc']:.4f} after {summary['epochs']} epochs, "
            f"{summary['images_per_s']:.0f} images/s, {summary['wall_seconds']:.0f} s; "
            f"run directory {summary['run_dir']}"
        )
    return 0


def train_config(config, *, resume: bool = False) -> dict:
    """Train ``config`` (a :class:`~tdsnn.config.RunConfig`) as ``tdsnn train`` does and
    return its summary: the one door to the training loop (:mod:`tdsnn.train`), which the
    experiment's workers use too. Raises :class:`~tdsnn.errors.Stopped` on Ctrl-C/SIGTERM."""
    from tdsnn.train import train

    return train(config, resume=resume)
