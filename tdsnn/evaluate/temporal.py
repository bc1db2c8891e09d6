"""Perturbations of spike timing in trained LIF area stacks (``tdsnn evaluate``).

Spike trains are the areas' outputs, time-major ``spikes: [T, B, C, H, W] float {0, 1}``. Every
function below is deterministic given its ``generator``, returns a new tensor and is the
identity at level 0:

- :func:`jitter_spikes`: each spike moved by its own random lag of at most ``k`` steps,
  kept in the window ``[0, T)`` and kept in number (two spikes may share a slot);
- :func:`delete_spikes` / :func:`insert_spikes`: each spike deleted, or each silent slot
  given a spike, with probability ``p``;
- :func:`shift_trains`: a fraction of the units (per image) circularly shifted in time by
  their own random lag: each unit keeps its spike count and inter-spike intervals (up to the
  wrap), and the timing across units is lost.

:func:`perturbed_spikes` applies one of them to the outputs of chosen areas inside a block
(forward hooks, as :func:`tdsnn.evaluate.perturb.silence` does); :func:`run_for` runs the
stack for another number of steps, and :class:`EarlyReadout` reads every prefix of the steps
out of one pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from tdsnn.areas import AreaStack, StackOutput

__all__ = [
    "SPIKE_PERTURBATIONS",
    "EarlyReadout",
    "delete_spikes",
    "insert_spikes",
    "jitter_spikes",
    "perturbed_spikes",
    "run_for",
    "shift_trains",
]


def _uniform(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """``U[0, 1)`` draws of ``shape`` from ``generator`` (on the CPU), on ``like``'s device."""
    return torch.rand(shape, generator=generator).to(like.device)


def jitter_spikes(spikes: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Each spike of ``spikes [T, ...]`` moved by an independent integer lag drawn uniformly
    from those in ``[-k, k]`` that keep it in ``[0, T)`` (a lag that would leave the window is
    redrawn, so that spikes do not pile up on the first and last steps as clamping would).

    Every unit keeps its spike count exactly: spikes that land in one slot add up there, so
    the result holds counts (a slot of 2 gives the next layer the input of two spikes)."""
    if k == 0:
        return spikes.clone()
    steps = spikes.shape[0]
    flat = spikes.reshape(steps, -1)  # [T, N]
    t, unit = flat.nonzero(as_tuple=True)
    low = (t - k).clamp_min(0)
    choices = (t + k).clamp_max(steps - 1) - low + 1  # lags that keep the spike in [0, T)
    pick = (_uniform(len(t), generator, t) * choices).long().clamp_max(choices - 1)
    moved = torch.zeros_like(flat)
    moved.index_put_((low + pick, unit), flat[t, unit], accumulate=True)
    return moved.view_as(spikes)


def delete_spikes(spikes: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each spike of ``spikes [T, ...]`` deleted with probability ``p`` (1: every one)."""
    return spikes * (_uniform(spikes.shape, generator, spikes) >= p)


def insert_spikes(spikes: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each silent slot (unit, step) of ``spikes [T, ...]`` given a spike with probability
    ``p``; spikes already there stay."""
    inserted = (spikes == 0) & (_uniform(spikes.shape, generator, spikes) < p)
    return torch.where(inserted, torch.ones_like(spikes), spikes)


def shift_trains(spikes: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """``spikes [T, B, ...]`` with ``round(fraction · N)`` of each image's N units (drawn per
    image) circularly shifted in time by independent lags uniform in ``[0, T)``:
    ``out[t] = spikes[(t − lag) mod T]``. Each unit keeps its count and its inter-spike
    intervals up to the wrap; at ``fraction`` 1 the relative timing of any two units is
    uniform (synchrony left only by chance)."""
    steps, batch = spikes.shape[:2]
    flat = spikes.reshape(steps, batch, -1)  # [T, B, N]
    count = round(fraction * flat.shape[2])
    if count == 0:
        return spikes.clone()
    order = _uniform(flat.shape[1:], generator, flat).argsort(dim=1)[:, :count]  # [B, count]
    lags = (_uniform(order.shape, generator, flat) * steps).long().clamp_max(steps - 1)
    lag = torch.zeros(flat.shape[1:], dtype=torch.long, device=flat.device)
    lag.scatter_(1, order, lags)  # [B, N], 0 for the units left in place
    time = torch.arange(steps, device=flat.device).view(-1, 1, 1)
    return flat.gather(0, (time - lag) % steps).view_as(spikes)


SPIKE_PERTURBATIONS: dict[str, Callable[[Tensor, float, torch.Generator], Tensor]] = {
    "spike-jitter": lambda s, level, g: jitter_spikes(s, int(level), g),
    "spike-deletion": delete_spikes,
    "spike-insertion": insert_spikes,
    "synchrony-disruption": shift_trains,
}
"""Test name -> perturbation of spike trains ``(spikes, level, generator) -> spikes``."""


@contextmanager
def perturbed_spikes(
    model: AreaStack,
    areas: tuple[str, ...],
    perturbation: Callable[[Tensor, float, torch.Generator], Tensor],
    level: float,
    generator: torch.Generator,
) -> Iterator[None]:
    """Within the block, the output spikes ``[T, B, C, H, W]`` of each of ``areas`` pass
    through ``perturbation(spikes, level, generator)`` before the next layer (and recorders)
    see them; every forward pass draws anew from ``generator``."""

    def hook(module, inputs, output):
        spikes = output[0] if isinstance(output, tuple) else output
        changed = perturbation(spikes, level, generator)
        return (changed, *output[1:]) if isinstance(output, tuple) else changed

    with ExitStack() as stack:
        for area in areas:
            stack.callback(model.areas[area].register_forward_hook(hook).remove)
        yield


@contextmanager
def run_for(model: AreaStack, steps: int) -> Iterator[None]:
    """Within the block, ``model`` runs for ``steps`` time steps instead of its own T (its
    input is encoded for ``steps`` steps; the readout averages over all of them)."""
    original = model.config
    model.config = dataclasses.replace(original, timesteps=int(steps))
    try:
        yield
    finally:
        model.config = original


class EarlyReadout(nn.Module):
    """``model`` read out early: one pass of its T steps gives, per step count t of
    ``steps`` (each in ``1..T``), the logits averaged over the first t steps. Its output's
    ``logits`` are ``[len(steps), B, classes]``.

    The classifier is affine, so averaging its per-step logits over the first t steps equals
    classifying the rates of those steps; the stack is causal, so with direct coding this is
    what the stack run for t steps gives.
    """

    def __init__(self, model: AreaStack, steps: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.steps = steps

    def forward(self, images: Tensor) -> StackOutput:
        last = self.model.area_names[-1]
        x = self.model(images, record=[last]).spikes[last]  # [T, B, C, H, W]
        logits = self.model.readout(self.model.dropout(x.mean(dim=(3, 4))))  # [T, B, classes]
        count = torch.arange(1, len(x) + 1, device=x.device, dtype=logits.dtype)
        prefix = logits.cumsum(0) / count.view(-1, 1, 1)  # row t - 1: the first t steps
        return StackOutput(logits=prefix[[t - 1 for t in self.steps]])
