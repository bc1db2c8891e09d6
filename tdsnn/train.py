"""The training loop of an area stack: single process, or DDP under ``torchrun``.

Batches of an epoch are a fixed function of ``(seed, epoch)`` (:class:`tdsnn.data.order.
EpochSampler`), and the initial weights a function of the seed alone (drawn just before the
model is built), so runs of one seed that differ only in their loss or units start alike and
see the same data. Checkpoints hold the optimiser, scheduler and every rank's RNG states at a
step boundary, so a run stopped by Ctrl-C or SIGTERM and continued with ``--resume`` ends with
the same weights as an uninterrupted one. ``last.pt`` is also written mid-epoch every
``--checkpoint-every`` (wall time or steps), each file atomically, so a hard kill loses at most
that much and the run continues exactly from the newest checkpoint. The run directory's files
are written through :mod:`tdsnn.rundir`; devices, process groups and signals come from
:mod:`tdsnn.runtime`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tdsnn.areas import AreaStack, area_spike_counts, count_parameters
from tdsnn.config import RunConfig, save_config
from tdsnn.data import build_datasets, make_loader, split_validation
from tdsnn.data.order import EpochSampler, shard_batches
from tdsnn.errors import CheckpointError, ConfigError, Stopped, TrainingDiverged
from tdsnn.options import checkpoint_interval
from tdsnn.rundir import (
    Checkpoint,
    MetricsLog,
    check_run_dir,
    default_run_dir,
    epoch_checkpoint,
    load_state,
    resumed_config,
    run_sheets,
    started_without_checkpoint,
    write_summary,
)
from tdsnn.runtime import (
    StopSignals,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_object,
    environment_info,
    init_distributed,
    restore_rng,
    rng_snapshot,
    select_device,
)
from tdsnn.sheet import Sheet
from tdsnn.step import (
    GraphedStep,
    capturable_adamw,
    check_capturable,
    make_capturable,
    portable_scheduler_state,
    portable_state,
    train_step,
)
from tdsnn.topo.metrics import SCORE_IMAGES, area_topography
from tdsnn.topo.objective import TopoObjective

__all__ = ["TrainState", "Trainer", "train"]

EVAL_BATCH = 256


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint."""

    epoch: int = 0  # current epoch
    step: int = 0  # optimiser steps completed in the current epoch
    global_step: int = 0
    best_acc: float = -1.0  # validation accuracy of best.pt (test accuracy without --val-size)
    best_epoch: int = 0  # epoch of best.pt (1-based; 0 = none yet)
    train_images: int = 0
    train_seconds: float = 0.0


class Trainer:
    """Trains one :class:`AreaStack` on one dataset and writes its run directory.

    ``on_step(trainer)`` is called after every optimiser step (tests use it to stop a run).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: bool = False,
        on_step: Callable[[Trainer], None] | None = None,
    ):
        self.requested = config
        self.resume = resume
        self.on_step = on_step
        self.signals = StopSignals()

    def request_stop(self) -> None:
        """Stop at the next step boundary, as Ctrl-C or SIGTERM do."""
        self.signals.requested = True

    # ---- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.requested
        wants_cuda = config.run.device == "cuda" or (
            config.run.device == "auto" and torch.cuda.is_available()
        )
        self.dist = init_distributed("cuda" if wants_cuda else "cpu")
        self.device = select_device(config.run.device, self.dist)
        out = Path(config.run.out) if config.run.out else default_run_dir(config, self.resume)
        self.out = check_run_dir(broadcast_object(out, self.dist), must_exist=self.resume)
        checkpoint = self._load_last() if self.resume else None
        if checkpoint is not None:
            config = resumed_config(config, checkpoint, self.out / "last.pt")
            self._check_same_layout(checkpoint, config)
        elif (self.out / "last.pt").exists():
            raise ConfigError(
                f"run directory {self.out} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        if config.run.amp and self.device.type != "cuda":
            raise ConfigError("--amp (bf16 autocast) needs a CUDA device")
        if config.run.cuda_graphs:
            check_capturable(self.device, self.dist.world_size)
        self.config = config
        self._build_data()
        torch.manual_seed(config.run.seed)  # the initial weights depend on the seed alone
        self.model = AreaStack(config.model, self.data_info.num_classes, self.data_info.channels)
        self.model.to(self.device)
        self.sheets = self._run_sheets(checkpoint)
        self.objective = TopoObjective(
            config.topo, self.sheets, self.model.area_names, seed=config.run.seed
        )
        self.objective.prepare(self.device)  # cluster banks on the device, from the run seed
        # cluster draws of the topographic loss: one stream per rank, saved in checkpoints
        self.topo_generator = torch.Generator(self.device)
        self.topo_generator.manual_seed(config.run.seed + 7919 * self.dist.rank)
        adamw = capturable_adamw if config.run.cuda_graphs else torch.optim.AdamW
        self.optimizer = adamw(
            self.model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.total_steps = max(1, self.sampler.batches_per_epoch * config.optim.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.state = TrainState()
        if checkpoint is not None:
            self._restore(checkpoint)
        self.graphed: GraphedStep | None = None
        if config.run.cuda_graphs:
            make_capturable(self.optimizer, self.device)
            self.graphed = GraphedStep(
                self.model, self.objective, self.optimizer, self.topo_generator, amp=config.run.amp
            )
        self._rng_at_step = rng_snapshot(self.topo_generator)
        self._every_seconds, self._every_steps = checkpoint_interval(config.run.checkpoint_every)
        self._saved_at = (time.monotonic(), self.state.global_step)  # of last.pt
        self._last_eval: tuple[float, float] | None = None
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # LIF state is never a buffer (it is re-created every forward), so the only buffers
            # broadcast from rank 0 are batch-norm running statistics.
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if config.run.keep_epochs:
                (self.out / "epochs").mkdir(exist_ok=True)
            save_config(config, self.out / "config.yaml")
            self.metrics.trim(self.state.global_step)

    def _load_last(self) -> Checkpoint | None:
        """``last.pt`` to resume from; None (said in one line) for a run stopped before its
        first checkpoint, which then starts from the beginning."""
        if not started_without_checkpoint(self.out):
            return Checkpoint.load(self.out / "last.pt")
        if self.dist.is_main:
            print(
                f"run directory {self.out} has no checkpoint yet (stopped before the first "
                "one); starting it from the beginning"
            )
        return None

    def _check_same_layout(self, checkpoint: Checkpoint, config: RunConfig) -> None:
        """Refuse a resume whose processes or batch size differ: the data order would."""
        saved = checkpoint.run_config.optim.batch_size
        if saved != config.optim.batch_size:
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} was trained with batch size {saved}; "
                f"resume with --batch-size {saved} (the data order depends on it)"
            )
        if checkpoint.world_size != self.dist.world_size:
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} was written by {checkpoint.world_size} "
                f"process(es), this run has {self.dist.world_size}; resume with the same number "
                "(torchrun --nproc-per-node), as the data shards and random streams depend on it"
            )

    def _run_sheets(self, checkpoint: Checkpoint | None) -> dict[str, Sheet]:
        """The areas' sheets (:func:`~tdsnn.rundir.run_sheets`), built on rank 0 and sent to the
        other ranks, so that swap-optimised positions are computed once per run."""
        sheets = run_sheets(self.model, self.config, checkpoint) if self.dist.is_main else None
        if self.dist.world_size == 1:
            return sheets
        states = None if sheets is None else {n: s.state_dict() for n, s in sheets.items()}
        states = broadcast_object(states, self.dist)
        return sheets or {name: Sheet.from_state_dict(state) for name, state in states.items()}

    def _build_data(self) -> None:
        """The datasets, and their loaders, built once for the whole run."""
        config, rank, world = self.config, self.dist.rank, self.dist.world_size
        val_size, train_size = config.data.val_size, config.data.train_size
        train_set, self.test_set, self.data_info = build_datasets(
            config.data.dataset,
            data_root=config.data.data_root,
            image_size=config.data.image_size,
            download=config.data.download and self.dist.is_main,
            seed=config.run.seed,
            train_size=None if train_size is None else train_size + val_size,
            test_size=config.data.test_size,
        )
        self.train_set, self.val_set = split_validation(train_set, val_size)
        batch = config.optim.batch_size
        self.sampler = EpochSampler(
            len(self.train_set), batch, seed=config.run.seed, rank=rank, world_size=world
        )
        if self.sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"batch size {batch} x {world} process(es) is larger than the "
                f"{len(self.train_set)} training images; lower --batch-size"
            )
        self.train_loader = self._loader(self.train_set, self.sampler)
        shard = shard_batches(len(self.test_set), EVAL_BATCH, rank=rank, world_size=world)
        self.test_loader = self._loader(self.test_set, shard)
        self.val_loader = None
        if self.val_set is not None:
            shard = shard_batches(len(self.val_set), EVAL_BATCH, rank=rank, world_size=world)
            self.val_loader = self._loader(self.val_set, shard)

    def _loader(self, dataset, batch_sampler):
        return make_loader(
            dataset,
            batch_sampler.batch_size,
            shuffle=False,
            seed=self.config.run.seed,
            num_workers=self.config.data.num_workers,
            batch_sampler=batch_sampler,
            pin_memory=self.device.type == "cuda",
        )

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

    # ---- checkpoints ----------------------------------------------------------------------

    def _restore(self, checkpoint: Checkpoint) -> None:
        where = f"checkpoint {self.out / 'last.pt'}"
        load_state(self.model, checkpoint.model, f"{where}: model weights")
        load_state(self.optimizer, checkpoint.optimizer, f"{where}: optimiser state")
        load_state(self.scheduler, checkpoint.scheduler, f"{where}: scheduler state")
        defaults = asdict(TrainState())  # best_epoch is absent from older checkpoints
        self.state = TrainState(**{k: checkpoint.state.get(k, v) for k, v in defaults.items()})
        rng = checkpoint.rng[self.dist.rank]
        generators = (self.topo_generator,) if rng["generators"] else ()
        try:
            restore_rng(rng, *generators)
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{where}: RNG state is corrupt ({exc})") from exc

    def save(self, name: str, rng_state: dict | None = None) -> None:
        """Write ``name`` (rank 0) with every rank's RNG state (a collective under DDP)."""
        rng = all_gather_objects(rng_state or rng_snapshot(self.topo_generator), self.dist)
        if name == "last.pt":  # on every rank, so that all agree when the next one is due
            self._saved_at = (time.monotonic(), self.state.global_step)
        if not self.dist.is_main:
            return
        Checkpoint(
            config=self.config.to_dict(),
            model=self.model.state_dict(),
            num_classes=self.data_info.num_classes,
            in_channels=self.data_info.channels,
            optimizer=portable_state(self.optimizer.state_dict()),
            scheduler=portable_scheduler_state(self.scheduler.state_dict()),
            state=asdict(self.state),
            sheets={name: sheet.state_dict() for name, sheet in self.sheets.items()},
            rng=rng,
            world_size=self.dist.world_size,
        ).save(self.out / name)

    def log(self, record: dict) -> None:
        if self.dist.is_main:
            self.metrics.append(record)

    # ---- loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        """Train to the configured epochs; raise :class:`Stopped` on a signal (last.pt saved)."""
        with self.signals:
            self.setup()
            start_time = time.perf_counter()
            while self.state.epoch < self.config.optim.epochs and not self.plateaued:
                if self._train_epoch():
                    self.save("last.pt", rng_state=self._rng_at_step)
                    raise self._stopped()
                if self._end_epoch():  # saved last.pt itself
                    raise self._stopped()
            return self._finish(time.perf_counter() - start_time)

    @property
    def plateaued(self) -> bool:
        """Whether ``--until-plateau P`` ends training: no better validation accuracy for the
        last P epochs."""
        patience = self.config.optim.until_plateau
        return patience is not None and self.state.epoch - self.state.best_epoch >= patience

    def _stopped(self) -> Stopped:
        last, resume = self.out / "last.pt", {"resume": True}
        return Stopped(
            f"stopped at epoch {self.state.epoch + 1} step {self.state.step}; saved {last}. "
            f"Continue with: tdsnn train --out {self.out} --resume", path=last, continue_with=resume
        )  # fmt: skip

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; True if a stop was requested on any rank."""
        config, state = self.config, self.state
        self.sampler.set_epoch(state.epoch, state.step)
        self.net.train()
        bar = tqdm(
            total=self.sampler.batches_per_epoch,
            initial=state.step,
            unit="step",
            leave=False,
            desc=f"epoch {state.epoch + 1}/{config.optim.epochs}",
            disable=config.run.quiet or not self.dist.is_main,
        )
        tick = time.perf_counter()
        try:
            for images, labels in self.train_loader:
                values = self._train_step(images, labels)
                if values is None:
                    return True
                state.step += 1
                state.global_step += 1
                self._rng_at_step = rng_snapshot(self.topo_generator)  # at this step boundary
                state.train_images += labels.shape[0] * self.dist.world_size
                bar.update(1)
                last = state.step == self.sampler.batches_per_epoch
                if state.global_step % config.run.log_every == 0 or last:
                    now = time.perf_counter()
                    state.train_seconds += now - tick
                    tick = now
                    self._log_step(values, labels.shape[0], bar)
                if self.on_step is not None:
                    self.on_step(self)
        finally:
            bar.close()
        return False

    def _train_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor] | None:
        """One optimiser step; its metrics as device tensors, or None to stop before it.

        A stop request is honoured before the forward pass (which updates batch-norm
        statistics), so the saved state is exactly that of the step boundary. The only host
        synchronisation is the check, agreed by all ranks, that the loss is finite; metrics are
        read on log steps only.
        """
        stop, due = self._boundary_flags()
        if stop:
            return None
        if due:  # a mid-epoch checkpoint, exactly at this step boundary
            self.save("last.pt", rng_state=self._rng_at_step)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        ramp = self.objective.ramp(self.state.global_step, self.total_steps)
        if self.graphed is not None:
            step = self.graphed(
                images, labels, ramp=ramp, check_loss=self._check_finite, scheduler=self.scheduler
            )
        else:
            step = train_step(
                self.net,
                self.objective,
                self.optimizer,
                images,
                labels,
                self.topo_generator,
                model=self.model,
                amp=self.config.run.amp,
                ramp=ramp,
                check_loss=self._check_finite,
                scheduler=self.scheduler,
            )
        values = {"loss": step.loss, "task_loss": step.task_loss}
        for area, area_terms in step.terms.items():
            for name, value in area_terms.items():
                values[f"topo/{area}/{name}"] = value
        values["correct"] = (step.logits.argmax(1) == labels).sum()
        return values

    def _check_finite(self, loss: Tensor) -> None:
        """Stop with ``TrainingDiverged`` (after saving the last good state) when the loss is
        not finite on any rank: the step's one host synchronisation."""
        (diverged,) = any_rank(~torch.isfinite(loss.detach()).reshape(1), self.dist)
        if diverged:
            self._diverged()

    def _boundary_flags(self) -> tuple[bool, bool]:
        """At a step boundary: whether a stop was requested, and whether a mid-epoch checkpoint
        is due (``--checkpoint-every``), each agreed by all ranks in one all-reduce."""
        state, (saved_time, saved_step) = self.state, self._saved_at
        due = state.step > 0 and (
            (self._every_steps is not None and state.global_step - saved_step >= self._every_steps)
            or (
                self._every_seconds is not None
                and time.monotonic() - saved_time >= self._every_seconds
            )
        )
        if not self.dist.enabled:
            return self.signals.requested, due
        flags = torch.tensor([self.signals.requested, due], device=self.device)
        stop, due = any_rank(flags, self.dist)
        return stop, due

    def _stop_requested(self) -> bool:
        """Whether Ctrl-C or SIGTERM reached any rank (one all-reduce under DDP)."""
        if not self.dist.enabled:
            return self.signals.requested
        flag = torch.tensor([self.signals.requested], device=self.device)
        return any_rank(flag, self.dist)[0]

    def _log_step(self, values: dict[str, Tensor], batch: int, bar) -> None:
        """Read the step's metrics from the device (one sync) and append them to the log."""
        fetched = torch.stack([v.float() for v in values.values()]).tolist()
        numbers = dict(zip(values, fetched, strict=True))
        correct = numbers.pop("correct")
        state = self.state
        bar.set_postfix(loss=f"{numbers['loss']:.3f}", acc=f"{correct / batch:.2f}")
        self.log(
            {
                "epoch": state.epoch + 1,
                "global_step": state.global_step,
                **numbers,
                "train_acc": correct / batch,
                "lr": float(self.scheduler.get_last_lr()[0]),  # a tensor under --cuda-graphs
                "images_per_s": state.train_images / max(state.train_seconds, 1e-9),
            }
        )

    def _diverged(self) -> None:
        state = self.state
        self.save("last.pt", rng_state=self._rng_at_step)
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {state.epoch + 1} step {state.step + 1} "
            f"(global step {state.global_step + 1}); the last good weights are in "
            f"{self.out / 'last.pt'}; lower --lr or check the data"
        )

    def _end_epoch(self) -> bool:
        """Evaluate, count the epoch, save; True if a stop was requested on any rank.

        ``best.pt`` is the epoch of the best validation accuracy (test accuracy when there is
        no validation split); ``--keep-epochs`` also keeps ``epochs/epoch-NNN.pt``.
        """
        state = self.state
        self._last_eval = test_loss, test_acc = self.evaluate()
        record = {"test_loss": test_loss, "test_acc": test_acc}
        selection = test_acc
        if self.val_loader is not None:
            record["val_loss"], record["val_acc"] = self.evaluate(self.val_loader)
            selection = record["val_acc"]
        state.epoch += 1
        state.step = 0
        self.log({"epoch": state.epoch, "global_step": state.global_step, **record})
        if self.dist.is_main and not self.config.run.quiet:
            val = f", validation accuracy {record['val_acc']:.4f}" if "val_acc" in record else ""
            print(
                f"epoch {state.epoch}/{self.config.optim.epochs}: "
                f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f}{val}"
            )
        if selection > state.best_acc:
            state.best_acc, state.best_epoch = selection, state.epoch
            self.save("best.pt")
        if self.config.run.keep_epochs:
            self.save(epoch_checkpoint(state.epoch))
        self.save("last.pt")
        barrier(self.dist)
        done = state.epoch >= self.config.optim.epochs or self.plateaued
        return self._stop_requested() and not done

    @torch.no_grad()
    def evaluate(self, loader=None) -> tuple[float, float]:
        """Loss and accuracy on the test split (or ``loader``'s); under DDP each rank scores a
        shard and the sums are reduced."""
        self._sync_buffers()
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, labels in self.test_loader if loader is None else loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.run.amp):
                logits = self.model(images).logits.float()
            totals[0] += F.cross_entropy(logits, labels, reduction="sum")
            totals[1] += (logits.argmax(1) == labels).sum()
            totals[2] += labels.numel()
        if self.dist.enabled:
            dist.all_reduce(totals)
        self.model.train()
        loss, correct, count = totals.tolist()
        return loss / count, correct / count

    @torch.no_grad()
    def topography(self) -> dict[str, dict[str, float]]:
        """Per area, on held-out test images: topography score and channel-grid neighbour
        similarity of rates and incoming weights (see :mod:`tdsnn.topo.metrics`)."""
        self.model.eval()
        count = min(len(self.test_set), SCORE_IMAGES)
        loader = self._loader(self.test_set, shard_batches(count, 128))
        counts = area_spike_counts(self.model, (images.to(self.device) for images, _ in loader))
        self.model.train()
        weights = {name: area.output_weight for name, area in self.model.areas.items()}
        return area_topography(counts, self.sheets, weights, seed=self.config.run.seed)

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's batch-norm statistics (DDP syncs them only before a forward,
        so after the last step each rank holds the update from its own shard)."""
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def _finish(self, wall_seconds: float) -> dict:
        """Write ``summary.json``: the last evaluation (made again only if none ran here)."""
        test_loss, test_acc = self._last_eval or self.evaluate()
        state = self.state
        summary = {
            "run_dir": str(self.out),
            "area_stack": list(self.model.area_names),
            "dataset": self.config.data.dataset,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "best_test_acc": state.best_acc if self.val_loader is None else None,
            "best_val_acc": state.best_acc if self.val_loader is not None else None,
            "best_epoch": state.best_epoch,
            "selected_on": "test" if self.val_loader is None else "validation",
            "until_plateau": self.config.optim.until_plateau,
            "plateau_reached": self.plateaued,
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
            summary["rank_parameter_checksums"] = all_gather_objects(self._checksum(), self.dist)
        if self.dist.is_main:
            write_summary(self.out, summary)
        barrier(self.dist)
        return summary

    def _checksum(self) -> float:
        """One checksum of all parameters and buffers: equal on every rank when they agree."""
        state = self.model.state_dict().values()
        return float(sum(t.double().sum() for t in state if t.is_floating_point()))


def train(config: RunConfig, *, resume: bool = False) -> dict:
    """Train as configured and return the summary (also written to ``summary.json``).

    Raises :class:`~tdsnn.errors.Stopped` when Ctrl-C or SIGTERM stopped the run at a step
    boundary; ``last.pt`` then holds that boundary and ``resume=True`` continues from it.
    """
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
