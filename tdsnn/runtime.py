"""Where and how a run executes: device, distributed process group, RNG state, stop signals.

Nothing here knows about models or losses. The training loop uses it; so does anything else
that needs a device (recording, evaluation) or agrees across ``torchrun`` ranks.
"""

from __future__ import annotations

import gc
import os
import platform
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import tdsnn
from tdsnn.errors import ConfigError

__all__ = [
    "DistInfo",
    "StopSignals",
    "all_gather_objects",
    "any_rank",
    "barrier",
    "broadcast_object",
    "close_distributed",
    "environment_info",
    "init_distributed",
    "restore_rng",
    "rng_snapshot",
    "select_device",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the ``torchrun`` processes (one process: rank 0 of 1)."""

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


def close_distributed() -> None:
    """Leave the process group, if this process joined one.

    Whatever still holds the group (a ``DistributedDataParallel`` wrapper caught in a reference
    cycle) is collected first, so that the group and gloo's worker threads are torn down here
    and not during interpreter shutdown, where a worker thread still running aborts the
    process ("terminate called without an active exception").
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def select_device(requested: str, dist_info: DistInfo = DistInfo()) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; under DDP the rank's local GPU."""
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
    """Versions and device, as written into ``summary.json``."""
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


# --------------------------------------------------------------------------- RNG state


def rng_snapshot(*generators: torch.Generator) -> dict:
    """The global torch (and CUDA) RNG states plus those of ``generators`` (in order)."""
    state = {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, *generators: torch.Generator) -> None:
    """Inverse of :func:`rng_snapshot` (same generators, same order)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)


# --------------------------------------------------------------------------- collectives


def any_rank(flags: torch.Tensor, dist_info: DistInfo) -> list[bool]:
    """Per flag, whether it is set on any rank (one all-reduce and one host sync in all)."""
    flags = flags.to(torch.int32)
    if dist_info.enabled:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(f) for f in flags.tolist()]


def all_gather_objects(obj, dist_info: DistInfo) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not dist_info.enabled:
        return [obj]
    gathered = [None] * dist_info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, dist_info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not dist_info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        dist.barrier()


# --------------------------------------------------------------------------- stop signals


class StopSignals:
    """The stop policy of every long command (``train``, ``record``, ``evaluate``, ``sheet
    optimize``, ``experiment``): SIGINT (Ctrl-C) and SIGTERM ask it to stop at its next safe
    boundary.

    Inside ``with StopSignals() as stop:``, the first signal sets ``stop.requested``; the
    command checks it at its boundaries (a training step, a committed recording batch, an
    evaluated point, a swap neighbourhood, the experiment's workers), stops there leaving usable
    files and raises :class:`tdsnn.errors.Stopped`, which says what it kept and how to continue;
    the command line prints that and exits with status 130.
    Another signal at least ``REPEAT_S`` seconds later raises :class:`KeyboardInterrupt` at once
    (also exit status 130). Signals closer together count as one: Ctrl-C under ``torchrun``
    reaches each worker twice, from the terminal and forwarded by torchrun.

    The handlers are installed explicitly, whatever the process inherited: a command started
    with SIGINT ignored (``nohup tdsnn ... &`` from a script or any shell without job control,
    as schedulers and CI wrappers do) still stops cleanly on SIGINT. On leaving the block the
    previous dispositions (an ignored SIGINT included) come back. Outside the main thread (where
    Python cannot install handlers) it does nothing and signals keep their default effect.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 2.0

    def __init__(self) -> None:
        self.requested = False
        self._first: float | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._first is not None and now - self._first >= self.REPEAT_S:
            raise KeyboardInterrupt
        self._first = self._first if self._first is not None else now
        self.requested = True

    def __enter__(self) -> StopSignals:
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
