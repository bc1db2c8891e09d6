"""Run directories (DESIGN section 12): checkpoints, sheets, metrics and trained models.

A run directory holds ``config.yaml`` (the resolved config), ``last.pt`` and ``best.pt``
(:class:`Checkpoint`), with ``--keep-epochs`` one checkpoint per epoch in ``epochs/``,
``metrics.jsonl`` (:class:`MetricsLog`), ``summary.json`` and, after
``tdsnn sheet optimize``, ``sheets.pt``. Whatever needs a trained model gets it from
:func:`load_run`, never from the training loop.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

import tdsnn
from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack, build_model
from tdsnn.atomic import append_text, write_atomic
from tdsnn.config import RunConfig, load_config
from tdsnn.errors import CheckpointError, ConfigError
from tdsnn.paths import check_run_dir
from tdsnn.sheet import Sheet

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "MetricsLog",
    "TrainedRun",
    "check_run_dir",
    "checkpoint_file",
    "config_for_resume",
    "default_run_dir",
    "epoch_checkpoint",
    "load_run",
    "load_torch_file",
    "read_sheets_file",
    "resumed_config",
    "run_sheets",
    "save_atomic",
    "started_without_checkpoint",
    "write_sheets_file",
    "write_summary",
]

CHECKPOINT_FORMAT = "tdsnn-checkpoint"
CHECKPOINT_VERSION = 2  # 2: one RNG state per rank and the world size (1: rank 0's only)
SHEETS_FORMAT = "tdsnn-sheets"
TRAIN_STATE_KEYS = ("epoch", "step", "global_step", "best_acc", "train_images", "train_seconds")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`tdsnn.atomic.write_atomic`: a kill never leaves half a
    file, a full disk is one line and leaves the previous file intact."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_torch_file(path: Path, what: str, map_location) -> Any:
    """``torch.load(weights_only=True)``; a missing, unreadable or foreign file is one error."""
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a corrupt file
        raise CheckpointError(
            f"{what} {path} is corrupt or not a tdsnn file ({type(exc).__name__}); "
            "delete it or use another run directory"
        ) from exc


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly, or to be used for inference.

    ``rng`` holds one :func:`tdsnn.runtime.rng_snapshot` per rank (``world_size`` entries);
    ``state`` the loop's counters (:data:`TRAIN_STATE_KEYS`); ``sheets`` each area's
    :meth:`Sheet.state_dict`.
    """

    config: dict
    model: dict
    num_classes: int
    in_channels: int
    optimizer: dict
    scheduler: dict
    state: dict
    sheets: dict
    rng: list
    world_size: int
    tdsnn_version: str = tdsnn.__version__

    def save(self, path: Path) -> None:
        data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
        save_atomic({**data, **dataclasses.asdict(self)}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read and check a checkpoint: any missing or mistyped entry is a CheckpointError."""
        path = Path(path)
        data = load_torch_file(path, "checkpoint", map_location)
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a tdsnn checkpoint (no '{CHECKPOINT_FORMAT}' header)"
            )
        version = data.get("version")
        if version == 1:  # rank 0's RNG state only, topographic generator inside it
            rng = dict(data.get("rng") or {})
            topo = rng.pop("topo", None)
            data = {**data, "rng": [{**rng, "generators": [] if topo is None else [topo]}]}
            data["world_size"] = 1
        elif version != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {version!r}, this tdsnn reads "
                f"versions 1 and {CHECKPOINT_VERSION}"
            )
        return cls(**_checked_fields(data, path))

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_saved(self.config)

    def build_model(self) -> AreaStack:
        """The checkpoint's model, weights loaded (on the CPU, in training mode)."""
        config = self.run_config
        model = build_model(config.model, self.num_classes, self.in_channels,
                            normalize=config.data.normalize)  # fmt: skip
        load_state(model, self.model, "model weights")
        return model


def _checked_fields(data: dict, path: Path) -> dict:
    """The :class:`Checkpoint` fields of ``data``, each present and of its type."""
    fields = {}
    for key, kind in typing.get_type_hints(Checkpoint).items():
        if key not in data:
            raise CheckpointError(
                f"checkpoint {path} has no '{key}' entry; it is incomplete or was not written "
                "by tdsnn train: delete it or use another run directory"
            )
        value = data[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint {path}: '{key}' should be a {kind.__name__}, got "
                f"{type(value).__name__}; the file is corrupt"
            )
        fields[key] = value
    missing = [k for k in TRAIN_STATE_KEYS if k not in fields["state"]]
    if missing:
        raise CheckpointError(f"checkpoint {path}: 'state' lacks {missing}; the file is corrupt")
    if len(fields["rng"]) != fields["world_size"] or fields["world_size"] < 1:
        raise CheckpointError(
            f"checkpoint {path} holds {len(fields['rng'])} RNG states for "
            f"{fields['world_size']} process(es); the file is corrupt"
        )
    return fields


def load_state(module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)`` with a mismatch turned into a one-line CheckpointError."""
    try:
        module.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{what} do not match this model: {first_line}") from exc


# --------------------------------------------------------------------------- run directories


def default_run_dir(config: RunConfig, resume: bool) -> Path:
    """``runs/<stack>-<dataset>-seed<seed>``: a new numbered directory; on resume the last."""
    stack = config.model.area_stack.lower() if config.model.arch == "stack" else config.model.arch
    base = Path("runs") / f"{stack}-{config.data.dataset}-seed{config.run.seed}"
    existing = [base] if base.exists() else []
    n = 2
    while Path(f"{base}-{n}").exists():
        existing.append(Path(f"{base}-{n}"))
        n += 1
    if resume:
        if not existing:
            raise CheckpointError(f"--resume: no run directory {base} to resume; pass --out")
        return existing[-1]
    return Path(f"{base}-{n}") if existing else base


def config_for_resume(overrides: dict) -> RunConfig:
    """The config to continue a run with: its checkpoint's config plus explicit ``overrides``.

    The run directory is ``overrides["run.out"]``, or the newest default-named directory.
    A run stopped before its first checkpoint continues from its ``config.yaml``.
    """
    requested = RunConfig().with_overrides(overrides)
    out = Path(requested.run.out) if requested.run.out else default_run_dir(requested, True)
    check_run_dir(out, must_exist=True)
    if started_without_checkpoint(out):
        saved = load_config(out / "config.yaml", saved=True)
    else:
        saved = Checkpoint.load(out / "last.pt").run_config
    return saved.with_overrides({**overrides, "run.out": str(out)})


def started_without_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` (an existing folder) holds a run stopped before its first checkpoint:
    its ``config.yaml`` and no ``last.pt``. A folder with neither is not a run directory."""
    if (run_dir / "last.pt").exists():
        return False
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"run directory {run_dir} holds no tdsnn run ({run_dir / 'last.pt'} does not "
            "exist, nor config.yaml); check --out, or train without --resume"
        )
    return True


def resumed_config(requested: RunConfig, checkpoint: Checkpoint, path: Path) -> RunConfig:
    """The checkpoint's config with the requested optimisation and run settings.

    The model, data, topographic loss and sheets must be those the checkpoint was trained with.
    """
    saved = checkpoint.run_config
    for section in ("model", "data", "topo", "sheet"):
        a, b = getattr(saved, section), getattr(requested, section)
        if a != b:
            diff = [
                f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)
            ]
            raise CheckpointError(
                f"checkpoint {path} was trained with different {section} settings "
                f"({', '.join(f'{section}.{k}' for k in diff)}); resume without changing them"
            )
    return dataclasses.replace(saved, optim=requested.optim, run=requested.run)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step or epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict) -> None:
        append_text(self.path, json.dumps(record) + "\n")

    def trim(self, global_step: int) -> None:
        """Drop lines logged after ``global_step`` (on resume they are logged again)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill
                continue
            if record.get("global_step", 0) <= global_step:
                keep.append(line)
        write_atomic(self.path, "".join(line + "\n" for line in keep))


def write_summary(run_dir: Path, summary: dict) -> None:
    """``summary.json``, written atomically: a run with one is complete."""
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


class TrainedRun(NamedTuple):
    """A trained run ready for inference: config, model (eval mode) and sheets."""

    config: RunConfig
    model: AreaStack
    sheets: dict[str, Sheet]


def epoch_checkpoint(epoch: int) -> str:
    """Path, relative to the run directory, of epoch ``epoch``'s checkpoint (``--keep-epochs``)."""
    return f"epochs/epoch-{int(epoch):03d}.pt"


def checkpoint_file(which: str | int) -> str:
    """Path, relative to the run directory, of checkpoint ``which``: ``best``, ``last``, or an
    epoch number (1-based) kept by ``--keep-epochs``."""
    if isinstance(which, int) and not isinstance(which, bool) and which >= 1:
        return epoch_checkpoint(which)
    if which in ("best", "last"):
        return f"{which}.pt"
    raise ConfigError(f"checkpoint {which!r} is not best, last or an epoch number (>= 1)")


def load_run(
    run_dir: str | Path, which: str | int = "best", device: str | torch.device = "cpu"
) -> TrainedRun:
    """The model of a run's checkpoint ``which`` (:func:`checkpoint_file`) on ``device``, in
    eval mode."""
    run_dir = check_run_dir(run_dir, must_exist=True)
    path = run_dir / checkpoint_file(which)
    checkpoint = Checkpoint.load(path)
    config = checkpoint.run_config
    try:
        model = checkpoint.build_model()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    shapes = model.output_shapes(config.data.image_size)
    sheets = check_sheets(load_sheet_states(checkpoint.sheets, str(path)), shapes, str(path))
    return TrainedRun(config, model.to(device).eval(), sheets)


# --------------------------------------------------------------------------- sheets


def run_sheets(
    model: AreaStack, config: RunConfig, checkpoint: Checkpoint | None = None
) -> dict[str, Sheet]:
    """The areas' sheets: from ``checkpoint``, else from ``sheet.positions``, else new."""
    shapes = model.output_shapes(config.data.image_size)
    if checkpoint is not None:
        return check_sheets(
            load_sheet_states(checkpoint.sheets, "checkpoint"), shapes, "checkpoint"
        )
    if config.sheet.positions:
        path = Path(config.sheet.positions)
        return check_sheets(read_sheets_file(path), shapes, str(path))
    return build_area_sheets(model, config)


def load_sheet_states(states: dict, where: str) -> dict[str, Sheet]:
    if not isinstance(states, dict) or not states:
        raise CheckpointError(f"{where} holds no cortical sheets")
    return {name: Sheet.from_state_dict(state) for name, state in states.items()}


def read_sheets_file(path: Path) -> dict[str, Sheet]:
    """Sheets saved by ``tdsnn sheet optimize`` (``sheets.pt``)."""
    data = load_torch_file(path, "sheet positions file", "cpu")
    if not isinstance(data, dict) or data.get("format") != SHEETS_FORMAT:
        raise CheckpointError(f"{path} is not a tdsnn sheets file (no '{SHEETS_FORMAT}' header)")
    return load_sheet_states(data.get("sheets"), str(path))


def write_sheets_file(sheets: dict[str, Sheet], path: Path, **metadata) -> None:
    states = {name: sheet.state_dict() for name, sheet in sheets.items()}
    save_atomic({"format": SHEETS_FORMAT, "sheets": states, **metadata}, path)


def check_sheets(
    sheets: dict[str, Sheet], shapes: dict[str, tuple[int, int, int]], where: str
) -> dict[str, Sheet]:
    """Sheets for exactly the areas in ``shapes``, each of the right unit shape."""
    for name, shape in shapes.items():
        if name not in sheets:
            raise CheckpointError(f"{where} has no sheet for area {name} (has {sorted(sheets)})")
        if tuple(sheets[name].shape) != tuple(shape):
            raise CheckpointError(
                f"{where}: the {name} sheet is for units of shape {tuple(sheets[name].shape)}, "
                f"the model's {name} has {tuple(shape)}"
            )
    return {name: sheets[name] for name in shapes}
