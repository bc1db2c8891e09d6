"""``--cuda-graphs``: the training step captured in CUDA graphs (tdsnn.step.GraphedStep).

The refusals and the portable optimiser state run everywhere; the captured step itself needs a
CUDA device (``gpu`` marker)."""

import pytest
import torch

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack
from tdsnn.errors import ConfigError, Stopped
from tdsnn.options import option_key
from tdsnn.rundir import Checkpoint
from tdsnn.step import (
    GraphedStep,
    build_optimizer,
    check_capturable,
    make_capturable,
    portable_scheduler_state,
    portable_state,
    train_step,
)
from tdsnn.topo.objective import TopoObjective
from tdsnn.train import Trainer


def test_cuda_graphs_is_refused_off_cuda_and_under_ddp(tiny_config):
    assert option_key("cuda-graphs") == "run.cuda_graphs"
    config = tiny_config.with_overrides({"run.cuda_graphs": True, "run.device": "cpu"})
    with pytest.raises(ConfigError, match="^--cuda-graphs needs --device cuda$"):
        Trainer(config).run()
    with pytest.raises(ConfigError, match="DDP"):
        check_capturable(torch.device("cuda"), world_size=2)
    with pytest.raises(ConfigError, match="capturable"):
        GraphedStep(torch.nn.Linear(2, 2), None, torch.optim.AdamW([torch.zeros(1)]), None)


def test_optimizer_state_is_portable_between_captured_and_eager_runs():
    """A capturable optimiser's state saves as an eager AdamW's (float rates, CPU step
    counters, capturable off) and turns back exactly."""
    param = torch.nn.Parameter(torch.ones(3))
    eager = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.full((3,), 0.5)
    eager.step()
    saved = portable_state(eager.state_dict())
    other = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    other.load_state_dict(saved)
    make_capturable(other, torch.device("cpu"))
    group = other.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    (state,) = other.state.values()
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 1.0
    back = portable_state(other.state_dict())
    assert back["param_groups"][0]["lr"] == pytest.approx(0.1) and isinstance(
        back["param_groups"][0]["lr"], float
    )
    assert back["param_groups"][0]["capturable"] is False
    (entry,) = back["state"].values()
    assert entry["step"].device.type == "cpu"
    assert torch.equal(entry["exp_avg"], saved["state"][0]["exp_avg"])


def test_scheduler_state_is_portable_too():
    """A scheduler over tensor rates (make_capturable) reports tensors; its saved state holds
    floats, which an eager run's scheduler loads and logs as they are."""
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=0.2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s + 1))
    make_capturable(optimizer, torch.device("cpu"))
    optimizer.param_groups[0]["capturable"] = False  # an eager step on the CPU
    param.grad = torch.ones(2)
    optimizer.step()
    scheduler.step()
    assert isinstance(scheduler.get_last_lr()[0], torch.Tensor)
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.05)
    state = portable_scheduler_state(scheduler.state_dict())
    eager = torch.optim.lr_scheduler.LambdaLR(
        torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.2), lambda s: 0.5 ** (s + 1)
    )
    eager.load_state_dict(state)
    (lr,) = eager.get_last_lr()
    assert isinstance(lr, float) and lr == pytest.approx(0.05)
    make_capturable(optimizer, torch.device("cpu"))
    with pytest.raises(ConfigError, match="warmup >= 1"):
        GraphedStep(torch.nn.Linear(2, 2), None, optimizer, None, warmup=0)


def _setup(config, device, seed=0):
    torch.manual_seed(seed)
    model = AreaStack(config.model, num_classes=10).to(device)
    objective = TopoObjective(config.topo, build_area_sheets(model, config), model.area_names, 0)
    optimizer = build_optimizer(model.parameters(), config.optim, capturable=True)  # AdamW
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    make_capturable(optimizer, device)
    generator = torch.Generator(device).manual_seed(5)
    return model, objective, optimizer, scheduler, generator


@pytest.mark.gpu
@pytest.mark.parametrize("topo", ["stc", "tdann"])
def test_captured_step_equals_the_uncaptured_step(tiny_config, topo):
    """Eight steps (two warm-up, capture, replays, with a warm-up ramp and a scheduler) give
    the losses and the weights of eight eager steps."""
    device = torch.device("cuda")
    config = tiny_config.with_overrides({"topo.name": topo})
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.rand(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(8)
    ]
    model, objective, optimizer, scheduler, generator = _setup(config, device)
    eager = []
    for step, (images, labels) in enumerate(batches):
        result = train_step(
            model, objective, optimizer, images.to(device), labels.to(device), generator,
            ramp=min(1.0, (step + 1) / 4), scheduler=scheduler,
        )  # fmt: skip
        eager.append(result.loss)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model, objective, optimizer, scheduler, generator = _setup(config, device)
    graphed = GraphedStep(model, objective, optimizer, generator, warmup=2)
    checked = []
    for step, (images, labels) in enumerate(batches):
        result = graphed(
            images.to(device), labels.to(device), ramp=min(1.0, (step + 1) / 4),
            check_loss=checked.append, scheduler=scheduler,
        )  # fmt: skip
        torch.testing.assert_close(result.loss, eager[step], rtol=1e-4, atol=1e-5)
    assert graphed.captured and len(checked) == 8
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.gpu
def test_captured_step_takes_a_short_batch_eagerly(tiny_config):
    device = torch.device("cuda")
    model, objective, optimizer, scheduler, generator = _setup(tiny_config, device)
    objective.prepare(torch.device("cuda"))  # as Trainer does, with a device without an index
    graphed = GraphedStep(model, objective, optimizer, generator, warmup=1)
    images, labels = torch.rand(16, 3, 16, 16, device=device), torch.arange(16, device=device) % 10
    for _ in range(3):
        graphed(images, labels, scheduler=scheduler)
    short = graphed(images[:5], labels[:5], scheduler=scheduler)
    assert short.logits.shape == (5, 10) and torch.isfinite(short.loss)
    again = graphed(images, labels, scheduler=scheduler)
    assert torch.isfinite(again.loss) and graphed.captured
    for area in objective.areas:  # the banks built at start-up are the ones the steps used
        cache = objective.sheets[area]._cache
        assert sum(1 for key in cache if key[0] == "cluster_bank") == 1


@pytest.mark.gpu
@pytest.mark.slow
def test_train_with_cuda_graphs_resumes_like_an_uninterrupted_run(tiny_config, tmp_path):
    from tdsnn.train import train

    config = tiny_config.with_overrides({"run.cuda_graphs": True, "run.device": "cuda"})
    whole = train(config.with_overrides({"run.out": str(tmp_path / "whole")}))
    assert whole["test_acc"] >= 0.0

    stopped = config.with_overrides({"run.out": str(tmp_path / "stopped")})

    def stop(trainer):
        if trainer.state.global_step == 8:
            trainer.request_stop()

    with pytest.raises(Stopped):
        Trainer(stopped, on_step=stop).run()
    resumed = Trainer(stopped, resume=True).run()
    a = Checkpoint.load(tmp_path / "whole" / "last.pt").model
    b = Checkpoint.load(tmp_path / "stopped" / "last.pt").model
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert resumed["global_steps"] == whole["global_steps"]
