"""Bring your own checkpoint: a published network's ``state_dict`` as a tdsnn run directory.

``tdsnn import FILE.pth --arch wsas-mnist --out RUN_DIR`` reads a ``state_dict`` saved by
Truong & Hasson's scripts (``torch.save of model.state_dict()``, parameter names
``conv1.weight``, ``bn1.running_mean``, ``fc1.bias``, ``fc2.weight``, ...), checks its keys and
shapes against the network ``--arch`` names (:data:`tdsnn.model_config.PAPER_LAYERS`) and writes
``config.yaml``, ``best.pt`` (a :class:`~tdsnn.rundir.Checkpoint` with new sheets and no
optimiser state: it cannot be resumed) and ``summary.json``: what ``evaluate``, ``record``,
``analyze``, ``view`` and ``export`` read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import build_model, published_keys
from tdsnn.config import RunConfig, save_config
from tdsnn.errors import CheckpointError, ConfigError
from tdsnn.rundir import (
    TRAIN_STATE_KEYS,
    Checkpoint,
    check_run_dir,
    load_torch_file,
    write_summary,
)
from tdsnn.runtime import rng_snapshot

__all__ = ["import_state_dict", "read_state_dict"]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The ``{name: tensor}`` mapping saved at ``path`` (``torch.load(weights_only=True)``);
    anything else is a one-line CheckpointError."""
    path = Path(path)
    state = load_torch_file(path, "state dict", "cpu")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict (a mapping of parameter "
            "names to tensors, as torch.save of model.state_dict() writes)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"{path} is not a state dict: entries {bad[:5]} are not named tensors"
        )
    return dict(state)


def _to_published(arch: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """tdsnn's ``state`` of a :class:`~tdsnn.areas.PaperNet` under the published names."""
    names = {ours: theirs for theirs, ours in published_keys(arch).items()}
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        out[f"{names[head]}.{leaf}"] = value
    return out


def _check_keys(path: Path, arch: str, given: Mapping[str, Tensor], wanted: dict) -> None:
    """One line naming the missing, extra and mis-shaped entries of ``given``, if any."""
    missing = sorted(set(wanted) - set(given))
    extra = sorted(set(given) - set(wanted))
    shapes = sorted(
        f"{k} {tuple(given[k].shape)} (expected {tuple(wanted[k].shape)})"
        for k in set(given) & set(wanted)
        if given[k].shape != wanted[k].shape
    )
    problems = [
        f"{label}: {', '.join(items)}"
        for label, items in (("missing", missing), ("unexpected", extra), ("shape", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit --arch {arch}: {'; '.join(problems)}")


def import_state_dict(path: str | Path, config: RunConfig, out: str | Path) -> Path:
    """Write the run directory ``out`` for the published ``state_dict`` at ``path`` under
    ``config`` (its ``model.arch`` names the network; input channels and classes are read
    from the file's ``conv1`` and ``fc2``). Returns ``out``."""
    arch = config.model.arch
    if arch == "stack":
        raise ConfigError("tdsnn import reads published networks: pass --arch wsas-mnist or "
                          "--arch wsas-cifar")  # fmt: skip
    path = Path(path)
    given = read_state_dict(path)
    for key in ("conv1.weight", "fc2.weight"):
        if key not in given or given[key].dim() < 2:
            raise CheckpointError(f"{path} does not fit --arch {arch}: no 2-D+ {key}")
    num_classes, in_channels = given["fc2.weight"].shape[0], given["conv1.weight"].shape[1]
    model = build_model(config.model, num_classes, in_channels)
    _check_keys(path, arch, given, _to_published(arch, model.state_dict()))
    model.load_state_dict(given)
    out = check_run_dir(out, must_exist=False)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    sheets = build_area_sheets(model, config)
    Checkpoint(
        config=config.to_dict(),
        model=model.state_dict(),
        num_classes=int(num_classes),
        in_channels=int(in_channels),
        optimizer={},
        scheduler={},
        state={key: 0 for key in TRAIN_STATE_KEYS} | {"best_acc": -1.0},
        sheets={name: sheet.state_dict() for name, sheet in sheets.items()},
        rng=[rng_snapshot()],
        world_size=1,
    ).save(out / "best.pt")
    write_summary(out, {"imported_from": str(path.resolve()), "arch": arch,
                        "run_dir": str(out)})  # fmt: skip
    return out
