"""ReLU runs (``--neuron relu``) through record, read-back, analysis, export, evaluation and
the experiment's analyze measure; the fc readout layer in recordings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tdsnn.record
from tdsnn.cli import main
from tdsnn.config import RunConfig
from tdsnn.data.probes import grating_probes
from tdsnn.errors import ConfigError, RecordingError
from tdsnn.evaluate import perturb
from tdsnn.record.recorder import build_probes
from tdsnn.rundir import load_run


@pytest.fixture(scope="module")
def relu_run(tmp_path_factory):
    """A tiny ReLU run with the fc readout, trained with the rate-only STC loss."""
    from tdsnn.train import train

    out = tmp_path_factory.mktemp("relu") / "run"
    config = RunConfig().with_overrides(
        {
            "model.area_stack": "v1-it",
            "model.width": 0.0625,
            "model.neuron": "relu",
            "model.readout": "fc",
            "model.readout_units": 16,
            "topo.beta": 0.0,
            "data.image_size": 16,
            "optim.epochs": 2,
            "optim.batch_size": 16,
            "data.train_size": 96,
            "data.test_size": 64,
            "data.val_size": 32,
            "run.keep_epochs": True,
            "run.out": str(out),
            "run.quiet": True,
        }  # fmt: skip
    )
    train(config)
    return out


def test_rate_recording_holds_the_activations(relu_run, tmp_path, capsys):
    path = tmp_path / "g.h5"
    assert main(["record", str(relu_run), "--stimuli", "gratings", "--out", str(path),
                 "--batch-size", "50", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "ReLU activations of V1, IT, readout" in printed and "spike events" not in printed
    trained = load_run(relu_run)
    images = build_probes("gratings", trained).render(np.arange(5))  # the recorded gratings
    with tdsnn.record.open(path) as rec:
        assert rec.rates and rec.complete and rec.areas == ("V1", "IT", "readout")
        assert rec.meta.timesteps == 1
        assert rec.file["tdsnn"].attrs["format_version"] == 2  # earlier readers refuse it
        with torch.no_grad():
            out = trained.model(images, record=True)
        for area in rec.areas:
            values = rec.counts(area, slice(0, 5))
            assert values.dtype == np.float32 and values.shape == (5, rec.area(area).num_units)
            expected = out.spikes[area][0].flatten(1).numpy()
            np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
        v1 = rec.counts("V1")
        assert (v1 != np.round(v1)).mean() > 0.5  # activations, not spike counts
        with pytest.raises(RecordingError, match="ReLU units"):
            rec.spikes("V1")
        with pytest.raises(RecordingError, match="ReLU units"):
            rec.unit_spikes("IT", 0)
        with pytest.raises(ConfigError, match="no membrane potential") as info:
            rec.membrane("V1")
        assert "\n" not in str(info.value)
        assert len(rec.file["spikes/V1/timestamps"]) == 0  # SONATA populations, empty


@pytest.mark.slow
def test_rate_recording_resumes_and_reads_with_libsonata(relu_run, tmp_path):
    full, cut = tmp_path / "full.h5", tmp_path / "cut.h5"
    args = ["--stimuli", "categories", "--per-class", "3", "--batch-size", "8", "--quiet"]
    assert main(["record", str(relu_run), *args, "--out", str(full)]) == 0
    with tdsnn.record.open(full) as rec:
        stop = rec.num_trials // 2
        expected = rec.counts("IT")
    # cut the second half off the copy and mark it interrupted, as a killed writer leaves it
    import shutil

    import h5py

    shutil.copy(full, cut)
    with h5py.File(cut, "r+") as f:
        f["tdsnn/status"][...] = [stop, 2]
    assert main(["record", str(relu_run), *args, "--out", str(cut), "--resume"]) == 0
    with tdsnn.record.open(cut) as rec:
        assert rec.complete and np.array_equal(rec.counts("IT"), expected)
    libsonata = pytest.importorskip("libsonata")
    spikes = libsonata.SpikeReader(str(full))
    assert sorted(spikes.get_population_names()) == ["IT", "V1", "readout"]
    assert len(spikes["V1"].get()) == 0


def test_files_without_the_responses_attribute_read_as_spike_recordings(tmp_path):
    import h5py

    from tdsnn.record import AreaNodes, RecordingMeta, RecordingWriter, TrialBatch, area_batch

    area = AreaNodes("V1", (2, 1, 3), np.zeros((6, 2), np.float32), 1.0, 0.5, "tiled")
    params = grating_probes(8, orientations=2, cycles_per_image=(1.0,), phases=1).params
    spikes = (torch.arange(4 * 2 * 6).reshape(4, 2, 2, 1, 3) % 3 == 0).float()
    for responses in ("spikes", "rates"):
        meta = RecordingMeta((area,), 4, 1.0, "gratings", params, (), {}, {}, {},
                             responses=responses)  # fmt: skip
        batch = area_batch(spikes, 0, 1.0, rates=responses == "rates")
        path = tmp_path / f"{responses}.h5"
        with RecordingWriter(path, meta, 2) as writer:
            writer.append(TrialBatch(0, np.arange(2), {"V1": batch}))
        with tdsnn.record.open(path) as rec:
            assert rec.rates == (responses == "rates")
            want = spikes.flatten(2).sum(0) if responses == "spikes" else spikes.flatten(2).mean(0)
            np.testing.assert_array_equal(rec.counts("V1"), want.numpy())
    with h5py.File(tmp_path / "spikes.h5", "r+") as f:
        del f["tdsnn"].attrs["responses"]  # as tdsnn wrote it before rate recordings
    with tdsnn.record.open(tmp_path / "spikes.h5") as rec:
        assert not rec.rates and rec.counts("V1").dtype == np.uint8
        assert len(rec.spikes("V1")[0]) == int(spikes.sum())


@pytest.mark.slow
def test_analysis_of_rates_skips_synchrony_with_a_note(relu_run, tmp_path):
    from tdsnn.analysis.report import analyze_files
    from tdsnn.analysis.topography import stimulus_responses, synchrony_vs_distance

    grat, cats = tmp_path / "g.h5", tmp_path / "c.h5"
    assert main(["record", str(relu_run), "--stimuli", "gratings", "--out", str(grat),
                 "--areas", "v1", "--quiet"]) == 0  # fmt: skip
    assert main(["record", str(relu_run), "--stimuli", "categories", "--per-class", "3",
                 "--areas", "it", "--out", str(cats), "--quiet"]) == 0  # fmt: skip
    metrics = analyze_files([grat, cats], tmp_path / "report", labels=["grat", "cats"])
    text = (tmp_path / "report/report.md").read_text()
    assert "synchrony (r_CCG) skipped" in text and "ReLU activations" in text
    assert [r["responses"] for r in metrics["recordings"]] == ["rates", "rates"]
    v1 = metrics["recordings"][0]["areas"]["V1"]
    assert np.isfinite(v1["correlation_decay"]) and np.isfinite(v1["orientation_smoothness"])
    assert 0 < v1["orientation_selectivity_mean"] <= 1 and np.isfinite(v1["morans_i_response"])
    assert "synchrony_decay" not in v1
    it = metrics["recordings"][1]["areas"]["IT"]
    assert len(it["patches_per_category"]) == 10 and np.isfinite(it["max_t_mean"])
    assert not (tmp_path / "report/synchrony_vs_distance.png").exists()
    assert (tmp_path / "report/category_maps.png").exists()
    with tdsnn.record.open(grat) as rec:
        responses, _ = stimulus_responses(rec, "v1")  # one row per grating: the activations
        np.testing.assert_array_equal(responses, rec.counts("V1"))
        with pytest.raises(ConfigError, match="needs spike trains"):
            synchrony_vs_distance(rec, "V1")


def test_spiking_only_options_are_refused_in_one_line(relu_run, tmp_path, capsys):
    code = main(["record", str(relu_run), "--stimuli", "gratings", "--membrane",
                 "--out", str(tmp_path / "m.h5")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no membrane potential" in err[0]
    assert not (tmp_path / "m.h5").exists()
    path = tmp_path / "g.h5"
    main(["record", str(relu_run), "--stimuli", "dataset", "--limit", "8", "--out", str(path),
          "--quiet"])  # fmt: skip
    pytest.importorskip("pynwb")
    capsys.readouterr()
    code = main(["export", str(path), "--format", "nwb", "--out", str(tmp_path / "g.nwb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ReLU units" in err[0]
    assert not (tmp_path / "g.nwb").exists()


def test_record_an_epoch_and_the_readout_layer_of_a_run(relu_run, tmp_path):
    path = tmp_path / "r.h5"
    from tdsnn.record.recorder import record_run

    record_run(relu_run, path, stimuli="dataset", limit=8, areas="READOUT", which=1, quiet=True)
    with tdsnn.record.open(path) as rec:
        assert rec.areas == ("readout",) and rec.meta.source["checkpoint"] == "epochs/epoch-001.pt"
        assert rec.positions("readout").shape == (16, 2)


@pytest.mark.slow
def test_evaluate_a_relu_run(relu_run, tmp_path):
    from tdsnn.evaluate.report import evaluate_runs

    tests = ("weight-noise", "input-noise", "pruning", "lesion", "adversarial", "representation")
    metrics = evaluate_runs([relu_run], tmp_path / "eval", tests=tests, levels=(0.0, 0.2),
                            repeats=1, test_size=32, quiet=True)  # fmt: skip
    run = next(iter(metrics["runs"].values()))
    assert 0 <= run["accuracy"] <= 1 and run["neuron"] == "relu"
    for test in tests[:-1]:
        assert (tmp_path / f"eval/{test}.csv").exists(), test
    assert set(run["input-noise"]) == set(perturb.INPUT_DEGRADATIONS)
    assert set(run["representation"]) == {"V1", "IT", "readout"}
    assert run["lesion"] and run["adversarial"]
    conditions = set(run["lesion"])
    assert {"readout disc", "readout scattered", "V1 disc"} <= conditions
    report = (tmp_path / "eval/report.md").read_text()
    assert "| ReLU |" in report and "activations for ReLU units" in report


def test_lesions_silence_relu_units_and_the_readout_layer(relu_run):
    model = load_run(relu_run).model
    images = grating_probes(16).render(np.arange(0, 256, 16))
    for area in ("V1", "readout"):
        with torch.no_grad():
            before = model(images, record=[area]).spikes[area].flatten(2)  # [1, B, N]
            units = before.sum(dim=(0, 1)).argsort(descending=True)[:3]  # the most active
            with perturb.silence(model, area, units):
                after = model(images, record=[area]).spikes[area].flatten(2)
        assert (before[:, :, units] > 0).any(), area
        assert (after[:, :, units] == 0).all(), area
        others = torch.ones(before.shape[2], dtype=torch.bool)
        others[units] = False
        torch.testing.assert_close(after[:, :, others], before[:, :, others])


def test_attacks_on_relu_units_follow_the_exact_gradient(relu_run):
    model = load_run(relu_run).model
    images = grating_probes(16).render(np.arange(0, 256, 32))
    labels = torch.arange(len(images)) % 10
    x = images.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x).logits, labels).backward()
    adversarial = perturb.fgsm(model, images, labels, 4 / 255)
    inside = (images > 4 / 255) & (images < 1 - 4 / 255)  # not clipped at 0 or 1
    step = (adversarial - images)[inside]
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(step, 4 / 255 * x.grad.sign()[inside])
    assert (x.grad[inside] != 0).float().mean() > 0.9  # no flat surrogate: gradients flow


@pytest.mark.slow
def test_experiment_measures_of_a_kept_epoch(relu_run):
    from tdsnn.experiment.measures import measure_run
    from tdsnn.experiment.spec import Measures, RunPlan

    trained = load_run(relu_run, 1)
    plan = RunPlan("relu", 0, trained.config, "run")
    measures = Measures(
        summary=("test_acc", "epoch"),
        topography=("readout",),
        evaluate_tests=("weight-noise",),
        evaluate_levels={"weight-noise": (0.0, 0.5)},
        evaluate_repeats=1,
        evaluate_test_size=32,
        analyze={
            "gratings": (
                ("v1",),
                (
                    "correlation_decay",
                    "pinwheels.density",
                    "correlation_decay/null-z/sheet",
                    "population_vector_length/percentile/floor",
                ),
            )
        },  # fmt: skip
    )
    rows = measure_run(plan, relu_run, 1, measures)
    found = {(r["measure"], r["level"]): r["value"] for r in rows}
    assert found[("epoch", None)] == 1 and ("topography_score/readout", None) in found
    assert found[("weight-noise", 0.0)] >= 0 and found[("weight-noise/drop", 0.0)] == 0
    assert ("weight-noise/auc", None) in found
    assert np.isfinite(found[("analyze/gratings/V1/correlation_decay", None)])
    assert ("analyze/gratings/V1/pinwheels.density", None) in found
    assert np.isfinite(found[("analyze/gratings/V1/correlation_decay/null-z/sheet", None)])
    assert 0 <= found[("analyze/gratings/V1/population_vector_length/percentile/floor", None)]
    assert list(relu_run.glob("experiment-gratings-*.h5"))  # best.pt, or epoch 1 if not best
