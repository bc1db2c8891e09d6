"""The options of ``tdsnn train``: each command-line flag and the config key it sets; and the
sizes of ``tdsnn sheet optimize`` and ``tdsnn bench``, declared once (:func:`tdsnn.fields.option`)
for the library functions, which check them in parameter terms, and for the command line, which
names the flags (:func:`tdsnn.fields.from_args`).

``tdsnn train`` builds its parser from these tables, and experiment specs name the options of
their arms the same way (``topo: stc``, ``until-plateau: 3``), so both speak one language.
Importing this module is cheap (no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tdsnn.errors import ConfigError
from tdsnn.fields import check_fields, option

__all__ = ["TRAIN_FLAGS", "TRAIN_OPTIONS", "checkpoint_interval", "option_key"]

# command-line flag -> (dotted config key, type, help); None defaults keep the config's value
TRAIN_OPTIONS: dict[str, tuple[str, type, str]] = {
    "--arch": ("model.arch", str, "stack, or a published network: wsas-mnist, wsas-cifar"),
    "--area-stack": ("model.area_stack", str, "areas in ventral order, e.g. v1-v4-it"),
    "--width": ("model.width", float, "channel multiplier of the area table"),
    "--blocks": ("model.blocks", int, "spiking residual blocks per area"),
    "--timesteps": ("model.timesteps", int, "simulation steps T per image"),
    "--encoding": ("model.encoding", str, "input encoding: direct or rate"),
    "--surrogate": ("model.surrogate", str, "surrogate gradient: atan, sigmoid, ..."),
    "--tau": ("model.tau", float, "LIF membrane time constant (steps)"),
    "--neuron": ("model.neuron", str, "lif (spiking) or relu (the non-spiking control, T = 1)"),
    "--readout": ("model.readout", str, "linear, or fc: a topographic layer 'readout' first"),
    "--readout-units": ("model.readout_units", int, "units of the fc readout layer (a grid)"),
    "--dataset": (
        "data.dataset",
        str,
        "shapes (built in), digits, mnist-5k, mnist, cifar10, imagefolder",
    ),
    "--data-root": ("data.data_root", str, "folder holding a real dataset"),
    "--image-size": ("data.image_size", int, "images are resized to this side (pixels)"),
    "--train-size": ("data.train_size", int, "training images to use (default: all)"),
    "--test-size": ("data.test_size", int, "test images to use (default: all)"),
    "--val-size": ("data.val_size", int, "training images held out for validation"),
    "--num-workers": ("data.num_workers", int, "data-loading worker processes"),
    "--normalize": (
        "data.normalize",
        str,
        "MEAN,STD: the model sees (image - MEAN) / STD, e.g. 0.1307,0.3081 (default: none)",
    ),
    "--epochs": ("optim.epochs", int, "training epochs (the cap with --until-plateau)"),
    "--until-plateau": (
        "optim.until_plateau",
        int,
        "stop when validation accuracy has not improved for this many epochs",
    ),
    "--batch-size": ("optim.batch_size", int, "images per step per process"),
    "--optimizer": ("optim.optimizer", str, "adamw (default), adam or sgd"),
    "--lr": ("optim.lr", float, "peak learning rate (see --schedule)"),
    "--schedule": (
        "optim.schedule",
        str,
        "cosine (warm-up, then cosine decay; default), constant (lr at every step) or step "
        "(warm-up, then x0.1 at half and again at three quarters of the steps)",
    ),
    "--weight-decay": (
        "optim.weight_decay",
        float,
        "weight decay: decoupled for adamw, L2 for adam and sgd",
    ),
    "--momentum": ("optim.momentum", float, "sgd momentum (default 0.9)"),
    "--select": (
        "optim.select",
        str,
        "what best.pt holds: best-val (the best validation epoch; default) or final (the last)",
    ),
    "--topo": ("topo.name", str, "topographic loss: stc, stc-dense, ws, as, tdann, toploss, none"),
    "--alpha": ("topo.alpha", float, "weight of the rate term (or of ws/as/toploss)"),
    "--beta": ("topo.beta", float, "weight of the synchrony (r_CCG) term"),
    "--gamma": ("topo.gamma", float, "weight of the membrane term"),
    "--topo-warmup": ("topo.warmup", float, "fraction of training over which it ramps up"),
    "--topo-area-weights": (
        "topo.area_weights",
        str,
        "per-area weights of the summed loss, e.g. V1=1,V4=0.5 (areas not named: 1)",
    ),
    "--layout": (
        "sheet.layout",
        str,
        "sheet layout: auto, random, swap, retinotopic, tiled or grid",
    ),
    "--sheets": ("sheet.positions", str, "sheets.pt written by `tdsnn sheet optimize`"),
    "--device": ("run.device", str, "auto, cpu or cuda"),
    "--seed": ("run.seed", int, "seed of every random choice"),
    "--out": ("run.out", str, "run directory (default runs/<stack>-<dataset>-seed<seed>)"),
    "--log-every": ("run.log_every", int, "optimiser steps between metrics lines"),
    "--checkpoint-every": (
        "run.checkpoint_every",
        str,
        "also save last.pt mid-epoch this often: 10m, 90s, 2h, 500steps or off (default 10m)",
    ),
}
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "--download": ("data.download", "download a real dataset into --data-root if missing"),
    "--amp": ("run.amp", "bf16 autocast on CUDA"),
    "--cuda-graphs": (
        "run.cuda_graphs",
        "capture the training step in CUDA graphs after 3 warm-up steps and replay it (CUDA, "
        "one process; helps small models, whose steps are launch-bound)",
    ),
    "--quiet": ("run.quiet", "no progress bar or per-epoch lines"),
    "--keep-epochs": ("run.keep_epochs", "also keep every epoch's checkpoint in epochs/"),
}


def option_key(name: str) -> str:
    """The dotted config key of a train option named as on the command line, with or without
    its dashes (``"until-plateau"`` -> ``"optim.until_plateau"``); dotted keys pass as they are.
    """
    text = str(name).strip()
    if "." in text:
        return text
    flag = "--" + text.lstrip("-")
    if flag in TRAIN_OPTIONS:
        return TRAIN_OPTIONS[flag][0]
    if flag in TRAIN_FLAGS:
        return TRAIN_FLAGS[flag][0]
    valid = sorted(f.lstrip("-") for f in (*TRAIN_OPTIONS, *TRAIN_FLAGS))
    raise ConfigError(f"unknown train option {name!r}; valid: {', '.join(valid)} or section.key")


_TIME_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
_INTERVAL = re.compile(r"(\d+(?:\.\d*)?)\s*(s|sec|m|min|h|steps?)")


def checkpoint_interval(text: str) -> tuple[float | None, int | None]:
    """``--checkpoint-every`` as ``(seconds, steps)``, at most one of them set: ``"10m"`` ->
    ``(600.0, None)``, ``"500steps"`` -> ``(None, 500)``, ``"off"`` -> ``(None, None)``."""
    value = str(text).strip().lower()
    if value in ("off", "never", "0"):
        return None, None
    match = _INTERVAL.fullmatch(value)
    number = float(match.group(1)) if match else 0.0
    unit = match.group(2) if match else ""
    if unit.startswith("step") and number.is_integer() and number >= 1:
        return None, int(number)
    if unit in _TIME_UNITS and number > 0:
        return number * _TIME_UNITS[unit], None
    raise ConfigError(
        f"run.checkpoint_every must be a wall time (90s, 10m, 2h), a step count (500steps) "
        f"or off, got {text!r}"
    )


@dataclass(frozen=True)
class SwapOptions:
    """The sizes of :func:`tdsnn.sheet_optimize.optimize_run_sheets` (``tdsnn sheet optimize``)."""

    # neighbourhoods per area; None = TDANN's plan (tdsnn.area_sheets.swap_plan)
    steps: int | None = option(None, low=1, high=10_000_000)
    swaps_per_step: int = option(500, low=1, high=10_000_000)  # swap proposals each
    seed: int = option(0, low=0, high=2**32 - 1)

    def __post_init__(self) -> None:
        check_fields(self, "")


@dataclass(frozen=True)
class TimingOptions:
    """Timed samples and untimed calls of every measurement of :func:`tdsnn.bench.run_bench`
    (``tdsnn bench``; None: the suite's default)."""

    repeats: int | None = option(None, low=1, high=100_000)
    warmup: int | None = option(None, low=0, high=100_000)

    def __post_init__(self) -> None:
        check_fields(self, "")
