"""The training steps that ``tdsnn bench`` times (suites ``step`` and ``cpu-step``) and the
scripts under ``benchmarks/`` build.

A step is :func:`tdsnn.step.train_step`, the function :class:`tdsnn.train.Trainer` calls per
batch, here without the warm-up ramp: forward, cross-entropy + the topographic loss of
:class:`~tdsnn.topo.objective.TopoObjective`, backward, AdamW (:class:`TrainStep`, built by
:func:`make_step`).

A step of its own on a copy of the model, with the capturable AdamW that ``tdsnn train
--cuda-graphs`` trains with, is a :class:`CapturableStep` (built by :func:`capturable_step`):
captured in CUDA graphs (:class:`tdsnn.step.GraphedStep`), or eager.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack
from tdsnn.bench.timing import synchronize
from tdsnn.config import RunConfig
from tdsnn.step import (
    GraphedStep,
    StepResult,
    Training,
    build_training,
    make_capturable,
    train_step,
)
from tdsnn.topo.objective import TopoObjective

__all__ = [
    "CapturableStep",
    "TrainStep",
    "capturable_step",
    "make_step",
    "shapes_batch",
    "step_config",
]


@dataclass
class TrainStep:
    """One training step on fixed ``images [B, 3, S, S]`` and ``labels [B]``; call it to run."""

    model: AreaStack
    objective: TopoObjective
    optimizer: torch.optim.Optimizer
    images: Tensor
    labels: Tensor
    generator: torch.Generator
    synchronize: bool = True
    amp: bool = False  # bf16 autocast of the forward, as ``tdsnn train --amp``

    def __call__(self) -> None:
        train_step(
            self.model,
            self.objective,
            self.optimizer,
            self.images,
            self.labels,
            self.generator,
            amp=self.amp,
        )
        if self.synchronize:
            synchronize(self.images.device)


def make_step(
    model: AreaStack,
    config: RunConfig,
    images: Tensor,
    labels: Tensor,
    seed: int,
    *,
    synchronize: bool = True,
    amp: bool = False,
) -> TrainStep:
    """One training step as :class:`tdsnn.train.Trainer` takes it, built by the same
    :func:`tdsnn.step.build_training` (the config's optimiser; run seed ``seed``; without the
    warm-up ramp)."""
    training = _training(model, config, images.device, seed)
    return TrainStep(
        model=model,
        objective=training.objective,
        optimizer=training.optimizer,
        images=images,
        labels=labels,
        generator=training.generator,
        synchronize=synchronize,
        amp=amp,
    )


def _training(
    model: AreaStack,
    config: RunConfig,
    device: torch.device,
    seed: int,
    objective_type: type[TopoObjective] = TopoObjective,
) -> Training:
    """:func:`tdsnn.step.build_training` of ``config`` with run seed ``seed``, for one step."""
    config = config.with_overrides({"run.seed": seed})
    sheets = build_area_sheets(model, config)
    return build_training(config, model, sheets, device, total_steps=1,
                          objective_type=objective_type)  # fmt: skip


@dataclass
class CapturableStep:
    """One training step on a model of its own with the capturable AdamW that ``tdsnn train
    --cuda-graphs`` trains with, on fixed ``images [B, 3, S, S]`` and ``labels [B]``: captured
    in CUDA graphs by ``graphed`` (:class:`tdsnn.step.GraphedStep`), or eager
    (:func:`tdsnn.step.train_step`) when ``graphed`` is None. Call it to run one step."""

    model: AreaStack
    objective: TopoObjective
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    images: Tensor
    labels: Tensor
    graphed: GraphedStep | None
    held_mib: float | None = None  # CUDA memory its state holds once captured (see _held_mib)

    def __call__(self) -> StepResult:
        if self.graphed is not None:
            return self.graphed(self.images, self.labels)
        return train_step(
            self.model, self.objective, self.optimizer, self.images, self.labels, self.generator
        )

    def prime(self) -> None:
        """Take the graphed step's eager warm-up steps and its capture (nothing when eager)."""
        while self.graphed is not None and not self.graphed.captured:
            self()

    @torch.enable_grad()
    def logits_at(self, weights: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, classes]`` of one step (a replay when graphed) taken from ``weights`` (a
        state dict), copied into the model in place, where the captured graphs read them."""
        self.prime()
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(weights[name])
        return self().logits


def capturable_step(
    template: AreaStack,
    config: RunConfig,
    images: Tensor,
    labels: Tensor,
    *,
    graphed: bool = True,
    objective_type: type[TopoObjective] = TopoObjective,
) -> CapturableStep:
    """The step of ``config`` under ``--cuda-graphs`` on a copy of ``template`` (same weights;
    ``template`` untouched), built by :func:`tdsnn.step.build_training` (an ``objective_type``
    objective, the config's optimiser made capturable, the config's run seed); ``graphed``:
    captured in CUDA graphs after 3 eager warm-up steps (:class:`tdsnn.step.GraphedStep`)."""
    model = copy.deepcopy(template)
    config = config.with_overrides({"run.cuda_graphs": True})
    training = _training(model, config, images.device, config.run.seed, objective_type)
    step = training.capture(model, model) if graphed else None
    if not graphed:
        make_capturable(training.optimizer, images.device)
    return CapturableStep(model, training.objective, training.optimizer, training.generator,
                          images, labels, step)  # fmt: skip


def step_config(
    stack: str,
    width: float,
    blocks: int | None,
    image_size: int,
    timesteps: int,
    batch: int,
    topo: str,
) -> RunConfig:
    """The run config of a benchmarked step (options checked by the config)."""
    return RunConfig().with_overrides(
        {
            "model.area_stack": stack,
            "model.width": width,
            "model.blocks": blocks,
            "model.timesteps": timesteps,
            "data.image_size": image_size,
            "optim.batch_size": batch,
            "topo.name": topo,
        }
    )


def shapes_batch(image_size: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``batch`` images ``[B, 3, S, S]`` and labels ``[B]`` of the built-in ``shapes`` data."""
    from tdsnn.data import ShapesDataset

    data = ShapesDataset("train", n=batch, seed=0, image_size=image_size)
    images, labels = data[list(range(batch))]
    return images.to(device), labels.to(device)
