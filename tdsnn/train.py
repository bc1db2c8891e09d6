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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tdsnn.areas import AreaStack, area_spike_counts, build_model, count_parameters
from tdsnn.config import RunConfig, save_config
from tdsnn.data.order import shard_batches
from tdsnn.data.run import build_run_data
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
    close_distributed,
    environment_info,
    init_distributed,
    restore_rng,
    rng_snapshot,
    select_device,
)
from tdsnn.sheet import Sheet
from tdsnn.step import (
    Training,
    build_training,
    check_capturable,
    portable_scheduler_state,
    portable_state,
    train_step,
)
from tdsnn.topo.metrics import SCORE_IMAGES, area_topography

__all__ = ["CheckpointPolicy", "TrainState", "Trainer", "train"]


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


class CheckpointPolicy:
    """Where a run's checkpoints come from and when they are written: ``last.pt`` to resume
    from, its checks, the state it restores, and ``last.pt`` every ``--checkpoint-every``
    (wall time or steps) besides the end of every epoch."""

    def __init__(self, out: Path, every: str, dist) -> None:
        self.out, self.dist = out, dist
        self.every_seconds, self.every_steps = checkpoint_interval(every)
        self.saved_at = (time.monotonic(), 0)  # when and at which global step last.pt was

    def load_last(self) -> Checkpoint | None:
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

    def check_layout(self, checkpoint: Checkpoint, config: RunConfig) -> None:
        """Refuse a resume whose processes or batch size differ (the data order would), or
        whose optimiser does (its state would not fit)."""
        saved = checkpoint.run_config.optim
        if saved.batch_size != config.optim.batch_size:
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} was trained with batch size "
                f"{saved.batch_size}; resume with --batch-size {saved.batch_size} (the data "
                "order depends on it)"
            )
        if saved.optimizer != config.optim.optimizer:
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} was trained with --optimizer "
                f"{saved.optimizer}; resume with it (the optimiser state is {saved.optimizer}'s)"
            )
        if checkpoint.world_size != self.dist.world_size:
            raise CheckpointError(
                f"checkpoint {self.out / 'last.pt'} was written by {checkpoint.world_size} "
                f"process(es), this run has {self.dist.world_size}; resume with the same number "
                "(torchrun --nproc-per-node), as the data shards and random streams depend on it"
            )

    def restore(self, checkpoint: Checkpoint, model: nn.Module, training: Training) -> TrainState:
        """Load the model, optimiser, scheduler and this rank's RNG states; the loop's state."""
        where = f"checkpoint {self.out / 'last.pt'}"
        load_state(model, checkpoint.model, f"{where}: model weights")
        load_state(training.optimizer, checkpoint.optimizer, f"{where}: optimiser state")
        load_state(training.scheduler, checkpoint.scheduler, f"{where}: scheduler state")
        defaults = asdict(TrainState())  # best_epoch is absent from older checkpoints
        state = TrainState(**{k: checkpoint.state.get(k, v) for k, v in defaults.items()})
        rng = checkpoint.rng[self.dist.rank]
        generators = (training.generator,) if rng["generators"] else ()
        try:
            restore_rng(rng, *generators)
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{where}: RNG state is corrupt ({exc})") from exc
        return state

    def due(self, state: TrainState) -> bool:
        """Whether a mid-epoch ``last.pt`` is due at this step boundary."""
        saved_time, saved_step = self.saved_at
        if state.step == 0:
            return False
        steps, seconds = self.every_steps, self.every_seconds
        return (steps is not None and state.global_step - saved_step >= steps) or (
            seconds is not None and time.monotonic() - saved_time >= seconds
        )

    def save(self, trainer: Trainer, name: str, rng_state: dict | None = None) -> None:
        """Write ``name`` (rank 0) with every rank's RNG state (a collective under DDP)."""
        training = trainer.training
        rng = all_gather_objects(rng_state or rng_snapshot(training.generator), self.dist)
        if name == "last.pt":  # on every rank, so that all agree when the next one is due
            self.saved_at = (time.monotonic(), trainer.state.global_step)
        if not self.dist.is_main:
            return
        Checkpoint(
            config=trainer.config.to_dict(),
            model=trainer.model.state_dict(),
            num_classes=trainer.data.info.num_classes,
            in_channels=trainer.data.info.channels,
            optimizer=portable_state(training.optimizer.state_dict()),
            scheduler=portable_scheduler_state(training.scheduler.state_dict()),
            state=asdict(trainer.state),
            sheets={area: sheet.state_dict() for area, sheet in trainer.sheets.items()},
            rng=rng,
            world_size=self.dist.world_size,
        ).save(self.out / name)


class Trainer:
    """Trains one network (:func:`tdsnn.areas.build_model`) on one dataset and writes its run
    directory. ``on_step(trainer)`` is called after every optimiser step (tests stop runs so).
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
        self.checkpoints = CheckpointPolicy(self.out, config.run.checkpoint_every, self.dist)
        checkpoint = self.checkpoints.load_last() if self.resume else None
        if checkpoint is not None:
            config = resumed_config(config, checkpoint, self.out / "last.pt")
            self.checkpoints.check_layout(checkpoint, config)
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
        self.data = build_run_data(config, self.dist.rank, self.dist.world_size, self.device,
                                   download=config.data.download and self.dist.is_main)  # fmt: skip
        torch.manual_seed(config.run.seed)  # the initial weights depend on the seed alone
        info = self.data.info
        self.model = build_model(config.model, info.num_classes, info.channels,
                                 normalize=config.data.normalize).to(self.device)  # fmt: skip
        self.sheets = self._run_sheets(checkpoint)
        total_steps = self.data.sampler.batches_per_epoch * config.optim.epochs
        self.training = build_training(config, self.model, self.sheets, self.device,
                                       total_steps=total_steps, rank=self.dist.rank)  # fmt: skip
        self.state = TrainState()
        if checkpoint is not None:
            self.state = self.checkpoints.restore(checkpoint, self.model, self.training)
        self.net: nn.Module = self.model
        if config.run.cuda_graphs:
            self.training.capture(self.model, self.model, amp=config.run.amp)
        self._rng_at_step = rng_snapshot(self.training.generator)
        self.checkpoints.saved_at = (time.monotonic(), self.state.global_step)  # of last.pt
        self._last_eval: tuple[float, float] | None = None
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

    def _run_sheets(self, checkpoint: Checkpoint | None) -> dict[str, Sheet]:
        """The areas' sheets (:func:`~tdsnn.rundir.run_sheets`), built on rank 0 and sent to the
        other ranks, so that swap-optimised positions are computed once per run."""
        sheets = run_sheets(self.model, self.config, checkpoint) if self.dist.is_main else None
        if self.dist.world_size == 1:
            return sheets
        states = None if sheets is None else {n: s.state_dict() for n, s in sheets.items()}
        states = broadcast_object(states, self.dist)
        return sheets or {name: Sheet.from_state_dict(state) for name, state in states.items()}

    def save(self, name: str, rng_state: dict | None = None) -> None:
        """Write checkpoint ``name`` (:meth:`CheckpointPolicy.save`)."""
        self.checkpoints.save(self, name, rng_state)

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
        self.data.sampler.set_epoch(state.epoch, state.step)
        self.net.train()
        bar = tqdm(
            total=self.data.sampler.batches_per_epoch,
            initial=state.step,
            unit="step",
            leave=False,
            desc=f"epoch {state.epoch + 1}/{config.optim.epochs}",
            disable=config.run.quiet or not self.dist.is_main,
        )
        tick = time.perf_counter()
        try:
            for images, labels in self.data.train_loader:
                values = self._train_step(images, labels)
                if values is None:
                    return True
                state.step += 1
                state.global_step += 1
                self._rng_at_step = rng_snapshot(self.training.generator)  # at this step boundary
                state.train_images += labels.shape[0] * self.dist.world_size
                bar.update(1)
                last = state.step == self.data.sampler.batches_per_epoch
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
        training = self.training
        ramp = training.objective.ramp(self.state.global_step, training.schedule.total_steps)
        if training.graphed is not None:
            step = training.graphed(
                images,
                labels,
                ramp=ramp,
                check_loss=self._check_finite,
                scheduler=training.scheduler,
            )
        else:
            step = train_step(
                self.net,
                training.objective,
                training.optimizer,
                images,
                labels,
                training.generator,
                model=self.model,
                amp=self.config.run.amp,
                ramp=ramp,
                check_loss=self._check_finite,
                scheduler=training.scheduler,
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
        stop, due = self._agreed(self.signals.requested, self.checkpoints.due(self.state))
        return stop, due

    def _agreed(self, *flags: bool) -> list[bool]:
        """Each flag true on any rank (one all-reduce under DDP)."""
        if not self.dist.enabled:
            return list(flags)
        return list(any_rank(torch.tensor(flags, device=self.device), self.dist))

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
                "lr": float(self.training.scheduler.get_last_lr()[0]),  # a tensor if graphed
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
        no validation split), or the last one (:func:`takes_best`); ``--keep-epochs`` also
        keeps ``epochs/epoch-NNN.pt``.
        """
        state = self.state
        self._last_eval = test_loss, test_acc = self.evaluate()
        record = {"test_loss": test_loss, "test_acc": test_acc}
        selection = test_acc
        if self.data.val_loader is not None:
            record["val_loss"], record["val_acc"] = self.evaluate(self.data.val_loader)
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
        if takes_best(self.config.optim.select, selection, state):
            state.best_acc, state.best_epoch = selection, state.epoch
            self.save("best.pt")
        if self.config.run.keep_epochs:
            self.save(epoch_checkpoint(state.epoch))
        self.save("last.pt")
        barrier(self.dist)
        done = state.epoch >= self.config.optim.epochs or self.plateaued
        return self._agreed(self.signals.requested)[0] and not done

    def evaluate(self, loader=None) -> tuple[float, float]:
        """Loss and accuracy on the test split (or ``loader``'s): :func:`evaluate`."""
        loader = self.data.test_loader if loader is None else loader
        return evaluate(self.model, loader, self.device, self.dist, amp=self.config.run.amp)

    def _finish(self, wall_seconds: float) -> dict:
        """Write ``summary.json``: the last evaluation (made again only if none ran here)."""
        test_loss, test_acc = self._last_eval or self.evaluate()
        summary = run_summary(self, test_loss, test_acc, wall_seconds)
        if self.dist.is_main:
            write_summary(self.out, summary)
        barrier(self.dist)
        return summary


def takes_best(select: str, selection: float, state: TrainState) -> bool:
    """Whether the epoch just evaluated becomes ``best.pt``: with ``select`` ``best-val``, when
    its ``selection`` accuracy beats ``best.pt``'s; with ``final``, every epoch (so that
    ``best.pt`` ends as the last)."""
    return select == "final" or selection > state.best_acc


@torch.no_grad()
def evaluate(model: AreaStack, loader, device: torch.device, dist_info, *, amp: bool = False):
    """Loss and accuracy ``(float, float)`` of ``model`` on ``loader``'s images; under DDP each
    rank scores a shard and the sums are reduced (after every rank takes rank 0's batch-norm
    statistics: DDP syncs them only before a forward)."""
    if dist_info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(images).logits.float()
        totals[0] += F.cross_entropy(logits, labels, reduction="sum")
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += labels.numel()
    if dist_info.enabled:
        dist.all_reduce(totals)
    model.train()
    loss, correct, count = totals.tolist()
    return loss / count, correct / count


@torch.no_grad()
def held_out_topography(trainer: Trainer) -> dict[str, dict[str, float]]:
    """Per area, on held-out test images: topography score and channel-grid neighbour
    similarity of rates and incoming weights (see :mod:`tdsnn.topo.metrics`)."""
    model, data = trainer.model, trainer.data
    model.eval()
    count = min(len(data.test_set), SCORE_IMAGES)
    loader = data.loader(data.test_set, shard_batches(count, 128))
    counts = area_spike_counts(model, (images.to(trainer.device) for images, _ in loader))
    model.train()
    weights = {name: area.output_weight for name, area in model.areas.items()}
    return area_topography(counts, trainer.sheets, weights, seed=trainer.config.run.seed)


def run_summary(trainer: Trainer, test_loss: float, test_acc: float, wall_seconds: float) -> dict:
    """The contents of ``summary.json`` of a finished run (a collective under DDP)."""
    state, config, validated = trainer.state, trainer.config, trainer.data.val_loader is not None
    summary = {
        "run_dir": str(trainer.out),
        "area_stack": list(trainer.model.area_names),
        "dataset": config.data.dataset,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_test_acc": None if validated else state.best_acc,
        "best_val_acc": state.best_acc if validated else None,
        "best_epoch": state.best_epoch,
        "selected_on": selected_on(config.optim.select, validated),
        "until_plateau": config.optim.until_plateau,
        "plateau_reached": trainer.plateaued,
        "epochs": state.epoch,
        "global_steps": state.global_step,
        "train_images": state.train_images,
        "images_per_s": state.train_images / max(state.train_seconds, 1e-9),
        "wall_seconds": wall_seconds,
        "parameters": count_parameters(trainer.model),
        "world_size": trainer.dist.world_size,
        "topo": config.topo.name,
        "topography": held_out_topography(trainer),
        "environment": environment_info(trainer.device),
    }
    if trainer.dist.enabled:  # one checksum of all parameters and buffers per rank
        tensors = trainer.model.state_dict().values()
        checksum = float(sum(t.double().sum() for t in tensors if t.is_floating_point()))
        summary["rank_parameter_checksums"] = all_gather_objects(checksum, trainer.dist)
    return summary


def selected_on(select: str, validated: bool) -> str:
    """What chose ``best.pt`` (``summary.json``'s ``selected_on``): ``validation`` or ``test``,
    the split of the best accuracy, or ``final``, the last epoch (whose accuracy on the
    validation split, else the test split, is then ``best_val_acc`` or ``best_test_acc``)."""
    if select == "final":
        return "final"
    return "validation" if validated else "test"


def train(config: RunConfig, *, resume: bool = False) -> dict:
    """Train as configured and return the summary (also written to ``summary.json``).

    Raises :class:`~tdsnn.errors.Stopped` when Ctrl-C or SIGTERM stopped the run at a step
    boundary; ``last.pt`` then holds that boundary and ``resume=True`` continues from it.
    """
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run()
    finally:
        if hasattr(trainer, "net"):  # set up far enough to have wrapped the model
            del trainer.net  # the DDP wrapper holds the process group
        close_distributed()
