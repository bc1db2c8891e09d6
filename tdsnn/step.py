"""The training step: forward, cross-entropy + topographic loss, backward, optimiser step.

:class:`tdsnn.train.Trainer` takes this step for every batch and ``tdsnn bench`` (suites
``step`` and ``cpu-step``) times it, so the benchmark measures the step users train with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdsnn.topo.objective import TopoObjective

__all__ = ["StepResult", "train_step"]


@dataclass(frozen=True)
class StepResult:
    """What one step computed, detached: the total and task losses (scalars), the topographic
    terms per area (``{area: {name: scalar}}``) and the logits ``[B, classes]``."""

    loss: Tensor
    task_loss: Tensor
    terms: dict[str, dict[str, Tensor]]
    logits: Tensor


def train_step(
    net: nn.Module,
    objective: TopoObjective,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    generator: torch.Generator,
    *,
    model: nn.Module | None = None,
    amp: bool = False,
    ramp: float = 1.0,
    check_loss: Callable[[Tensor], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> StepResult:
    """One optimiser step of ``net`` on ``images [B, 3, S, S]`` and ``labels [B]``.

    Args:
        net: the network called for the forward pass (the area stack, or its DDP wrapper).
        objective: the topographic loss; its terms are drawn with ``generator``.
        optimizer: stepped once, after the gradients are zeroed and the loss backpropagated.
        model: the unwrapped area stack the terms read weights from (default: ``net``).
        amp: bf16 autocast of the forward (``--amp``).
        ramp: factor on the topographic loss (the warm-up ramp, 1 after it).
        check_loss: called with the total loss before the backward (the divergence check).
        scheduler: stepped after the optimiser, if given.
    """
    model = net if model is None else model
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(images, **objective.recording())
        task_loss = F.cross_entropy(out.logits.float(), labels)
    terms = objective.stack_terms(model, out, generator)
    loss = task_loss
    if terms:
        loss = loss + ramp * objective.loss(terms)
    if check_loss is not None:
        check_loss(loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    detached = {area: {k: v.detach() for k, v in t.items()} for area, t in terms.items()}
    return StepResult(loss.detach(), task_loss.detach(), detached, out.logits.detach())
