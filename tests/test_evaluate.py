"""``tdsnn evaluate``: perturbations, lesions, attacks, representation metrics, the command."""

import csv
import json

import numpy as np
import pytest
import torch

from tdsnn.areas import AreaStack
from tdsnn.cli import main
from tdsnn.data import ShapesDataset
from tdsnn.evaluate import perturb
from tdsnn.evaluate.representation import (
    layer_metrics,
    neighbour_pairs,
    participation_ratio,
    representation_metrics,
)
from tdsnn.evaluate.runner import (
    accuracy,
    check_levels,
    curve_summary,
    load_eval_run,
    resolve_layers,
    run_test,
)
from tdsnn.model_config import ModelConfig
from tdsnn.rundir import load_run
from tdsnn.sheet import build_sheet
from tdsnn.spatial import morans_i_pairs


@pytest.fixture(scope="module")
def run_dir(spiking_run):
    return spiking_run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_eval_run(run_dir, test_size=64, data_root=None, device="cpu", name="tiny")


def test_evaluation_renders_only_the_test_split(run_dir, monkeypatch):
    """The training split is not rendered to evaluate (it was, in full, before the test one),
    and the test images are those of the run's test split."""
    from tdsnn.data import shapes

    rendered, render = [], shapes.generate_shapes

    def recording(n, **kw):
        rendered.append((kw.get("split", "train"), n))
        return render(n, **kw)

    monkeypatch.setattr(shapes, "generate_shapes", recording)
    run = load_eval_run(run_dir, test_size=16, data_root=None, device="cpu", name="tiny")
    assert sum(n for split, n in rendered if split == "train") <= 1
    config = load_run(run_dir).config
    expected = ShapesDataset("test", n=16, seed=config.run.seed, image_size=config.data.image_size)
    assert torch.equal(run.images, torch.stack([expected[i][0] for i in range(16)]))


def _images(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- level 0


def test_every_perturbation_is_the_identity_at_level_zero(loaded):
    model, x, y = loaded.model, loaded.images, loaded.labels
    g = torch.Generator().manual_seed(0)
    base = accuracy(model, x, y)
    for copy in (perturb.weight_noise(model, 0.0, g), perturb.magnitude_prune(model, 0.0)):
        for key, value in model.state_dict().items():
            assert torch.equal(copy.state_dict()[key], value), key
        assert accuracy(copy, x, y) == base
    for kind in perturb.INPUT_DEGRADATIONS:
        assert torch.equal(perturb.degrade(kind, x, 0.0, g), x), kind
        assert torch.equal(perturb.INPUT_DEGRADATIONS[kind](x, 0.0, g), x), kind
    assert torch.equal(perturb.fgsm(model, x, y, 0.0), x)
    assert torch.equal(perturb.pgd(model, x, y, 0.0), x)
    with perturb.silence(model, "V1", torch.zeros(0, dtype=torch.long)):
        assert accuracy(model, x, y) == base
    rows = list(run_test("weight-noise", loaded, levels=(0.0,), repeats=1))
    assert rows[0]["accuracy"] == base


# --------------------------------------------------------------------------- as documented


def test_weight_noise_is_scaled_to_each_layers_weight_std(loaded):
    model = loaded.model
    noisy = perturb.weight_noise(model, 0.5, torch.Generator().manual_seed(1))
    before = perturb.area_weights(model)
    after = perturb.area_weights(noisy)
    for name, weight in before.items():
        if weight.numel() < 500:
            continue
        ratio = float((after[name] - weight).detach().std() / weight.detach().std())
        assert ratio == pytest.approx(0.5, rel=0.1), name
    only_it = perturb.weight_noise(model, 0.5, torch.Generator().manual_seed(1), areas=("IT",))
    changed = {n for n, w in perturb.area_weights(only_it).items() if not torch.equal(w, before[n])}
    assert changed and all(n.startswith("areas.IT.") for n in changed)


def test_input_degradations_follow_their_levels():
    g = torch.Generator().manual_seed(0)
    grey = torch.full((4, 3, 32, 32), 0.5)
    white = perturb.gaussian_noise(grey, 0.05, g)
    assert float((white - grey).std()) == pytest.approx(0.05, rel=0.05)
    pink = perturb.pink_noise(grey, 0.05, g) - grey
    assert float(pink.std()) == pytest.approx(0.05, rel=0.05)
    power = torch.fft.rfft2(pink).abs().pow(2).mean(dim=(0, 1))
    assert power[1, 1] > 20 * power[12, 12]  # 1/f^2 power: low frequencies dominate
    sp = perturb.salt_and_pepper(grey, 0.2, g)
    hit = (sp != 0.5).any(dim=1)
    assert float(hit.float().mean()) == pytest.approx(0.2, abs=0.03)
    assert set(sp[hit.unsqueeze(1).expand_as(sp)].unique().tolist()) <= {0.0, 1.0}
    noise = _images(4, 32)
    blurred = perturb.gaussian_blur(noise, 1.5)
    assert blurred.shape == noise.shape and blurred.std() < 0.5 * noise.std()
    torch.testing.assert_close(perturb.gaussian_blur(grey, 2.0), grey)
    torch.testing.assert_close(perturb.contrast(noise, 0.5) - 0.5, 0.5 * (noise - 0.5))
    torch.testing.assert_close(perturb.contrast(noise, 1.0), torch.full_like(noise, 0.5))


def test_pruning_zeroes_that_fraction_of_each_layer(loaded):
    for fraction in (0.25, 0.5, 0.9):
        pruned = perturb.magnitude_prune(loaded.model, fraction)
        for name, weight in perturb.area_weights(pruned).items():
            original = perturb.area_weights(loaded.model)[name]
            zeros = int((weight == 0).sum())
            assert zeros == round(fraction * weight.numel()), name
            kept = weight != 0  # the largest magnitudes survive
            assert original.abs()[kept].min() >= original.abs()[~kept].max()


def test_a_lesion_silences_exactly_the_units_inside_the_disc(loaded):
    model, sheets = loaded.model, loaded.trained.sheets
    sheet = sheets["V1"]
    units = perturb.disc_units(sheet, 40, torch.Generator().manual_seed(2))
    assert len(units) == 40 == len(set(units.tolist()))
    inside = torch.zeros(sheet.num_units, dtype=torch.bool)
    inside[units] = True
    centre = sheet.positions[inside].mean(dim=0)
    d = (sheet.positions - centre).norm(dim=1)
    assert d[inside].max() <= d[~inside].min() + 0.3 * sheet.side_mm / 10  # one compact disc
    images = loaded.images[:8]
    with torch.no_grad():
        plain = model(images, record=["V1"]).spikes["V1"].flatten(2)
        with perturb.silence(model, "V1", units):
            silenced = model(images, record=["V1"]).spikes["V1"].flatten(2)
    assert plain[..., units].sum() > 0, "the lesioned units spiked before"
    assert silenced[..., units].sum() == 0
    torch.testing.assert_close(silenced[..., ~inside], plain[..., ~inside])
    scattered = perturb.scattered_units(sheet, 40, torch.Generator().manual_seed(2))
    assert len(set(scattered.tolist())) == 40


def test_fgsm_lowers_accuracy_of_a_trained_model(loaded):
    model = loaded.model
    train_set = ShapesDataset("train", n=192, image_size=16)  # the images it was trained on
    x, y = train_set[list(range(192))]
    with torch.no_grad():
        right = model(x).logits.argmax(1) == y
    assert right.sum() >= 16, "the tiny model should classify some of its training images"
    x, y = x[right], y[right]
    assert accuracy(model, x, y) == 1.0
    assert accuracy(model, perturb.fgsm(model, x, y, 0.0), y) == 1.0
    attacked = perturb.fgsm(model, x, y, 0.2)
    assert (attacked - x).abs().max() <= 0.2 + 1e-6 and attacked.min() >= 0 and attacked.max() <= 1
    assert accuracy(model, attacked, y) < 0.7
    strong = perturb.pgd(model, x, y, 0.2, generator=torch.Generator().manual_seed(0))
    assert (strong - x).abs().max() <= 0.2 + 1e-6
    assert accuracy(model, strong, y) <= accuracy(model, attacked, y) + 0.1


def test_attacks_get_gradients_through_rate_coding():
    config = ModelConfig(
        area_stack="v1-it", width=0.0625, blocks=1, encoding="rate", v_threshold=0.3
    )
    model = AreaStack(config, num_classes=4).eval()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    attacked = perturb.fgsm(model, x, y, 0.1)
    assert (attacked - x).abs().max() > 0.05  # the sign gradient moved the pixels
    assert "encode" not in model.__dict__  # the straight-through encoder is removed again


# --------------------------------------------------------------------------- representation


def test_participation_ratio_matches_hand_worked_cases():
    # two orthogonal directions with equal variance: eigenvalues (a, a, 0): (2a)^2 / 2a^2 = 2
    x = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float)
    assert participation_ratio(x) == pytest.approx(2.0)
    # variances 4 and 1 along two axes: (4 + 1)^2 / (16 + 1) = 25 / 17
    x = np.array([[2, 0], [-2, 0], [0, 1], [0, -1]], dtype=float)
    cov = np.cov(x.T)
    assert np.allclose(np.diag(cov), [8 / 3, 2 / 3])
    assert participation_ratio(x) == pytest.approx(25 / 17)
    assert participation_ratio(np.ones((5, 3))) == 0.0
    rng = np.random.default_rng(0)
    assert participation_ratio(rng.standard_normal((4000, 10))) == pytest.approx(10, rel=0.05)


def test_representation_metrics_of_a_run(loaded):
    result = representation_metrics(loaded.model, loaded.images, loaded.trained.sheets)
    assert list(result) == ["V1", "V4", "IT"]
    for area, values in result.items():
        assert values["participation_ratio"] >= 1 and values["activation_variance"] > 0, area
    assert "map_morans_i" in result["IT"] and "map_morans_i" not in result["V1"]


# --------------------------------------------------------------------------- command


@pytest.mark.slow
def test_evaluate_command_writes_csvs_figures_and_report(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", str(run_dir), str(run_dir), "--tests",
            "weight-noise,pruning,lesion,representation", "--levels", "0,0.3",
            "--repeats", "2", "--test-size", "32", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "report.md" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    (name,) = metrics["runs"]  # the same directory twice: one name, compared with itself
    with open(out / "weight-noise.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["level"] for r in rows} == {"0.0", "0.3"}
    assert {r["repeat"] for r in rows if r["level"] == "0.3"} == {"0", "1"}
    base = metrics["runs"][name]["accuracy"]
    assert all(float(r["accuracy"]) == base for r in rows if r["level"] == "0.0")
    draws = [float(r["accuracy"]) for r in rows if r["level"] == "0.3"]
    se = metrics["runs"][name]["weight-noise"]["gaussian"]["se"]
    assert se["0"] == 0 and se["0.3"] == pytest.approx(abs(draws[0] - draws[1]) / 2)
    with open(out / "lesion.csv") as f:
        conditions = {r["condition"] for r in csv.DictReader(f)}
    assert conditions == {f"{a} {c}" for a in ("V1", "V4", "IT") for c in ("disc", "scattered")}
    for test in ("weight-noise", "pruning", "lesion"):
        assert (out / f"{test}.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Representation" in report and "![lesion](lesion.png)" in report
    if se["0.3"] > 0:
        assert f"at most {100 * se['0.3']:.1f} points" in report


def test_evaluate_bad_arguments_are_one_line_errors(run_dir, tmp_path, capsys):
    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    out = str(tmp_path / "o")
    fails(["evaluate", str(run_dir), "--tests", "weight-noise,fog", "--out", out], "fog")
    fails(["evaluate", str(tmp_path / "nope"), "--out", out], "does not exist")
    fails(["evaluate", str(run_dir), "--levels", "a,b", "--out", out], "--levels")
    fails(["evaluate", str(run_dir), "--levels", "-1", "--out", out], "non-negative")
    fails(["evaluate", str(run_dir), "--repeats", "0", "--out", out], "--repeats")
    fails(["evaluate", str(run_dir), "--layers", "V9", "--out", out], "no layer(s) ['V9']")
    fails(["evaluate", str(run_dir), "--tests", "pruning-channels", "--levels", "0,1",
           "--out", out], "pruning-channels takes fractions in [0, 1)")  # fmt: skip


def test_disc_units_checks_its_size():
    sheet = build_sheet("V1", (4, 4, 4), 10.0, 2.0)
    with pytest.raises(Exception, match="lesion size"):
        perturb.disc_units(sheet, 65, torch.Generator())
    assert len(perturb.disc_units(sheet, 64, torch.Generator())) == 64


# --------------------------------------------------------------------------- the papers' protocols


def test_layers_resolve_to_the_loss_areas_names_or_all(loaded, relu_fc_run):
    trained = loaded.trained  # stc on every area
    assert resolve_layers("topographic", trained, "r") == ("V1", "V4", "IT")
    assert resolve_layers("all", trained, "r") is None
    assert resolve_layers(("it", "v1"), trained, "r") == ("IT", "V1")
    with pytest.raises(Exception, match=r"no layer\(s\) \['V2'\].*V1, V4, IT"):
        resolve_layers(("V2",), trained, "r")
    control = load_run(relu_fc_run["none"], "best", "cpu")
    with pytest.raises(Exception, match="no topographic layer.*layers='all'"):
        resolve_layers("topographic", control, "none-run")
    ws = load_run(relu_fc_run["ws"], "best", "cpu")
    assert resolve_layers("topographic", ws, "ws-run") == ("readout",)


def test_weight_noise_and_pruning_touch_only_the_chosen_layers(relu_fc_run):
    run = load_eval_run(relu_fc_run["ws"], test_size=32, data_root=None, device="cpu",
                        name="ws", layers="topographic")  # fmt: skip
    before = perturb.area_weights(run.model)
    for model in (perturb.weight_noise(run.model, 0.5, torch.Generator(), run.layers),
                  perturb.magnitude_prune(run.model, 0.5, run.layers)):  # fmt: skip
        after = perturb.area_weights(model)
        changed = {n for n, w in after.items() if not torch.equal(w, before[n])}
        assert changed == {"areas.readout.fc.weight"}


def test_channel_pruning_picks_and_silences_whole_channels(loaded):
    model, g = loaded.model, torch.Generator().manual_seed(0)
    weight = model.areas["V4"].output_weight.detach()
    norms = weight.abs().flatten(1).sum(1)
    smallest = perturb.pruned_channels(model, "V4", 0.5, "l1-norm", g)
    assert len(smallest) == round(0.5 * weight.shape[0])
    assert norms[smallest].max() <= norms[~torch.isin(torch.arange(len(norms)), smallest)].min()
    drawn = perturb.pruned_channels(model, "V4", 0.25, "random", g)
    assert len(drawn) == round(0.25 * weight.shape[0]) and len(set(drawn.tolist())) == len(drawn)
    for bad in (1.0, -0.1):
        with pytest.raises(Exception, match=r"in \[0, 1\)"):
            perturb.pruned_channels(model, "V4", bad, "random", g)
    shape = loaded.trained.sheets["V4"].shape
    units = perturb.channel_units(shape, torch.tensor([1, 3]))
    c, h, w = shape
    assert units.tolist() == [*range(h * w, 2 * h * w), *range(3 * h * w, 4 * h * w)]
    with perturb.silence(model, "V4", units):
        spikes = model(loaded.images[:4], record=["V4"]).spikes["V4"]
    assert spikes[:, :, [1, 3]].abs().sum() == 0 and spikes.abs().sum() > 0


def test_channel_pruning_test_rows(loaded):
    rows = list(run_test("pruning-channels", loaded, levels=(0.0, 0.5), repeats=2))
    assert [(r["condition"], r["level"], r["repeat"]) for r in rows] == [
        ("random", 0.0, 0), ("l1-norm", 0.0, 0), ("random", 0.5, 0), ("random", 0.5, 1),
        ("l1-norm", 0.5, 0)]  # fmt: skip
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == accuracy(loaded.model, loaded.images,
                                                                  loaded.labels)  # fmt: skip


def test_curve_summary_drop_ratio_and_chance_corrected_area():
    curve = curve_summary({0.0: 0.9, 1.0: 0.5, 2.0: 0.1}, chance=0.1)
    assert curve["drop"] == pytest.approx({"0": 0.0, "1": 0.4, "2": 0.8})
    assert curve["ratio"]["1"] == pytest.approx(0.5 / 0.9)
    # kept fractions 1, 0.5, 0 over [0, 2]: trapezoids (0.75 + 0.25) / 2
    assert curve["auc"] == pytest.approx(0.5)
    assert curve_summary({0.0: 0.9, 1.0: 0.9}, chance=0.1)["auc"] == pytest.approx(1.0)
    assert np.isnan(curve_summary({0.5: 0.9, 1.0: 0.5}, chance=0.1)["auc"])  # no level 0
    assert np.isnan(curve_summary({0.0: 0.1, 1.0: 0.1}, chance=0.1)["auc"])  # at chance
    check_levels(("pruning",), (0.0, 1.0))
    with pytest.raises(Exception, match="pruning-channels"):
        check_levels(("weight-noise", "pruning-channels"), (0.0, 1.0))


def test_layer_metrics_are_taken_on_the_pre_activation_per_image(relu_fc_run):
    run = load_eval_run(relu_fc_run["ws"], test_size=48, data_root=None, device="cpu",
                        name="ws", layers="topographic")  # fmt: skip
    model, sheets, topo = run.model, run.trained.sheets, run.trained.config.topo
    pairs = neighbour_pairs(topo, sheets["readout"])
    assert sheets["readout"].layout == "grid" and len(pairs) == 420  # 11 x 11, 8 neighbours
    found = layer_metrics(model, run.images, sheets, ("readout",), topo, batch_size=20)
    # ReLU units: the membrane counterpart returned by the stack is the pre-activation
    pre = model(run.images, record_membrane=["readout"]).membrane["readout"][0].flatten(1)
    pre = pre.detach().double().numpy()
    expected = float(np.nanmean(morans_i_pairs(pre, pairs.numpy())))
    assert found["readout"]["morans_i"] == pytest.approx(expected, rel=1e-6)
    assert found["readout"]["preactivation_variance"] == pytest.approx(
        pre.var(axis=0).mean(), rel=1e-5
    )
    spiking = layer_metrics(run.model, run.images, sheets, ("V1",), topo)
    assert np.isfinite(spiking["V1"]["morans_i"])  # radius neighbours on a retinotopic sheet


@pytest.mark.slow
def test_evaluate_command_on_the_topographic_layer_of_a_pair(relu_fc_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", str(relu_fc_run["ws"]), "--tests", "weight-noise,pruning-channels,"
            "representation", "--levels", "0,0.5", "--repeats", "1", "--test-size", "32",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    entry = metrics["runs"]["ws"]
    assert entry["layers"] == ["readout"] and entry["chance"] == pytest.approx(0.1)
    curve = entry["pruning-channels"]["l1-norm"]
    assert set(curve) == {"accuracy", "drop", "ratio", "se", "auc"} and curve["drop"]["0"] == 0
    assert "morans_i" in entry["representation"]["readout"]
    assert "morans_i" not in entry["representation"]["V1"]
    report = (out / "report.md").read_text()
    assert "| AUC |" in report and "Moran's I per image" in report
    capsys.readouterr()
    assert main([*argv[:2], str(relu_fc_run["none"]), "--out", str(tmp_path / "o"),
                 "--layers", "topographic"]) == 2  # fmt: skip
    assert "no topographic layer" in capsys.readouterr().err
