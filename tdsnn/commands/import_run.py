"""``tdsnn import``: a published network's ``state_dict`` as a run directory
(:mod:`tdsnn.published`)."""

from __future__ import annotations

import argparse

from tdsnn.model_config import ARCHS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import", help="a published network's state_dict (.pth) as a run directory"
    )
    p.add_argument("file", help="the state_dict, as torch.save of model.state_dict() wrote")
    p.add_argument("--arch", required=True, choices=[a for a in ARCHS if a != "stack"])
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--dataset", default=None, help="the dataset evaluate and record use")
    p.add_argument("--image-size", default=None, help="input side (pixels)")
    p.add_argument("--neuron", default=None, help="relu (the published network) or lif")
    p.add_argument("--timesteps", default=None, help="simulation steps with --neuron lif")
    p.add_argument("--normalize", default=None, help="MEAN,STD of the inputs, as trained")
    p.set_defaults(func=run)


# the data the published scripts trained on, per network
DEFAULTS = {
    "wsas-mnist": {"data.dataset": "mnist-5k", "data.image_size": 28, "model.neuron": "relu"},
    "wsas-cifar": {"data.dataset": "cifar10", "data.image_size": 32, "model.neuron": "relu"},
}


def run(args: argparse.Namespace) -> int:
    from tdsnn.config import RunConfig
    from tdsnn.published import import_state_dict

    given = {
        "data.dataset": args.dataset,
        "data.image_size": args.image_size,
        "model.neuron": args.neuron,
        "model.timesteps": args.timesteps,
        "data.normalize": args.normalize,
    }
    overrides = {**DEFAULTS[args.arch], "model.arch": args.arch, "topo.name": "none",
                 "run.out": args.out}  # fmt: skip
    overrides.update({key: value for key, value in given.items() if value is not None})
    config = RunConfig().with_overrides(overrides)
    out = import_state_dict(args.file, config, args.out)
    print(f"imported {args.file} as --arch {args.arch}: run directory {out}")
    return 0
