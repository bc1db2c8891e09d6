"""Evaluations that start at an area run from that area's inputs, computed once: the same
accuracies as running every layer, with the layers before it run once per batch."""

import dataclasses

import pytest
import torch

from tdsnn.errors import ConfigError
from tdsnn.evaluate import runner
from tdsnn.evaluate.runner import area_inputs, load_eval_run, run_test

# test -> the levels it is checked at (few, so that the full and the reused runs stay short)
TESTS = {
    "weight-noise": (0.0, 0.5, 2.0),
    "weight-noise-multiplicative": (0.0, 1.0),
    "pruning": (0.0, 0.5),
    "pruning-channels": (0.0, 0.5),
    "lesion": (0.0, 0.3),
    "spike-jitter": (0.0, 2.0),
    "spike-deletion": (0.0, 0.5),
    "synchrony-disruption": (0.0, 1.0),
}


@pytest.fixture(scope="module", params=["direct", "rate"])
def spiking(spiking_run, request):
    """The spiking run perturbed on V4 and IT, with its own (direct) input coding and with
    rate coding, whose Bernoulli draws the kept inputs must hold."""
    run = load_eval_run(spiking_run, test_size=48, data_root=None, device="cpu", name="lif")
    model = run.model
    model.config = dataclasses.replace(model.config, encoding=request.param)
    return dataclasses.replace(run, layers=("V4", "IT"))


def _rows(test, run, **kwargs):
    return list(run_test(test, run, levels=TESTS[test], repeats=2, seed=3, batch_size=20,
                         **kwargs))  # fmt: skip


def _stem_calls(model):
    calls = []
    handle = model.stem.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("test", sorted(TESTS))
def test_reused_inputs_give_the_accuracies_of_full_runs(spiking, test):
    full = _rows(test, spiking, reuse_inputs=False)
    calls, handle = _stem_calls(spiking.model)
    try:
        reused = _rows(test, spiking)
    finally:
        handle.remove()
    assert reused == full
    # 48 images in batches of 20: the stem runs 3 times to make V4's inputs, and never again
    # (the lesion test makes IT's inputs too)
    assert len(calls) == (6 if test == "lesion" else 3)


def test_a_relu_fc_layer_runs_from_its_inputs(relu_fc_run):
    run = load_eval_run(relu_fc_run["ws"], test_size=40, data_root=None, device="cpu",
                        name="ws", layers="readout")  # fmt: skip
    for test in ("weight-noise", "pruning-channels"):
        assert _rows(test, run) == _rows(test, run, reuse_inputs=False)


def test_inputs_too_large_to_keep_run_every_layer(spiking, monkeypatch):
    assert area_inputs(spiking.model, spiking.images, "V4", batch_size=20) is not None
    monkeypatch.setattr(runner, "AREA_INPUTS_BYTES", 1)
    assert area_inputs(spiking.model, spiking.images, "V4", batch_size=20) is None
    calls, handle = _stem_calls(spiking.model)
    try:
        rows = _rows("spike-deletion", spiking)
    finally:
        handle.remove()
    assert rows == _rows("spike-deletion", spiking, reuse_inputs=False)
    # 3 evaluations (level 0 once, 0.5 twice) of 3 batches in full, and the first batch tried
    assert len(calls) == 3 * 3 + 1


def test_forward_from_an_areas_input_is_the_forward_pass(spiking):
    model, images = spiking.model, spiking.images[:8]
    for area in model.area_names:
        torch.manual_seed(0)
        expected = model(images, record=True).logits
        torch.manual_seed(0)
        found = model.forward_from(model.area_input(images, area), area).logits
        torch.testing.assert_close(found, expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="area 'V9' is not in this network"):
        model.area_input(images, "V9")


def test_tests_of_a_run_share_its_accuracy_as_trained(spiking, monkeypatch):
    tests = ("weight-noise", "pruning", "spike-deletion")
    apart = {test: _rows(test, spiking) for test in tests}
    scored = []
    counted = runner.accuracy
    monkeypatch.setattr(runner, "accuracy", lambda *a, **k: scored.append(1) or counted(*a, **k))
    baseline = {}
    shared = {test: _rows(test, spiking, baseline=baseline) for test in tests}
    assert shared == apart
    # level 0 of each test is the run as trained on all 48 images: scored once, not three times
    levels = {test: TESTS[test] for test in tests}
    perturbed = sum((len(lv) - 1) * (2 if test != "pruning" else 1) for test, lv in levels.items())
    assert len(scored) == perturbed + 1
    assert list(baseline) == [48]
    for test in tests:  # the progress bar's count, with and without the shared accuracy
        alone = runner.count_evaluations((test,), spiking, TESTS[test], 2)
        assert (
            runner.count_evaluations((test,), spiking, TESTS[test], 2, known=baseline) == alone - 1
        )
