"""Training loop for area stacks: single process, or DDP under ``torchrun``.

A run directory (DESIGN section 12) holds ``config.yaml``, ``last.pt`` / ``best.pt``,
``metrics.jsonl`` and ``summary.json``. Batches of an epoch are a fixed function of
``(seed, epoch)``, and checkpoints store the optimiser, scheduler and RNG states at a step
boundary, so ``--resume`` after Ctrl-C continues to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm

import tdsnn
from tdsnn.areas import AreaStack, StackOutput, area_spike_counts, count_parameters
from tdsnn.config import RunConfig, save_config
from tdsnn.data import build_datasets, make_loader
from tdsnn.errors import CheckpointError, ConfigError, TrainingDiverged
from tdsnn.sheet import Sheet, build_sheet
from tdsnn.topo import TopoConfig, topo_loss
from tdsnn.topo.metrics import (
    neighbour_rate_correlation,
    neighbour_weight_cosine,
    topography_score,
)

CHECKPOINT_FORMAT = "tdsnn-checkpoint"
CHECKPOINT_VERSION = 1
SHEETS_FORMAT = "tdsnn-sheets"
SCORE_IMAGES = 512  # held-out test images behind the topography scores of summary.json


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def select_device(requested: str, dist_info: DistInfo) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {requested!r} is not one of auto, cpu, cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA device is available")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = dist_info.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def environment_info(device: torch.device) -> dict:
    info = {
        "tdsnn": tdsnn.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------- data order


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation fixed by ``(seed, epoch)``, sharded by rank.

    ``start`` skips the first ``start`` indices of this rank's shard (used on resume).
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(size, generator=generator)
        per_rank = len(order) // world_size
        self.indices = order[rank * per_rank : (rank + 1) * per_rank][start:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------- run directory


def default_run_dir(config: RunConfig, resume: bool) -> Path:
    """``runs/<stack>-<dataset>-seed<seed>[-N]``: a new numbered directory; on resume the last."""
    base = (
        Path("runs")
        / f"{config.model.area_stack.lower()}-{config.data.dataset}-seed{config.run.seed}"
    )
    existing = [base] if base.exists() else []
    n = 2
    while Path(f"{base}-{n}").exists():
        existing.append(Path(f"{base}-{n}"))
        n += 1
    if resume:
        if not existing:
            raise CheckpointError(
                f"--resume: no run directory {base} to resume; pass --out RUN_DIR"
            )
        return existing[-1]
    return Path(f"{base}-{n}") if existing else base


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a tdsnn checkpoint, turning any unreadable or foreign file into a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a corrupt file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a tdsnn checkpoint ({type(exc).__name__}); "
            "delete it or use another run directory"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a tdsnn checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}, "
            f"this tdsnn reads version {CHECKPOINT_VERSION}"
        )
    return state


def save_atomic(obj: dict, path: Path) -> None:
    """Write a checkpoint so that an interruption never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resumed_config(requested: RunConfig, checkpoint: dict, path: Path) -> RunConfig:
    """The checkpoint's config, with the requested optimisation length and run settings."""
    saved = RunConfig.from_dict(checkpoint["config"])
    for section in ("model", "data", "topo", "sheet"):
        a, b = getattr(saved, section), getattr(requested, section)
        if a != b:
            diff = [k for k in a.__dataclass_fields__ if getattr(a, k) != getattr(b, k)]
            raise CheckpointError(
                f"checkpoint {path} was trained with different {section} settings "
                f"({', '.join(f'{section}.{k}' for k in diff)}); resume without changing them"
            )
    return RunConfig(
        model=saved.model,
        data=saved.data,
        optim=requested.optim,
        topo=saved.topo,
        sheet=saved.sheet,
        run=requested.run,
    )


def config_for_resume(overrides: dict) -> RunConfig:
    """The config to continue a run with: its checkpoint's config plus explicit ``overrides``.

    The run directory is ``overrides["run.out"]``, or the newest default-named directory.
    """
    requested = RunConfig().with_overrides(overrides)
    out = Path(requested.run.out) if requested.run.out else default_run_dir(requested, True)
    saved = RunConfig.from_dict(load_checkpoint(out / "last.pt")["config"])
    return saved.with_overrides({**overrides, "run.out": str(out)})


# --------------------------------------------------------------------------- training


@dataclass
class TrainState:
    epoch: int = 0  # current epoch
    step: int = 0  # optimiser steps completed in the current epoch
    global_step: int = 0
    best_acc: float = -1.0
    train_images: int = 0
    train_seconds: float = 0.0


StepCallback = Callable[[TrainState], None]


class Trainer:
    """Trains one :class:`AreaStack` on one dataset and writes its run directory."""

    def __init__(
        self, config: RunConfig, *, resume: bool = False, on_step: StepCallback | None = None
    ):
        self.requested = config
        self.resume = resume
        self.on_step = on_step

    # ---- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.requested
        wants_cuda = config.run.device == "cuda" or (
            config.run.device == "auto" and torch.cuda.is_available()
        )
        self.dist = init_distributed("cuda" if wants_cuda else "cpu")
        self.device = select_device(config.run.device, self.dist)
        self.out = Path(config.run.out) if config.run.out else default_run_dir(config, self.resume)
        self.out = self._agree_on_path(self.out)
        checkpoint = None
        if self.resume:
            checkpoint = load_checkpoint(self.out / "last.pt")
            config = resumed_config(config, checkpoint, self.out / "last.pt")
        elif (self.out / "last.pt").exists():
            raise ConfigError(
                f"run directory {self.out} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        if config.run.amp and self.device.type != "cuda":
            raise ConfigError("--amp (bf16 autocast) needs a CUDA device")
        self.config = config
        torch.manual_seed(config.run.seed)
        self.train_set, self.test_set, self.data_info = build_datasets(
            config.data.dataset,
            data_root=config.data.data_root,
            image_size=config.data.image_size,
            download=config.data.download and self.dist.is_main,
            seed=config.run.seed,
            train_size=config.data.train_size,
            test_size=config.data.test_size,
        )
        self.model = AreaStack(config.model, self.data_info.num_classes, self.data_info.channels)
        self.model.to(self.device)
        self.sheets = self._sheets(checkpoint)
        self.topo_areas = config.topo.select_areas(self.model.area_names)
        # cluster draws of the topographic loss: their own stream, saved in checkpoints
        self.topo_generator = torch.Generator().manual_seed(config.run.seed + 7919 * self.dist.rank)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = max(1, self.steps_per_epoch * config.optim.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.state = TrainState()
        if checkpoint is not None:
            self._restore(checkpoint)
        self._rng_at_step = self._rng_snapshot()
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # LIF state is never a buffer (it is re-created every forward), so the only buffers
            # broadcast from rank 0 are batch-norm running statistics.
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
            self._trim_metrics()

    def _agree_on_path(self, path: Path) -> Path:
        if not self.dist.enabled:
            return path
        holder = [str(path)]
        dist.broadcast_object_list(holder, src=0)
        return Path(holder[0])

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up over the first 10 % of steps, then cosine decay to 0 at the end.

        Read from ``total_steps`` at every step, so resuming with more ``--epochs`` stretches the
        rest of the schedule.
        """
        warmup = max(1, int(0.1 * self.total_steps))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _topo_ramp(self) -> float:
        """Factor on the topographic loss: ramps 0 -> 1 over ``topo.warmup`` of training."""
        warmup_steps = self.config.topo.warmup * self.total_steps
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.state.global_step + 1) / warmup_steps)

    def _sheets(self, checkpoint: dict | None) -> dict[str, Sheet]:
        """The areas' sheets: from the checkpoint, from ``sheet.positions``, or built anew."""
        shapes = self.model.output_shapes(self.config.data.image_size)
        if checkpoint is not None:
            return check_sheets(load_sheet_states(checkpoint, "checkpoint"), shapes, "checkpoint")
        if self.config.sheet.positions:
            path = Path(self.config.sheet.positions)
            return check_sheets(read_sheets_file(path), shapes, str(path))
        return build_area_sheets(self.model, self.config)

    def _steps_per_epoch(self) -> int:
        used = len(self.train_set)
        per_rank = used // self.dist.world_size
        steps = per_rank // self.config.optim.batch_size
        if steps == 0:
            raise ConfigError(
                f"batch size {self.config.optim.batch_size} x {self.dist.world_size} process(es) "
                f"is larger than the {used} training images; lower --batch-size"
            )
        return steps

    # ---- checkpoints ----------------------------------------------------------------------

    def _checkpoint(self, rng_state: dict | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "tdsnn_version": tdsnn.__version__,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "num_classes": self.data_info.num_classes,
            "in_channels": self.data_info.channels,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": vars(self.state).copy(),
            "sheets": {name: sheet.state_dict() for name, sheet in self.sheets.items()},
            "rng": rng_state if rng_state is not None else self._rng_snapshot(),
        }

    def _restore(self, checkpoint: dict) -> None:
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.state = TrainState(**checkpoint["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} does not match this model: {first_line}"
            ) from None
        restore_rng(checkpoint["rng"])
        if "topo" in checkpoint["rng"]:
            self.topo_generator.set_state(checkpoint["rng"]["topo"])

    def _rng_snapshot(self) -> dict:
        return {**rng_snapshot(), "topo": self.topo_generator.get_state()}

    def save(self, name: str, rng_state: dict | None = None) -> None:
        if self.dist.is_main:
            save_atomic(self._checkpoint(rng_state), self.out / name)

    # ---- metrics --------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("global_step", 0) <= self.state.global_step
        ]
        path.write_text("".join(line + "\n" for line in keep))

    # ---- loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        self.setup()
        start_time = time.perf_counter()
        try:
            while self.state.epoch < self.config.optim.epochs:
                self._train_epoch()
                self._end_epoch()
        except KeyboardInterrupt:
            self.save("last.pt", rng_state=self._rng_at_step)
            if self.dist.is_main:
                print(
                    f"\ninterrupted at epoch {self.state.epoch + 1} step {self.state.step}; "
                    f"saved {self.out / 'last.pt'}. Continue with: "
                    f"tdsnn train --out {self.out} --resume"
                )
            raise
        return self._finish(time.perf_counter() - start_time)

    def _train_epoch(self) -> None:
        config, state = self.config, self.state
        sampler = EpochSampler(
            len(self.train_set),
            seed=config.run.seed,
            epoch=state.epoch,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start=state.step * config.optim.batch_size,
        )
        loader = make_loader(
            self.train_set,
            config.optim.batch_size,
            shuffle=False,
            seed=config.run.seed,
            num_workers=config.data.num_workers,
            drop_last=True,
            sampler=sampler,
        )
        self.net.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.step,
            unit="step",
            leave=False,
            desc=f"epoch {state.epoch + 1}/{config.optim.epochs}",
            disable=config.run.quiet or not self.dist.is_main,
        )
        tick = time.perf_counter()
        for images, labels in loader:
            if state.step >= self.steps_per_epoch:
                break
            values, correct = self._train_step(images, labels)
            state.step += 1
            state.global_step += 1
            self._rng_at_step = self._rng_snapshot()  # RNG state at this step boundary
            state.train_images += labels.shape[0] * self.dist.world_size
            bar.update(1)
            if state.global_step % config.run.log_every == 0 or state.step == self.steps_per_epoch:
                now = time.perf_counter()
                state.train_seconds += now - tick
                tick = now
                bar.set_postfix(
                    loss=f"{values['loss']:.3f}", acc=f"{correct / labels.shape[0]:.2f}"
                )
                self.log(
                    {
                        "epoch": state.epoch + 1,
                        "global_step": state.global_step,
                        **values,
                        "train_acc": correct / labels.shape[0],
                        "lr": self.scheduler.get_last_lr()[0],
                        "images_per_s": state.train_images / max(state.train_seconds, 1e-9),
                    }
                )
            if self.on_step is not None:
                self.on_step(state)
        bar.close()

    def _train_step(self, images: Tensor, labels: Tensor) -> tuple[dict[str, float], int]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        topo = self.config.topo
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.run.amp):
            out = self.net(images, **recording(topo, self.topo_areas))
            task_loss = F.cross_entropy(out.logits.float(), labels)
        terms = topographic_terms(
            topo, self.model, self.sheets, self.topo_areas, out, self.topo_generator
        )
        loss = task_loss
        if terms:
            topo_total = torch.stack([t["total"] for t in terms.values()]).mean()
            loss = loss + self._topo_ramp() * topo_total
        values = {"loss": loss.item(), "task_loss": task_loss.item()}
        if not math.isfinite(values["loss"]):
            self._diverged(values["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        for area, area_terms in terms.items():
            for name, value in area_terms.items():
                values[f"topo/{area}/{name}"] = value.item()
        correct = int((out.logits.argmax(1) == labels).sum())
        return values, correct

    def _diverged(self, value: float) -> None:
        state = self.state
        self.save("last.pt", rng_state=self._rng_at_step)
        raise TrainingDiverged(
            f"loss became {value} at epoch {state.epoch + 1} step {state.step + 1} "
            f"(global step {state.global_step + 1}); the last good weights are in "
            f"{self.out / 'last.pt'}; lower --lr or check the data"
        )

    def _end_epoch(self) -> None:
        state = self.state
        test_loss, test_acc = self.evaluate()
        state.epoch += 1
        state.step = 0
        record = {
            "epoch": state.epoch,
            "global_step": state.global_step,
            "test_loss": test_loss,
            "test_acc": test_acc,
        }
        self.log(record)
        if self.dist.is_main and not self.config.run.quiet:
            print(
                f"epoch {state.epoch}/{self.config.optim.epochs}: "
                f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}"
            )
        if test_acc > state.best_acc:
            state.best_acc = test_acc
            self.save("best.pt")
        self.save("last.pt")
        self._barrier()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy; under DDP each rank scores a shard and the sums are reduced."""
        self._sync_buffers()
        self.model.eval()
        indices = list(range(self.dist.rank, len(self.test_set), self.dist.world_size))
        subset = torch.utils.data.Subset(self.test_set, indices)
        loader = make_loader(
            subset,
            max(self.config.optim.batch_size, 256),
            shuffle=False,
            seed=0,
            num_workers=self.config.data.num_workers,
        )
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, labels in loader:
            images, labels = images.to(self.device), labels.to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.run.amp):
                logits = self.model(images).logits.float()
            totals[0] += F.cross_entropy(logits, labels, reduction="sum")
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += labels.numel()
        if self.dist.enabled:
            dist.all_reduce(totals)
        self.model.train()
        return float(totals[0] / totals[2]), float(totals[1] / totals[2])

    @torch.no_grad()
    def topography(self) -> dict[str, dict[str, float]]:
        """Per area, on held-out test images: topography score and channel-grid neighbour
        similarity of rates and incoming weights (see :mod:`tdsnn.topo.metrics`)."""
        self.model.eval()
        count = min(len(self.test_set), SCORE_IMAGES)
        subset = torch.utils.data.Subset(self.test_set, range(count))
        loader = make_loader(subset, 128, shuffle=False, seed=0)
        counts = area_spike_counts(self.model, (images.to(self.device) for images, _ in loader))
        self.model.train()
        scores = {}
        for name, area_counts in counts.items():
            scores[name] = {
                "topography_score": topography_score(
                    area_counts.flatten(1), self.sheets[name], seed=self.config.run.seed
                ),
                "neighbour_rate_correlation": neighbour_rate_correlation(area_counts),
                "neighbour_weight_cosine": neighbour_weight_cosine(
                    self.model.areas[name].output_weight
                ),
            }
        return scores

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's batch-norm statistics (DDP syncs them only before a forward,
        so after the last step each rank holds the update from its own shard)."""
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def _finish(self, wall_seconds: float) -> dict:
        test_loss, test_acc = self.evaluate()
        state = self.state
        summary = {
            "run_dir": str(self.out),
            "area_stack": list(self.model.area_names),
            "dataset": self.config.data.dataset,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "best_test_acc": state.best_acc,
            "epochs": state.epoch,
            "global_steps": state.global_step,
            "train_images": state.train_images,
            "images_per_s": state.train_images / max(state.train_seconds, 1e-9),
            "wall_seconds": wall_seconds,
            "parameters": count_parameters(self.model),
            "world_size": self.dist.world_size,
            "topo": self.config.topo.name,
            "topography": self.topography(),
            "environment": environment_info(self.device),
        }
        if self.dist.enabled:
            summary["rank_parameter_checksums"] = self._gather_checksums()
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._barrier()
        return summary

    def _gather_checksums(self) -> list[float]:
        """One checksum of all parameters and buffers per rank: equal when the ranks agree."""
        total = sum(
            t.double().sum() for t in self.model.state_dict().values() if t.is_floating_point()
        )
        checksums = [None] * self.dist.world_size
        dist.all_gather_object(checksums, float(total))
        return checksums


def recording(topo: TopoConfig, areas: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The ``record`` / ``record_membrane`` arguments of :class:`AreaStack` that ``topo`` needs."""
    needs_membrane = topo.feature == "membrane" or topo.gamma > 0
    return {
        "record": areas if topo.feature == "spikes" else (),
        "record_membrane": areas if needs_membrane else (),
    }


def topographic_terms(
    topo: TopoConfig,
    model: AreaStack,
    sheets: dict[str, Sheet],
    areas: tuple[str, ...],
    out: StackOutput,
    generator: torch.Generator,
) -> dict[str, dict[str, Tensor]]:
    """Each area's topographic loss terms (:func:`tdsnn.topo.topo_loss`) for one forward pass."""
    return {
        area: topo_loss(
            topo,
            sheets[area],
            spikes=out.spikes.get(area),
            v=out.membrane.get(area),
            weights=model.areas[area].output_weight if topo.feature == "weights" else None,
            generator=generator,
        )
        for area in areas
    }


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "cpu"):
    """A trained run: ``(config, model in eval mode, sheets)`` from ``run_dir/checkpoint``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    state = load_checkpoint(run_dir / checkpoint, map_location=device)
    config = RunConfig.from_dict(state["config"])
    model = AreaStack(config.model, state["num_classes"], state["in_channels"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{run_dir / checkpoint} does not match its own config: {exc}"
        ) from None
    shapes = model.output_shapes(config.data.image_size)
    sheets = check_sheets(load_sheet_states(state, str(run_dir / checkpoint)), shapes, str(run_dir))
    return config, model.to(device).eval(), sheets


def build_area_sheets(model: AreaStack, config: RunConfig) -> dict[str, Sheet]:
    """A sheet for every area of ``model`` (sizes from the area table, DESIGN section 7)."""
    topo_areas = config.topo.select_areas(model.area_names) if config.topo.enabled else ()
    sheets = {}
    for i, (name, shape) in enumerate(model.output_shapes(config.data.image_size).items()):
        layout = config.sheet.layout
        if layout == "auto":
            layout = config.topo.sheet_layout(shape) if name in topo_areas else "retinotopic"
        spec = model.areas[name].spec
        sheets[name] = build_sheet(
            name,
            shape,
            spec.sheet_mm,
            spec.neighbourhood_mm,
            layout,
            seed=config.run.seed * 1009 + i,
            jitter=config.sheet.jitter,
        )
    return sheets


def load_sheet_states(container: dict, where: str) -> dict[str, Sheet]:
    if not isinstance(container.get("sheets"), dict):
        raise CheckpointError(f"{where} holds no cortical sheets")
    return {name: Sheet.from_state_dict(state) for name, state in container["sheets"].items()}


def read_sheets_file(path: Path) -> dict[str, Sheet]:
    """Sheets saved by ``tdsnn sheet optimize`` (``sheets.pt``)."""
    if not path.is_file():
        raise ConfigError(f"sheet positions file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"sheet file {path} is corrupt ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != SHEETS_FORMAT:
        raise CheckpointError(f"{path} is not a tdsnn sheets file (no '{SHEETS_FORMAT}' header)")
    return load_sheet_states(data, str(path))


def write_sheets_file(sheets: dict[str, Sheet], path: Path, **metadata) -> None:
    save_atomic(
        {
            "format": SHEETS_FORMAT,
            "sheets": {n: s.state_dict() for n, s in sheets.items()},
            **metadata,
        },
        path,
    )


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


def rng_snapshot() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(config: RunConfig, *, resume: bool = False) -> dict:
    """Train as configured and return the summary (also written to ``summary.json``)."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
