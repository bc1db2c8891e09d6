"""``tdsnn evaluate``'s temporal tests (run length, early readout, spike jitter, deletion,
insertion, synchrony disruption) and its efficiency figures (firing rates, synaptic
operations)."""

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tdsnn.areas import AreaStack
from tdsnn.cli import main
from tdsnn.errors import ConfigError
from tdsnn.evaluate import perturb, temporal
from tdsnn.evaluate.options import TEMPORAL_TESTS
from tdsnn.evaluate.report import _applicable_tests, evaluate_runs
from tdsnn.evaluate.representation import (
    fan_out,
    representation_metrics,
    synaptic_operations,
)
from tdsnn.evaluate.runner import (
    accuracy,
    check_levels,
    count_evaluations,
    load_eval_run,
    run_test,
)
from tdsnn.experiment.spec import parse_spec
from tdsnn.model_config import ModelConfig


def _spikes(shape=(6, 3, 2, 3, 3), p=0.4, seed=0) -> torch.Tensor:
    """Hand-made binary spike trains ``[T, B, C, H, W]``."""
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def _g(seed=1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def two_areas():
    """A hand-built two-area LIF stack (V1 -> IT, untrained, eval mode) that spikes readily,
    and images it responds to."""
    torch.manual_seed(0)
    config = ModelConfig(area_stack="v1-it", width=0.0625, blocks=1, v_threshold=0.3)
    model = AreaStack(config, num_classes=3).eval()
    images = torch.rand(4, 3, 16, 16, generator=_g(0))
    return model, images


@pytest.fixture(scope="module")
def loaded(spiking_run):
    return load_eval_run(spiking_run, test_size=32, data_root=None, device="cpu", name="tiny")


# --------------------------------------------------------------------------- the perturbations


def test_jittered_spikes_stay_in_the_window_keep_their_count_and_move_at_most_k():
    spikes = _spikes()
    assert torch.equal(temporal.jitter_spikes(spikes, 0, _g()), spikes)
    for k in (1, 2, 5):
        moved = temporal.jitter_spikes(spikes, k, _g(k))
        assert moved.shape == spikes.shape and moved.min() >= 0
        torch.testing.assert_close(moved.sum(0), spikes.sum(0))  # every unit's count, exactly
    # a lone spike per unit moves by at most k, into [0, T)
    lone = torch.zeros(8, 500)
    lone[3] = 1
    moved = temporal.jitter_spikes(lone, 2, _g())
    assert moved.sum(0).eq(1).all() and moved[:1].sum() == 0 and moved[6:].sum() == 0
    # near the edge a lag leaving the window is redrawn, not clamped: uniform over {0, 1, 2}
    edge = torch.zeros(6, 3000)
    edge[0] = 1
    share = temporal.jitter_spikes(edge, 2, _g()).mean(dim=1)
    assert share[:3].tolist() == pytest.approx([1 / 3] * 3, abs=0.04) and share[3:].sum() == 0


def test_spikes_that_collide_add_up_in_their_slot():
    spikes = torch.ones(3, 400)  # every slot full: any move makes a collision
    moved = temporal.jitter_spikes(spikes, 1, _g())
    assert moved.max() > 1 and torch.equal(moved.sum(0), spikes.sum(0))


def test_deletion_removes_each_spike_with_its_probability():
    spikes = _spikes((4, 8, 4, 8, 8))
    assert torch.equal(temporal.delete_spikes(spikes, 0.0, _g()), spikes)
    assert temporal.delete_spikes(spikes, 1.0, _g()).sum() == 0
    half = temporal.delete_spikes(spikes, 0.5, _g())
    assert (half <= spikes).all()
    assert float(half.sum() / spikes.sum()) == pytest.approx(0.5, abs=0.05)


def test_insertion_fills_each_silent_slot_with_its_probability():
    spikes = _spikes((4, 8, 4, 8, 8))
    assert torch.equal(temporal.insert_spikes(spikes, 0.0, _g()), spikes)
    assert torch.equal(temporal.insert_spikes(spikes, 1.0, _g()), torch.ones_like(spikes))
    filled = temporal.insert_spikes(spikes, 0.3, _g())
    assert (filled >= spikes).all() and set(filled.unique().tolist()) <= {0.0, 1.0}
    silent = spikes == 0
    assert float(filled[silent].mean()) == pytest.approx(0.3, abs=0.05)


def test_synchrony_disruption_shifts_whole_trains_and_keeps_every_count():
    spikes = _spikes((5, 4, 3, 4, 4))
    steps, batch = spikes.shape[:2]
    assert torch.equal(temporal.shift_trains(spikes, 0.0, _g()), spikes)
    for fraction in (0.5, 1.0):
        shifted = temporal.shift_trains(spikes, fraction, _g())
        torch.testing.assert_close(shifted.sum(0), spikes.sum(0))  # every unit's count
        before, after = spikes.flatten(2), shifted.flatten(2)  # [T, B, N]
        count = round(fraction * before.shape[2])
        for b in range(batch):
            changed = 0
            for u in range(before.shape[2]):
                train = before[:, b, u]
                rolls = [torch.roll(train, lag) for lag in range(steps)]
                assert any(torch.equal(after[:, b, u], r) for r in rolls)  # a circular shift
                changed += not torch.equal(after[:, b, u], train)
            assert changed <= count
    assert not torch.equal(temporal.shift_trains(spikes, 1.0, _g()), spikes)


def test_perturbations_act_on_the_chosen_areas_outputs_through_hooks(two_areas):
    model, images = two_areas
    with torch.no_grad():
        plain = model(images, record=True)
        assert plain.spikes["V1"].sum() > 0, "the hand-built stack should spike"
        for name, level in (("spike-deletion", 0.0), ("spike-insertion", 0.0)):
            fn = temporal.SPIKE_PERTURBATIONS[name]
            with temporal.perturbed_spikes(model, ("V1",), fn, level, _g()):
                same = model(images, record=True)
            torch.testing.assert_close(same.logits, plain.logits)  # identity at p = 0
        fn = temporal.SPIKE_PERTURBATIONS["spike-deletion"]
        with temporal.perturbed_spikes(model, ("V1",), fn, 1.0, _g()):
            deleted = model(images, record=True)
        everything = torch.arange(plain.spikes["V1"][0, 0].numel())
        with perturb.silence(model, "V1", everything):
            silenced = model(images, record=True)
        assert deleted.spikes["V1"].sum() == 0  # p = 1 silences the layer
        torch.testing.assert_close(deleted.logits, silenced.logits)
        for name, level in (("spike-jitter", 2.0), ("synchrony-disruption", 1.0)):
            fn = temporal.SPIKE_PERTURBATIONS[name]
            with temporal.perturbed_spikes(model, ("V1",), fn, level, _g()):
                changed = model(images, record=True)
            v1, it = changed.spikes["V1"], changed.spikes["IT"]
            torch.testing.assert_close(v1.sum(0), plain.spikes["V1"].sum(0))  # counts kept
            assert not torch.equal(v1, plain.spikes["V1"]), name
            assert not torch.equal(it, plain.spikes["IT"]), name  # IT sees the new timing
    assert not model.areas["V1"]._forward_hooks  # the hooks are gone after the block


def test_early_readout_of_one_pass_equals_the_stack_run_for_fewer_steps(two_areas):
    model, images = two_areas
    steps = model.timesteps
    with torch.no_grad():
        early = temporal.EarlyReadout(model, tuple(range(1, steps + 1)))(images).logits
        assert early.shape == (steps, len(images), 3)
        torch.testing.assert_close(early[-1], model(images).logits)
        for t in range(1, steps + 1):
            with temporal.run_for(model, t):
                assert model.timesteps == t
                torch.testing.assert_close(model(images).logits, early[t - 1])  # causal
        with temporal.run_for(model, 2 * steps):
            longer = model(images, record=["IT"]).spikes["IT"]
    assert longer.shape[0] == 2 * steps and model.timesteps == steps


def test_temporal_rows_levels_references_and_counts(loaded):
    base = accuracy(loaded.model, loaded.images, loaded.labels)
    rows = list(run_test("timesteps", loaded, repeats=2))
    assert [r["level"] for r in rows] == [float(t) for t in range(1, 9)]  # T' = 1 .. 2T
    assert rows[3]["accuracy"] == base  # T' = T: the run as trained
    early = list(run_test("early-readout", loaded))
    assert [r["level"] for r in early] == [1.0, 2.0, 3.0, 4.0]
    assert early[-1]["accuracy"] == pytest.approx(base)
    assert count_evaluations(["early-readout"], loaded, None, 2) == 1  # one pass, every t
    jitter = list(run_test("spike-jitter", loaded, levels=(0.0, 2.0), repeats=2))
    assert [(r["level"], r["repeat"]) for r in jitter] == [(0.0, 0), (2.0, 0), (2.0, 1)]
    assert jitter[0]["accuracy"] == base
    again = list(run_test("spike-jitter", loaded, levels=(0.0, 2.0), repeats=2))
    assert again == jitter  # seeded
    for test in TEMPORAL_TESTS[2:]:
        found = list(run_test(test, loaded, levels=(0.0,), repeats=1))
        assert found[0]["accuracy"] == base, test


# --------------------------------------------------------------------------- efficiency


def test_fan_out_counts_the_outputs_each_input_position_feeds():
    strided = nn.Conv2d(1, 2, 3, stride=2, padding=1)  # 4 x 4 -> 2 x 2
    rows = torch.tensor([1.0, 2.0, 1.0, 1.0])  # output rows whose window covers each input row
    torch.testing.assert_close(fan_out(strided, (4, 4)), 2 * rows[:, None] * rows[None, :])
    same = nn.Conv2d(3, 5, 3, padding=1)  # 3 x 3 -> 3 x 3
    expected = torch.tensor([[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]) * 5
    torch.testing.assert_close(fan_out(same, (3, 3)), expected)
    assert float(fan_out(nn.Linear(7, 11))) == 11


class _TwoLayers(nn.Module):
    """A hand-built network of two 'areas': a strided conv on given spike trains, then a
    linear layer on its pooled binarised output."""

    def __init__(self, spikes: torch.Tensor):
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)
        nn.init.ones_(conv.weight)
        self.areas = nn.ModuleDict({"A": conv, "B": nn.Linear(2, 3)})
        self.area_names = ("A", "B")
        self.config = SimpleNamespace(neuron="lif")
        self.spikes = spikes  # [T, B, 1, 4, 4]

    def forward(self, images):
        t, b = self.spikes.shape[:2]
        y = self.areas["A"](self.spikes.flatten(0, 1)).unflatten(0, (t, b))  # [T, B, 2, 2, 2]
        return self.areas["B"]((y > 0).float().mean(dim=(3, 4)))  # [T, B, 3]


def test_synaptic_operations_equal_a_hand_count():
    spikes = torch.zeros(2, 1, 1, 4, 4)  # T = 2, one image
    spikes[0, 0, 0, 0, 0] = 1  # covered by 1 x 1 output positions, 2 channels: 2 operations
    spikes[1, 0, 0, 1, 1] = 1  # 2 x 2 positions: 8
    spikes[1, 0, 0, 3, 2] = 1  # 1 x 1 positions: 2
    found = synaptic_operations(_TwoLayers(spikes), torch.zeros(1, 1), batch_size=1)
    # A: 2 + 8 + 2; dense: 16 inputs feeding (1+2+1+1)^2 = 25 windows' worth, x 2 channels
    assert found["A"] == {"dense_macs": 50.0, "synaptic_ops": 12.0}
    # B: both pooled channels are nonzero at both steps (4 events) x 3 outputs; dense 2 x 3
    assert found["B"] == {"dense_macs": 6.0, "synaptic_ops": 12.0}


def test_efficiency_of_a_stack_follows_its_spikes(two_areas):
    model, images = two_areas
    found = synaptic_operations(model, images, batch_size=3)
    with torch.no_grad():
        spikes = model(images, record=True).spikes
    for area, values in found.items():
        assert 0 < values["synaptic_ops"] <= model.timesteps * values["dense_macs"], area
    v1 = model.areas["V1"].blocks[0]  # conv1 3x3, conv2 3x3 (and a 1x1 shortcut conv)
    size, out = images.shape[-2:], spikes["V1"].shape[-2:]  # the stem keeps the image size
    layers = [(v1.conv1.conv, size), (v1.conv2.conv, out)]
    if not isinstance(v1.shortcut, nn.Identity):
        layers.append((v1.shortcut.conv, size))
    h, w = out
    by_formula = sum(
        h * w * c.out_channels * c.in_channels * c.kernel_size[0] ** 2 for c, _ in layers
    )  # fmt: skip  (padding included)
    dense = sum(float(fan_out(layer, s).sum()) * layer.in_channels for layer, s in layers)
    assert found["V1"]["dense_macs"] == pytest.approx(dense) and dense <= by_formula


def test_firing_rates_and_silent_units_of_each_area(loaded):
    model, images = loaded.model, loaded.images
    found = representation_metrics(model, images, loaded.trained.sheets, batch_size=16)
    with torch.no_grad():
        spikes = model(images, record=True).spikes
    for area, values in found.items():
        assert values["firing_rate"] == pytest.approx(float(spikes[area].mean()), rel=1e-6)
        silent = spikes[area].sum(dim=(0, 1)).flatten() == 0
        assert values["silent_fraction"] == pytest.approx(float(silent.float().mean()))


# --------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_evaluate_command_runs_the_temporal_tests_end_to_end(spiking_run, tmp_path, capsys):
    out = tmp_path / "eval"
    tests = ",".join([*TEMPORAL_TESTS, "representation"])
    argv = ["evaluate", str(spiking_run), "--tests", tests, "--repeats", "2", "--test-size",
            "32", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["runs"]["run"]
    for test in TEMPORAL_TESTS:
        with open(out / f"{test}.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and (out / f"{test}.png").is_file(), test
        (curve,) = entry[test].values()
        assert set(curve) == {"accuracy", "drop", "ratio", "se", "auc"}, test
    assert sorted(entry["timesteps"]["steps"]["accuracy"]) == [str(t) for t in range(1, 9)]
    assert entry["timesteps"]["steps"]["drop"]["4"] == 0  # drops are taken from T
    assert entry["early-readout"]["readout"]["drop"]["4"] == 0
    assert entry["spike-jitter"]["jitter"]["se"]["3"] >= 0
    for values in entry["representation"].values():
        assert {"firing_rate", "silent_fraction", "synaptic_ops", "dense_macs"} <= set(values)
    report = (out / "report.md").read_text()
    assert "## spike-jitter" in report and "largest spike lag k" in report
    assert "## Efficiency" in report and "| ops / MACs |" in report


def test_a_relu_run_gets_no_temporal_test(relu_fc_run, tmp_path, capsys):
    run = load_eval_run(relu_fc_run["ws"], test_size=8, data_root=None, device="cpu",
                        name="ws")  # fmt: skip
    assert not set(_applicable_tests([run])) & set(TEMPORAL_TESTS)
    with pytest.raises(ConfigError, match="spike-jitter perturb spike timing.*ReLU units"):
        list(run_test("spike-jitter", run))
    with pytest.raises(ConfigError, match="ReLU units"):
        evaluate_runs([relu_fc_run["ws"]], tmp_path / "e", tests=("timesteps",))
    code = main(["evaluate", str(relu_fc_run["ws"]), "--tests", "weight-noise,spike-deletion",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ReLU units" in err, err


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("tests", "levels", "message"),
    [
        ("spike-jitter", "0,0.5", "spike-jitter takes whole numbers of time steps"),
        ("spike-deletion", "0,1.5", "spike-deletion takes fractions in [0, 1]"),
        ("spike-insertion", "0,2", "spike-insertion takes fractions in [0, 1]"),
        ("synchrony-disruption", "0,1.2", "synchrony-disruption takes fractions in [0, 1]"),
        ("timesteps", "0,4", "timesteps takes numbers of time steps >= 1"),
        ("timesteps", "1,2.5", "timesteps takes whole numbers"),
        ("early-readout", "1,9", "early-readout reads the first t of the T = 4 steps"),
        ("spike-jitter", "-1", "non-negative"),
    ],
)
def test_bad_temporal_levels_are_one_line_errors(spiking_run, tmp_path, capsys, tests, levels,
                                                  message):  # fmt: skip
    argv = ["evaluate", str(spiking_run), "--tests", tests, "--levels", levels, "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_levels_checks_in_python():
    check_levels(("spike-jitter", "timesteps"), (1.0, 2.0, 8.0))
    check_levels(("spike-deletion", "spike-insertion"), (0.0, 1.0))
    with pytest.raises(ConfigError, match="whole numbers"):
        check_levels(("spike-jitter",), (1.5,))
    with pytest.raises(ConfigError, match=">= 1"):
        check_levels(("early-readout",), (0.0, 1.0))


def test_an_experiment_refuses_temporal_tests_on_a_relu_arm():
    spec = {
        "name": "t",
        "base": {"area-stack": "v1-it", "width": 0.0625, "image-size": 16, "epochs": 1},
        "arms": {"lif": {"topo": "none"}, "relu": {"neuron": "relu", "topo": "none"}},
        "seeds": "0",
        "measures": {"evaluate": {"tests": ["synchrony-disruption"], "layers": "all"}},
    }
    with pytest.raises(ConfigError, match="arm 'relu'.*perturb spike timing"):
        parse_spec(spec).plan()
    spec["arms"].pop("relu")
    assert len(parse_spec(spec).plan()) == 1


def test_experiment_measures_name_temporal_curves_by_their_test():
    from tdsnn.experiment.measures import _curves

    rows = [{"condition": "steps", "level": float(t), "accuracy": a}
            for t, a in ((1, 0.3), (4, 0.8), (8, 0.9))]  # fmt: skip
    found = {(m, lv): v for m, lv, v in _curves("timesteps", rows, chance=0.1, reference=4.0)}
    assert found["timesteps", 1.0] == 0.3
    assert found["timesteps/drop", 1.0] == pytest.approx(0.5)  # from T = 4
    assert found["timesteps/drop", 4.0] == 0
    assert ("timesteps/auc", None) in found
    noisy = [{"condition": "deletion", "level": lv, "accuracy": 0.8 - lv} for lv in (0.0, 0.5)]
    assert {m for m, _, _ in _curves("spike-deletion", noisy, 0.1)} == {
        "spike-deletion", "spike-deletion/drop", "spike-deletion/auc"}  # fmt: skip
    pruned = [{"condition": "random", "level": 0.0, "accuracy": 0.8}]
    assert {m for m, _, _ in _curves("pruning-channels", pruned, 0.1)} == {
        "pruning-channels/random", "pruning-channels/random/drop",
        "pruning-channels/random/auc"}  # fmt: skip
