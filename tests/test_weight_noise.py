"""Weight noise at its three scales (``weight-noise``, ``weight-noise-absolute``,
``weight-noise-multiplicative``): the perturbation, the summary, the command, the experiment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from tdsnn.areas import AreaStack
from tdsnn.cli import main
from tdsnn.errors import ConfigError
from tdsnn.evaluate import perturb
from tdsnn.evaluate.options import NAMED_TESTS, TESTS, WEIGHT_NOISE_SCALES, WEIGHT_NOISE_TESTS
from tdsnn.evaluate.report import _applicable_tests
from tdsnn.evaluate.runner import accuracy, curve_summary, load_eval_run, run_test
from tdsnn.experiment.measures import _curves, measure_run
from tdsnn.experiment.spec import Measures, RunPlan, load_spec
from tdsnn.model_config import ModelConfig
from tdsnn.rundir import load_run

FORMULAS = {
    "relative": lambda w, level, eps: w + eps * (level * w.std()),
    "absolute": lambda w, level, eps: w + eps * level,
    "multiplicative": lambda w, level, eps: w * (1 + level * eps),
}


@pytest.fixture(scope="module")
def tiny():
    return AreaStack(ModelConfig(area_stack="v1-it", width=0.0625, blocks=1), num_classes=4).eval()


@pytest.fixture(scope="module")
def loaded(spiking_run):
    return load_eval_run(spiking_run, test_size=24, data_root=None, device="cpu", name="run")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- the perturbation


@pytest.mark.parametrize("scale", WEIGHT_NOISE_SCALES)
def test_each_scale_perturbs_every_weight_by_its_formula(tiny, scale):
    noisy = perturb.weight_noise(tiny, 0.3, torch.Generator().manual_seed(5), scale=scale)
    g = torch.Generator().manual_seed(5)  # the same draws, layer by layer
    after = perturb.area_weights(noisy)
    for name, weight in perturb.area_weights(tiny).items():
        eps = torch.randn(weight.shape, generator=g)
        assert torch.equal(after[name], FORMULAS[scale](weight.detach(), 0.3, eps)), name
    for key, value in tiny.state_dict().items():  # anything but those weights is kept
        if key not in after:
            assert torch.equal(noisy.state_dict()[key], value), key


@pytest.mark.parametrize("scale", WEIGHT_NOISE_SCALES)
def test_level_zero_is_the_model_and_the_original_is_untouched(tiny, scale):
    before = _state(tiny)
    same = perturb.weight_noise(tiny, 0.0, torch.Generator().manual_seed(1), scale=scale)
    perturb.weight_noise(tiny, 0.5, torch.Generator().manual_seed(1), scale=scale)
    for key, value in before.items():
        assert torch.equal(same.state_dict()[key], value), key
        assert torch.equal(tiny.state_dict()[key], value), key


def test_relative_is_the_default_and_draws_as_before(tiny):
    plain = perturb.weight_noise(tiny, 0.2, torch.Generator().manual_seed(3))
    relative = perturb.weight_noise(tiny, 0.2, torch.Generator().manual_seed(3), scale="relative")
    for key, value in plain.state_dict().items():
        assert torch.equal(relative.state_dict()[key], value), key
    absolute = perturb.weight_noise(tiny, 0.2, torch.Generator().manual_seed(3), scale="absolute")
    added = perturb.area_weights(absolute)["readout.weight"] - tiny.readout.weight
    assert float(added.detach().std()) == pytest.approx(0.2, rel=0.3)


def test_only_the_chosen_areas_are_perturbed_at_every_scale(tiny):
    before = perturb.area_weights(tiny)
    for scale in WEIGHT_NOISE_SCALES:
        noisy = perturb.weight_noise(tiny, 0.5, torch.Generator(), ("IT",), scale)
        after = perturb.area_weights(noisy)
        changed = {n for n, w in after.items() if not torch.equal(w, before[n])}
        assert changed and all(n.startswith("areas.IT.") for n in changed), scale


def test_weight_stds_are_those_of_the_chosen_weights(tiny):
    stds = perturb.weight_stds(tiny, ("V1",))
    weights = perturb.area_weights(tiny, ("V1",))
    assert list(stds) == list(weights)
    for name, std in stds.items():
        assert std == pytest.approx(float(weights[name].detach().std()))


def test_bad_scales_and_levels_are_one_line_errors(tiny, spiking_run, tmp_path, capsys):
    g = torch.Generator()
    with pytest.raises(ConfigError, match="unknown weight-noise scale 'loud'; one of relative"):
        perturb.weight_noise(tiny, 0.1, g, scale="loud")
    for bad in (-0.1, float("nan")):
        with pytest.raises(ConfigError, match="absolute weight-noise level must be a non-negative"):
            perturb.weight_noise(tiny, bad, g, scale="absolute")

    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    out = str(tmp_path / "o")
    fails(["evaluate", str(spiking_run), "--tests", "weight-noise-loud", "--out", out],
          "unknown ['weight-noise-loud']")  # fmt: skip
    for test in WEIGHT_NOISE_TESTS:
        fails(["evaluate", str(spiking_run), "--tests", test, "--levels", "0,-0.2", "--out", out],
              "non-negative")  # fmt: skip
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the tests


def test_the_other_scales_run_only_when_named(loaded):
    assert [t for t in TESTS if t in WEIGHT_NOISE_TESTS] == list(WEIGHT_NOISE_TESTS)
    default = _applicable_tests([loaded])
    assert "weight-noise" in default and not set(default) & set(NAMED_TESTS)
    assert {"weight-noise-absolute", "weight-noise-multiplicative"} <= set(NAMED_TESTS)


@pytest.mark.parametrize("test", WEIGHT_NOISE_TESTS)
def test_each_test_draws_its_own_scale_and_restores_the_weights(loaded, test):
    before = _state(loaded.model)
    rows = list(run_test(test, loaded, levels=(0.0, 0.5), repeats=2, seed=1))
    assert [(r["condition"], r["level"], r["repeat"]) for r in rows] == [
        ("gaussian", 0.0, 0), ("gaussian", 0.0, 1), ("gaussian", 0.5, 0), ("gaussian", 0.5, 1)
    ]  # fmt: skip
    base = accuracy(loaded.model, loaded.images, loaded.labels, seed=1)
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == base
    for key, value in before.items():  # the run's own model is as it was
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_mean_accuracy_is_the_plain_mean_over_the_noisy_levels():
    curve = curve_summary({0.0: 0.9, 0.1: 0.7, 0.4: 0.2}, chance=0.1, noisy_mean=True)
    assert curve["mean_accuracy"] == pytest.approx((0.7 + 0.2) / 2)
    assert "mean_accuracy" not in curve_summary({0.0: 0.9, 0.1: 0.7}, chance=0.1)
    assert np.isnan(curve_summary({0.0: 0.9}, chance=0.1, noisy_mean=True)["mean_accuracy"])
    late = curve_summary({2.0: 0.5, 4.0: 0.9, 8.0: 0.8}, 0.1, reference=4.0, noisy_mean=True)
    assert late["mean_accuracy"] == pytest.approx(0.65)  # every level but the reference


def test_evaluate_writes_every_scale_with_its_summary(spiking_run, loaded, tmp_path, capsys):
    out = tmp_path / "eval"
    tests = ",".join(WEIGHT_NOISE_TESTS)
    argv = ["evaluate", str(spiking_run), "--tests", tests, "--levels", "0,0.1,0.3", "--repeats",
            "2", "--test-size", "24", "--layers", "all", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    entry = json.loads((out / "metrics.json").read_text())["runs"]["run"]
    stds = perturb.weight_stds(loaded.model)
    for test in WEIGHT_NOISE_TESTS:
        curve = entry[test]["gaussian"]
        assert set(curve) == {"accuracy", "drop", "ratio", "se", "auc", "mean_accuracy"}
        noisy = [curve["accuracy"][lv] for lv in ("0.1", "0.3")]
        assert curve["mean_accuracy"] == pytest.approx(np.mean(noisy), abs=1e-12)
        assert entry[test]["weight_std"] == pytest.approx(stds)
        assert (out / f"{test}.csv").is_file() and (out / f"{test}.png").is_file()
    relative = list(run_test("weight-noise", loaded, levels=(0.0, 0.1, 0.3), repeats=2))
    assert entry["weight-noise"]["gaussian"]["accuracy"]["0.3"] == pytest.approx(
        np.mean([r["accuracy"] for r in relative if r["level"] == 0.3]), abs=1e-12
    )  # the default scale's numbers, through the command
    report = (out / "report.md").read_text()
    assert "| AUC | mean accuracy |" in report and "## weight-noise-multiplicative" in report
    assert "noise std (weight units)" in report and "Weight std, run: `stem.conv.weight`" in report


# --------------------------------------------------------------------------- experiments


def test_experiment_curves_name_the_mean_accuracy_of_each_scale():
    rows = [{"condition": "gaussian", "level": lv, "accuracy": acc}
            for lv, acc in ((0.0, 0.9), (0.1, 0.6), (0.1, 0.8), (0.2, 0.3))]  # fmt: skip
    for test in WEIGHT_NOISE_TESTS:
        found = {(m, lv): v for m, lv, v in _curves(test, rows, chance=0.25)}
        assert found[(test, 0.1)] == pytest.approx(0.7)
        assert found[(f"{test}/drop", 0.2)] == pytest.approx(0.6)
        assert found[(f"{test}/mean_accuracy", None)] == pytest.approx((0.7 + 0.3) / 2)
        assert (f"{test}/auc", None) in found
    assert not any(m.endswith("mean_accuracy") for m, _, _ in _curves("pruning", rows, 0.25))


def test_a_spec_measures_two_scales_with_their_own_levels(tmp_path, capsys):
    spec = {
        "name": "scales",
        "base": {"area-stack": "v1-it", "width": 0.0625, "image-size": 16, "train-size": 96,
                 "test-size": 32, "batch-size": 32, "epochs": 1},  # fmt: skip
        "arms": {"none": {"topo": "none"}},
        "seeds": "0",
        "measures": {"evaluate": {
            "tests": ["weight-noise", "weight-noise-absolute"], "layers": "all",
            "levels": {"weight-noise": [0, 0.2], "weight-noise-absolute": [0, 0.01]}}},
        "equivalence": {"weight-noise/mean_accuracy": 0.02,
                        "weight-noise-absolute/auc": 0.02},  # fmt: skip
    }  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    measures = load_spec(path).measures
    assert measures.evaluate_tests == ("weight-noise", "weight-noise-absolute")
    assert measures.evaluate_levels["weight-noise-absolute"] == (0.0, 0.01)
    spec["measures"]["evaluate"]["levels"]["weight-noise-absolute"] = [0, -0.01]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="weight-noise-absolute must be a number in"):
        load_spec(path)
    spec["measures"]["evaluate"]["tests"] = ["weight-noise-loud"]
    spec["measures"]["evaluate"].pop("levels")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"unknown test\(s\) \['weight-noise-loud'\]"):
        load_spec(path)


def test_experiment_measures_each_scale_of_a_run(spiking_run):
    trained = load_run(spiking_run, "best")
    epoch = json.loads((spiking_run / "summary.json").read_text())["best_epoch"]
    measures = Measures(
        summary=(),
        evaluate_tests=("weight-noise-absolute", "weight-noise-multiplicative"),
        evaluate_levels={
            "weight-noise-absolute": (0.0, 0.02),
            "weight-noise-multiplicative": (0.0, 0.3),
        },  # fmt: skip
        evaluate_repeats=1,
        evaluate_test_size=16,
    )
    plan = RunPlan("stc", 0, trained.config, "run", layers=("V1",))
    rows = measure_run(plan, spiking_run, epoch, measures)
    found = {(r["measure"], r["level"]): r["value"] for r in rows}
    stds = perturb.weight_stds(trained.model, ("V1",))
    for test in measures.evaluate_tests:
        noisy = next(lv for lv in measures.evaluate_levels[test] if lv)
        assert found[(f"{test}/mean_accuracy", None)] == found[(test, noisy)]
        assert found[(f"{test}/drop", 0.0)] == 0 and (f"{test}/auc", None) in found
        for name, std in stds.items():
            assert found[(f"{test}/weight_std/{name}", None)] == pytest.approx(std)
