"""The training step: forward, cross-entropy + topographic loss, backward, optimiser step, and
the one wiring of what it takes (:func:`build_training`: objective, optimiser, schedule,
generator, CUDA-graph capture) from a run's config.

:class:`tdsnn.train.Trainer` takes this step for every batch and ``tdsnn bench`` (suites
``step`` and ``cpu-step``) times it, both built by :func:`build_training`, so the benchmark
measures the step users train with, with the config's optimiser.

:class:`GraphedStep` is the same step captured in CUDA graphs (``tdsnn train --cuda-graphs``):
after a few eager warm-up steps, the forward and loss are captured in one graph and the
backward and optimiser step in a second, on static input buffers, and both are replayed for
every later batch. The loss is checked between the two replays, as :func:`train_step` checks it
before the backward, so a diverged step never reaches the weights. The step is capturable
because nothing in it reads the device from the host and its shapes are fixed: clusters are
picked on the device from banks (:meth:`tdsnn.topo.objective.TopoObjective.terms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdsnn.errors import ConfigError
from tdsnn.topo.objective import TopoObjective

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from tdsnn.config import OptimConfig, RunConfig
    from tdsnn.sheet import Sheet

__all__ = [
    "SCHEDULES",
    "Constant",
    "GraphedStep",
    "StepResult",
    "Training",
    "WarmupCosine",
    "WarmupStep",
    "build_optimizer",
    "build_training",
    "backward_step",
    "check_capturable",
    "make_capturable",
    "portable_scheduler_state",
    "portable_state",
    "train_step",
]


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
    out, task_loss, terms, loss = _forward_loss(
        net, model, objective, images, labels, generator, amp=amp, ramp=ramp
    )
    if check_loss is not None:
        check_loss(loss)
    backward_step(optimizer, loss)
    if scheduler is not None:
        scheduler.step()
    return _result(loss, task_loss, terms, out.logits)


def backward_step(
    optimizer: torch.optim.Optimizer, loss: Tensor, *, zero_grad: bool = True
) -> None:
    """Backpropagate ``loss`` and step ``optimizer``: the update of :func:`train_step` and of
    its CUDA-graph capture (which zeroes the gradients before capturing, ``zero_grad=False``)."""
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _forward_loss(
    net, model, objective, images, labels, generator, *, amp, ramp, cache=True
) -> tuple:
    """``(out, task_loss, terms, loss)`` of one forward pass; ``ramp`` a float or a 0-d tensor;
    ``cache``: autocast's weight cache (off under CUDA-graph capture)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache):
        out = net(images, **objective.recording())
        task_loss = F.cross_entropy(out.logits.float(), labels)
    terms = objective.stack_terms(model, out, generator)
    loss = task_loss
    if terms:
        loss = loss + ramp * objective.loss(terms)
    return out, task_loss, terms, loss


def _result(loss: Tensor, task_loss: Tensor, terms: dict, logits: Tensor) -> StepResult:
    detached = {area: {k: v.detach() for k, v in t.items()} for area, t in terms.items()}
    return StepResult(loss.detach(), task_loss.detach(), detached, logits.detach())


# ----------------------------------------------------------------------------- CUDA graphs


def check_capturable(device: torch.device, world_size: int = 1) -> None:
    """Refuse ``--cuda-graphs`` (one-line :class:`ConfigError`) where the step cannot be
    captured: off CUDA, and under DDP (its gradient all-reduce runs outside the graph)."""
    if torch.device(device).type != "cuda":
        raise ConfigError("--cuda-graphs needs --device cuda")
    if world_size > 1:
        raise ConfigError(
            "--cuda-graphs captures a single-process step: DDP's gradient all-reduce (torchrun "
            f"with {world_size} processes) cannot be captured; train in one process or drop "
            "--cuda-graphs"
        )


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Ready a (loaded) optimiser for capture: ``capturable`` on, step counters and learning
    rates as float32 tensors on ``device`` (a captured step reads them there; schedulers fill
    the rates in place). Undoes :func:`portable_state` after ``load_state_dict``."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def portable_state(state: dict) -> dict:
    """An optimiser ``state_dict()`` as an uncaptured AdamW keeps it: learning rates as floats,
    ``capturable`` off, step counters on the CPU; checkpoints then load alike with or without
    ``--cuda-graphs`` (:func:`make_capturable` turns it back)."""
    groups = [
        {
            **g,
            "lr": float(g["lr"]) if isinstance(g["lr"], Tensor) else g["lr"],
            **({"capturable": False} if "capturable" in g else {}),
        }
        for g in state["param_groups"]
    ]
    params = {
        key: {k: v.cpu() if k == "step" else v for k, v in entry.items()}
        for key, entry in state["state"].items()
    }
    return {**state, "state": params, "param_groups": groups}


def portable_scheduler_state(state: dict) -> dict:
    """A scheduler ``state_dict()`` with its last learning rates as floats (a scheduler over
    tensor rates keeps tensor copies), so that it loads alike with or without
    ``--cuda-graphs``."""
    last = state.get("_last_lr")
    if last is None:
        return state
    return {**state, "_last_lr": [float(v) if isinstance(v, Tensor) else v for v in last]}


class GraphedStep:
    """:func:`train_step` captured in two CUDA graphs after ``warmup`` eager steps.

    Graph 1 is the forward pass and the loss (cluster picks included: ``generator`` is
    registered with it), graph 2 the backward and the optimiser step; they share a memory pool
    and replay in that order, the loss check between them. Batches of another shape than the
    captured one (a short last batch) take the eager step. The optimiser must be capturable
    (:func:`build_optimizer` with ``capturable``, :func:`make_capturable`); the scheduler runs
    on the host after each step and fills the learning-rate tensors.

    Args: as :func:`train_step`; ``warmup``: eager steps (on a side stream) before capture.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: TopoObjective,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator | None,
        *,
        model: nn.Module | None = None,
        amp: bool = False,
        warmup: int = 3,
    ):
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise ConfigError("GraphedStep needs a capturable optimiser (capturable=True)")
        if int(warmup) < 1:
            raise ConfigError(f"GraphedStep needs warmup >= 1 (optimiser state), got {warmup}")
        self.net, self.model = net, net if model is None else model
        self.objective, self.optimizer, self.generator = objective, optimizer, generator
        self.amp, self.warmup = amp, int(warmup)
        self.calls = 0
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        self._static: dict = {}

    @property
    def captured(self) -> bool:
        return self.graphs is not None

    def __call__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        ramp: float = 1.0,
        check_loss: Callable[[Tensor], None] | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> StepResult:
        """One optimiser step on ``images [B, 3, S, S]``, ``labels [B]`` (as :func:`train_step`)."""
        check_capturable(images.device)
        self.calls += 1
        if self.calls <= self.warmup:
            return self._warmup_step(images, labels, ramp, check_loss, scheduler)
        if not self.captured:
            self._capture(images, labels)
        static = self._static
        if images.shape != static["images"].shape or labels.shape != static["labels"].shape:
            return self._eager(images, labels, ramp, check_loss, scheduler)
        static["images"].copy_(images)
        static["labels"].copy_(labels)
        static["ramp"].fill_(float(ramp))
        forward, backward = self.graphs
        forward.replay()
        if check_loss is not None:
            check_loss(static["loss"])
        backward.replay()
        if scheduler is not None:
            scheduler.step()
        result = _result(static["loss"], static["task_loss"], static["terms"], static["logits"])
        # copies: the next replay overwrites the static outputs
        return StepResult(
            result.loss.clone(),
            result.task_loss.clone(),
            {a: {k: v.clone() for k, v in t.items()} for a, t in result.terms.items()},
            result.logits.clone(),
        )

    def _eager(self, images, labels, ramp, check_loss, scheduler) -> StepResult:
        return train_step(
            self.net, self.objective, self.optimizer, images, labels, self.generator,
            model=self.model, amp=self.amp, ramp=ramp, check_loss=check_loss, scheduler=scheduler,
        )  # fmt: skip

    def _warmup_step(self, images, labels, ramp, check_loss, scheduler) -> StepResult:
        """An eager step on a side stream (lazy initialisation stays out of the capture)."""
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            result = self._eager(images, labels, ramp, check_loss, scheduler)
        torch.cuda.current_stream(images.device).wait_stream(side)
        return result

    def _capture(self, images: Tensor, labels: Tensor) -> None:
        """Capture the two graphs on static buffers shaped like ``images``, ``labels``."""
        static = self._static
        static["images"], static["labels"] = images.clone(), labels.clone()
        static["ramp"] = torch.ones((), device=images.device)
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        if self.generator is not None and not _is_default(self.generator):
            forward.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated in the graph pool
        with torch.cuda.graph(forward, capture_error_mode="thread_local"):
            out, task_loss, terms, loss = _forward_loss(
                self.net, self.model, self.objective, static["images"], static["labels"],
                self.generator, amp=self.amp, ramp=static["ramp"], cache=False,
            )  # fmt: skip
        static.update(loss=loss, task_loss=task_loss, terms=terms, logits=out.logits)
        with torch.cuda.graph(backward, pool=forward.pool(), capture_error_mode="thread_local"):
            backward_step(self.optimizer, loss, zero_grad=False)
        self.graphs = (forward, backward)


def _is_default(generator: torch.Generator) -> bool:
    """Whether ``generator`` is its CUDA device's default generator (registered by capture)."""
    index = generator.device.index or 0
    return generator is torch.cuda.default_generators[index]


# ----------------------------------------------------------------------------- wiring


class Constant:
    """The learning-rate factor of step ``k`` (``--schedule constant``): 1 at every step, no
    warm-up. ``total_steps`` is kept for the topographic loss's ramp."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = max(1, int(total_steps))

    def __call__(self, step: int) -> float:
        return 1.0


class WarmupCosine(Constant):
    """The learning-rate factor of step ``k``: linear warm-up over the first 10 % of
    ``total_steps``, then cosine decay to 0 at the end. ``total_steps`` is read at every step,
    so raising it (a resume with more ``--epochs``) stretches the rest of the schedule."""

    @property
    def warmup(self) -> int:
        """Steps of the linear warm-up (10 %, at least 1)."""
        return max(1, int(0.1 * self.total_steps))

    def __call__(self, step: int) -> float:
        warmup = self.warmup
        if step < warmup:
            return (step + 1) / warmup
        return self.decay(step, warmup)

    def decay(self, step: int, warmup: int) -> float:
        """The factor after the warm-up: cosine from 1 to 0 at ``total_steps``."""
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupStep(WarmupCosine):
    """The learning-rate factor of step ``k`` (``--schedule step``): the linear warm-up of
    :class:`WarmupCosine`, then 1, times 0.1 from 50 % of ``total_steps`` and 0.1 again from
    75 % (1, 0.1, 0.01)."""

    def decay(self, step: int, warmup: int) -> float:
        """The factor after the warm-up: 1, 0.1 from half the steps, 0.01 from three quarters."""
        return 0.1 ** sum(step >= fraction * self.total_steps for fraction in (0.5, 0.75))


SCHEDULES: dict[str, type[Constant]] = {
    "cosine": WarmupCosine,
    "constant": Constant,
    "step": WarmupStep,
}
"""The learning-rate factors of ``optim.schedule`` (:data:`tdsnn.choices.SCHEDULES`)."""


def build_optimizer(params, optim: OptimConfig, *, capturable: bool = False) -> Optimizer:
    """``optim.optimizer`` over ``params`` at ``optim.lr``: AdamW (weight decay decoupled),
    Adam (weight decay as L2) or SGD (``optim.momentum``, weight decay as L2). ``capturable``
    (``--cuda-graphs``): Adam and AdamW whose step can be captured (call
    :func:`make_capturable` once the scheduler is built and any state loaded); SGD is refused
    with it (:class:`~tdsnn.config.RunConfig`)."""
    lr, decay = optim.lr, optim.weight_decay
    if optim.optimizer == "sgd":
        if capturable:
            raise ConfigError("--cuda-graphs captures the adam and adamw steps, not sgd")
        return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=decay)
    kind = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=lr, weight_decay=decay, capturable=capturable)


@dataclass
class Training:
    """What training a model takes besides its data, from :func:`build_training`."""

    objective: TopoObjective
    optimizer: torch.optim.Optimizer
    schedule: Constant  # one of SCHEDULES; its total_steps also times the loss's ramp
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # the topographic loss's cluster draws (one stream per rank)
    graphed: GraphedStep | None = None

    def capture(self, net: nn.Module, model: nn.Module, *, amp: bool = False) -> GraphedStep:
        """The step captured in CUDA graphs (``--cuda-graphs``), once any optimiser state is
        loaded: makes the optimiser capturable on the model's device."""
        make_capturable(self.optimizer, next(model.parameters()).device)
        self.graphed = GraphedStep(
            net, self.objective, self.optimizer, self.generator, model=model, amp=amp
        )
        return self.graphed


def build_training(
    config: RunConfig,
    model: nn.Module,
    sheets: dict[str, Sheet],
    device: torch.device | str,
    *,
    total_steps: int,
    rank: int = 0,
    objective_type: type[TopoObjective] = TopoObjective,
) -> Training:
    """The objective of ``config.topo`` on ``sheets`` (cluster banks on ``device``, from the run
    seed), the optimiser of ``config.optim`` (:func:`build_optimizer`; capturable under
    ``config.run.cuda_graphs``), its ``optim.schedule`` over ``total_steps``, and the
    cluster-draw generator of process ``rank`` (seeded ``run.seed + 7919 · rank``)."""
    seed = config.run.seed
    objective = objective_type(config.objective_topo(), sheets, model.area_names, seed=seed)
    objective.prepare(device)
    generator = torch.Generator(device)
    generator.manual_seed(seed + 7919 * rank)
    optimizer = build_optimizer(model.parameters(), config.optim, capturable=config.run.cuda_graphs)
    schedule = SCHEDULES[config.optim.schedule](total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return Training(objective, optimizer, schedule, scheduler, generator)
