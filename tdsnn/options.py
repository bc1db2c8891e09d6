"""The options of ``tdsnn train``: each command-line flag and the config key it sets.

``tdsnn train`` builds its parser from these tables, and experiment specs name the options of
their arms the same way (``topo: stc``, ``until-plateau: 3``), so both speak one language.
Importing this module is cheap (no torch).
"""

from __future__ import annotations

from tdsnn.errors import ConfigError

__all__ = ["TRAIN_FLAGS", "TRAIN_OPTIONS", "option_key"]

# command-line flag -> (dotted config key, type, help); None defaults keep the config's value
TRAIN_OPTIONS: dict[str, tuple[str, type, str]] = {
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
    "--dataset": ("data.dataset", str, "shapes (built in), digits, mnist, cifar10, imagefolder"),
    "--data-root": ("data.data_root", str, "folder holding a real dataset"),
    "--image-size": ("data.image_size", int, "images are resized to this side (pixels)"),
    "--train-size": ("data.train_size", int, "training images to use (default: all)"),
    "--test-size": ("data.test_size", int, "test images to use (default: all)"),
    "--val-size": ("data.val_size", int, "training images held out for validation"),
    "--num-workers": ("data.num_workers", int, "data-loading worker processes"),
    "--epochs": ("optim.epochs", int, "training epochs (the cap with --until-plateau)"),
    "--until-plateau": (
        "optim.until_plateau",
        int,
        "stop when validation accuracy has not improved for this many epochs",
    ),
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
