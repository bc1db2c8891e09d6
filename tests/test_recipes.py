"""Training recipes: ``--optimizer``, ``--schedule``, ``--select`` and ``--normalize``, each with
today's behaviour as its default."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import tdsnn.train
from tdsnn.areas import AreaStack, build_model
from tdsnn.config import OptimConfig, RunConfig, load_config
from tdsnn.errors import ConfigError
from tdsnn.experiment.runner import changed_options
from tdsnn.rundir import Checkpoint, load_run
from tdsnn.step import SCHEDULES, WarmupCosine, build_optimizer, build_training
from tdsnn.train import train


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


# ------------------------------------------------------------------ optimisers


def test_the_default_optimizer_is_todays_adamw():
    optim = OptimConfig()
    assert (optim.optimizer, optim.schedule, optim.select) == ("adamw", "cosine", "best-val")
    built = build_optimizer(_params(), optim)
    today = torch.optim.AdamW(_params(), lr=optim.lr, weight_decay=optim.weight_decay)
    assert type(built) is torch.optim.AdamW and built.defaults == today.defaults


@pytest.mark.parametrize(
    "name, kind, decoupled", [("adamw", torch.optim.AdamW, True), ("adam", torch.optim.Adam, False)]
)
def test_adam_takes_weight_decay_as_l2_and_adamw_decoupled(name, kind, decoupled):
    optim = OptimConfig(optimizer=name, lr=0.1, weight_decay=0.5)
    params = _params()
    optimizer = build_optimizer(params, optim)
    assert type(optimizer) is kind and optimizer.defaults["weight_decay"] == 0.5
    start = params[0].detach().clone()
    params[0].grad = torch.zeros_like(start)  # a zero gradient: only the weight decay acts
    params[1].grad = torch.zeros_like(params[1])
    optimizer.step()
    if decoupled:  # p <- p (1 - lr wd)
        torch.testing.assert_close(params[0].detach(), start * (1 - 0.1 * 0.5))
    else:  # g = wd p, and Adam's first step moves every weight by lr against its sign
        torch.testing.assert_close(params[0].detach(), start - 0.1 * start.sign())


def test_sgd_uses_the_momentum_and_allows_no_weight_decay():
    config = load_config(None, {"optim.optimizer": "sgd", "optim.weight_decay": "0"})
    optimizer = build_optimizer(_params(), config.optim)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 0
    plain = load_config(None, {"optim.optimizer": "sgd", "optim.momentum": 0}).optim
    assert build_optimizer(_params(), plain).defaults["momentum"] == 0


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_cuda_graphs_builds_a_capturable_adam_or_adamw(tiny_config, name):
    tiny_config = tiny_config.with_overrides({"topo.name": "none"})
    config = tiny_config.with_overrides({"optim.optimizer": name, "run.cuda_graphs": True})
    model = AreaStack(config.model, num_classes=4)
    training = build_training(config, model, {}, "cpu", total_steps=10)
    assert all(group["capturable"] for group in training.optimizer.param_groups)
    eager = build_training(tiny_config.with_overrides({"optim.optimizer": name}), model, {}, "cpu",
                           total_steps=10)  # fmt: skip
    assert not any(group["capturable"] for group in eager.optimizer.param_groups)


def test_sgd_is_not_captured():
    with pytest.raises(ConfigError, match="^--cuda-graphs .* without --cuda-graphs$"):
        load_config(None, {"optim.optimizer": "sgd", "run.cuda_graphs": True})
    with pytest.raises(ConfigError, match="not sgd"):
        build_optimizer(_params(), OptimConfig(optimizer="sgd"), capturable=True)


# ------------------------------------------------------------------ schedules


def _rates(schedule: str, total: int, lr: float = 0.01) -> list[float]:
    """The learning rate of every step of a LambdaLR over ``schedule``."""
    optimizer = torch.optim.SGD(_params(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES[schedule](total))
    rates = []
    for _ in range(total):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("total", [1, 7, 40, 1000])
def test_cosine_is_todays_warm_up_and_cosine_bit_for_bit(total):
    def today(step):  # the schedule as it was before --schedule
        warmup = max(1, int(0.1 * total))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    schedule = WarmupCosine(total)
    assert [schedule(k) for k in range(total + 3)] == [today(k) for k in range(total + 3)]
    assert SCHEDULES["cosine"] is WarmupCosine


def test_constant_keeps_the_learning_rate_at_every_step():
    assert _rates("constant", 50, lr=1e-3) == [1e-3] * 50


def test_step_warms_up_then_divides_by_ten_at_half_and_three_quarters():
    rates = _rates("step", 40, lr=1.0)
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # 10 % warm-up
    assert rates[4:20] == [1.0] * 16
    assert rates[20:30] == pytest.approx([0.1] * 10)
    assert rates[30:] == pytest.approx([0.01] * 10)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "step"])
def test_every_schedule_times_the_topographic_ramp(tiny_config, schedule):
    config = tiny_config.with_overrides({"optim.schedule": schedule, "topo.name": "none"})
    model = AreaStack(config.model, num_classes=4)
    training = build_training(config, model, {}, "cpu", total_steps=30)
    assert type(training.schedule) is SCHEDULES[schedule]
    assert training.schedule.total_steps == 30


# ------------------------------------------------------------------ selection of best.pt


@pytest.fixture
def falling_accuracy(monkeypatch):
    """Test accuracy 0.9 after epoch 1, 0.5 after epoch 2: best-val keeps epoch 1."""
    accuracies = iter([0.9, 0.5])
    evaluate = lambda self, loader=None: (1.0, next(accuracies))  # noqa: E731
    monkeypatch.setattr(tdsnn.train.Trainer, "evaluate", evaluate)


@pytest.mark.parametrize(
    "select, best_epoch, best_acc, selected_on",
    [("best-val", 1, 0.9, "test"), ("final", 2, 0.5, "final")],
)
def test_select_chooses_what_best_pt_holds_and_the_summary_says_so(
    tiny_config, falling_accuracy, select, best_epoch, best_acc, selected_on
):
    summary = train(tiny_config.with_overrides({"optim.select": select}))
    out = Path(tiny_config.run.out)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["best_epoch"] == best_epoch and summary["best_test_acc"] == best_acc
    assert summary["best_val_acc"] is None and summary["selected_on"] == selected_on
    best, last = Checkpoint.load(out / "best.pt"), Checkpoint.load(out / "last.pt")
    assert best.state["best_epoch"] == best_epoch == best.state["epoch"]
    same = all(torch.equal(best.model[k], last.model[k]) for k in last.model)
    assert same == (select == "final")


# ------------------------------------------------------------------ normalisation


def _stem_input(model: AreaStack, images: torch.Tensor) -> torch.Tensor:
    """What the model's first layer (the stem's convolution) receives for ``images``."""
    seen = []
    hook = model.stem.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(images)
    finally:
        hook.remove()
    return seen[0]


def test_normalize_is_applied_by_the_model_before_its_first_layer(tiny_config):
    config = tiny_config.with_overrides({"data.normalize": "0.25,0.5"})
    assert config.data.normalize == (0.25, 0.5)
    torch.manual_seed(0)
    normalised = build_model(config.model, 4, normalize=config.data.normalize).eval()
    plain = AreaStack(config.model, num_classes=4).eval()
    plain.load_state_dict(normalised.state_dict())
    assert normalised.state_dict().keys() == plain.state_dict().keys()  # no new state
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        want = _stem_input(plain, (images - 0.25) / 0.5)
        torch.testing.assert_close(_stem_input(normalised, images), want, rtol=0, atol=0)
        torch.testing.assert_close(_stem_input(plain, images), images.unsqueeze(0))
        torch.testing.assert_close(
            normalised(images).logits, plain((images - 0.25) / 0.5).logits, rtol=0, atol=0
        )
    torch.testing.assert_close(normalised.encode(images)[0], (images - 0.25) / 0.5)
    assert build_model(tiny_config.model, 4, normalize=tiny_config.data.normalize).normalize is None


def test_a_normalised_run_keeps_its_normalisation_for_evaluate_and_record(tiny_config):
    config = tiny_config.with_overrides({"data.normalize": [0.5, 0.25], "optim.epochs": 1})
    train(config)
    trained = load_run(config.run.out)
    assert trained.config.data.normalize == (0.5, 0.25) and trained.model.normalize == (0.5, 0.25)
    written = yaml.safe_load((Path(config.run.out) / "config.yaml").read_text())
    assert written["data"]["normalize"] == [0.5, 0.25]


def test_normalize_needs_the_direct_encoding():
    with pytest.raises(ConfigError, match="^--normalize .*--encoding direct$"):
        load_config(None, {"data.normalize": "0.1307,0.3081", "model.encoding": "rate"})
    assert load_config(None, {"data.normalize": "null"}).data.normalize is None


@pytest.mark.parametrize("value", ["0.1,0", "0.1,-2", "1", "1,2,3", "a,b", [], [0.1, "x"], True])
def test_a_malformed_normalize_is_one_config_error(value):
    with pytest.raises(ConfigError, match=r"^data\.normalize must be MEAN,STD") as info:
        load_config(None, {"data.normalize": value})
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ older runs and plans


def test_a_plan_saved_before_the_recipe_options_is_not_a_changed_run():
    config = RunConfig()
    saved = config.to_dict()
    for section, key in [("optim", "optimizer"), ("optim", "momentum"), ("optim", "schedule"),
                         ("optim", "select"), ("data", "normalize")]:  # fmt: skip
        del saved[section][key]
    assert changed_options(saved, config) == []
    assert changed_options(saved, config.with_overrides({"optim.lr": 0.1})) == ["optim.lr"]
    assert changed_options(saved, config.with_overrides({"optim.select": "final"})) == [
        "optim.select"
    ]


@pytest.mark.parametrize("arch, default", [("wsas-mnist", "pre"), ("stack", "post")])
def test_a_plan_that_spelled_out_the_architectures_as_input_is_not_a_changed_run(arch, default):
    """Runs saved while ``topo.as_input`` was written resolved (``pre`` for the published
    networks, ``post`` for area stacks) are the runs that leave it unset today."""
    overrides = {"model.arch": arch, "topo.name": "as"}
    if arch != "stack":
        overrides["model.readout_units"] = 121
    config = RunConfig().with_overrides(overrides)
    assert config.topo.as_input is None
    saved = config.to_dict()
    saved["topo"]["as_input"] = default
    assert changed_options(saved, config) == []
    saved["topo"]["as_input"] = "post" if default == "pre" else "pre"
    assert changed_options(saved, config) == ["topo.as_input"]
