"""WS / AS distance metrics (named as in scipy.spatial.distance), the retired topo.ws_kind, and
the configs/{ws,as}-{mnist,cifar10}.yaml presets of Truong & Hasson (arXiv 2508.00043)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from scipy.spatial import distance

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack
from tdsnn.cli import build_parser, main
from tdsnn.commands.train import overrides_from_args
from tdsnn.config import RunConfig, load_config
from tdsnn.errors import ConfigError
from tdsnn.rundir import Checkpoint
from tdsnn.sheet import build_sheet, near_square
from tdsnn.topo import (
    METRICS,
    TopoConfig,
    as_loss,
    distance_pairs,
    incoming_weights,
    spike_counts,
    ws_loss,
)
from tdsnn.topo.objective import TopoObjective
from tdsnn.topo.pairs import channel_pairs, grid_neighbours, pair_set
from tdsnn.train import train

F64 = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = {  # file -> (preset, dataset, metric): the paper's MNIST and CIFAR-10 settings
    "ws-mnist.yaml": ("ws", "mnist", "correlation"),
    "ws-cifar10.yaml": ("ws", "cifar10", "cosine"),
    "as-mnist.yaml": ("as", "mnist", "correlation"),
    "as-cifar10.yaml": ("as", "cifar10", "cosine"),
}
GRID_11_PAIRS = 2 * 10 * 11 + 2 * 10 * 10  # 8-neighbour pairs of an 11×11 grid


def _rows(n=9, f=6, seed=0):
    return torch.randn(n, f, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _pairs(n=9):
    return torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j])


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("metric", METRICS)
def test_metrics_equal_scipy_pair_by_pair(metric):
    x, pairs = _rows(), _pairs()
    got = distance_pairs(x, pairs, metric)
    scipy_metric = getattr(distance, metric)
    want = [scipy_metric(x[i].numpy(), x[j].numpy()) for i, j in pairs.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-12)
    mean = torch.tensor(want, dtype=F64).mean()
    torch.testing.assert_close(ws_loss(x, pairs, metric=metric), mean, rtol=1e-12, atol=1e-12)
    # AS: the same distance between the units' spike-count vectors over the batch
    spikes = torch.rand(4, 7, 9, dtype=F64, generator=torch.Generator().manual_seed(1))
    counts = spike_counts(spikes).t().numpy()  # [N, B]
    want_as = [scipy_metric(counts[i], counts[j]) for i, j in pairs.tolist()]
    got_as = as_loss(spikes, pairs, metric=metric)
    torch.testing.assert_close(got_as, torch.tensor(want_as, dtype=F64).mean(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_metrics_pass_gradcheck(metric):
    w = _rows(6, 5, seed=2).requires_grad_()
    pairs = grid_neighbours((2, 3), 8)
    assert torch.autograd.gradcheck(lambda y: ws_loss(y, pairs, metric=metric), (w,))
    x = torch.rand(3, 4, 6, dtype=F64, generator=torch.Generator().manual_seed(3)) + 0.2
    assert torch.autograd.gradcheck(
        lambda y: as_loss(y, pairs, metric=metric), (x.requires_grad_(),)
    )


def test_default_metrics_keep_the_old_losses():
    x = torch.rand(3, 5, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    pairs = grid_neighbours((2, 3), 8)
    torch.testing.assert_close(as_loss(x, pairs), as_loss(x, pairs, metric="correlation"))
    w = _rows(6, 5)
    torch.testing.assert_close(ws_loss(w, pairs), ws_loss(w, pairs, metric="sqeuclidean"))
    assert TopoConfig.preset("ws").metric == TopoConfig.preset("as").metric == "correlation"


def test_zero_and_constant_rows_are_distance_one_and_finite():
    w = torch.zeros(4, 5, dtype=F64)
    w[1] = torch.arange(5.0)  # varying
    w[2] = 3.0  # constant, not zero
    w.requires_grad_()
    pairs = torch.tensor([[0, 1], [0, 3], [2, 1], [2, 3]])
    for metric, want in (("cosine", [1.0, 1.0, None, 1.0]), ("correlation", [1.0] * 4)):
        d = distance_pairs(w, pairs, metric)
        assert bool(torch.isfinite(d).all())
        for value, expected in zip(d.tolist(), want, strict=True):
            if expected is not None:
                assert value == pytest.approx(expected)
        (g,) = torch.autograd.grad(d.sum(), w)
        assert bool(torch.isfinite(g).all())
    # identical rows: the Euclidean norm is 0 with gradient 0, not NaN
    for metric in METRICS:
        d = distance_pairs(w, torch.tensor([[0, 3], [1, 1]]), metric)
        (g,) = torch.autograd.grad(d.sum(), w)
        assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(g).all())
        if metric in ("euclidean", "sqeuclidean"):
            assert d.tolist() == [0.0, 0.0] and float(g.abs().max()) == 0.0


def test_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="sqeuclidean"):
        ws_loss(_rows(), _pairs(), metric="manhattan")
    with pytest.raises(ConfigError, match="topo.metric"):
        TopoConfig.preset("ws", metric="l2")


# ----------------------------------------------------------------------------- the config


def _sheet(layout, shape=(8, 4, 4)):
    return build_sheet("IT", shape, 4.0, 1.5, layout=layout, seed=0)


def _terms(config, sheet, generator=None, **inputs):
    """The terms of ``sheet``'s area under ``config`` (``spikes=`` / ``weights=`` tensors)."""
    objective = TopoObjective(config, {sheet.area: sheet}, (sheet.area,))
    named = {"spikes": {}, **{key: {sheet.area: x} for key, x in inputs.items()}}
    return objective.terms(**named, generator=generator, reference=True)[sheet.area]


@pytest.mark.parametrize("metric", METRICS)
def test_presets_read_the_metric(metric):
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 3, 3, 3, generator=g)
    spikes = (torch.rand(4, 6, 8, 4, 4, generator=g) < 0.3).float()
    ws = TopoConfig.preset("ws", metric=metric, connectivity=8)
    out = _terms(ws, _sheet("tiled"), weights=conv)
    want = ws_loss(incoming_weights(conv), channel_pairs(8, 8), metric=metric)
    torch.testing.assert_close(out["total"], want)
    as_ = TopoConfig.preset("as", metric=metric, connectivity=8)
    sheet = _sheet("tiled")
    out = _terms(as_, sheet, spikes=spikes)
    want = as_loss(spikes, pair_set(sheet, None, as_.connectivity, as_.wrap), metric=metric)
    torch.testing.assert_close(out["rate"], want)
    torch.testing.assert_close(out["total"], want)
    # with a synchrony term the rate term keeps the metric
    both = _terms(TopoConfig.preset("as", metric=metric, beta=0.5), sheet, spikes=spikes)
    assert set(both) == {"rate", "synchrony", "total"}
    torch.testing.assert_close(both["total"], both["rate"] + 0.5 * both["synchrony"])
    # stc ignores it
    stc = [
        _terms(
            TopoConfig.preset("stc", metric=m), _sheet("retinotopic"), spikes=spikes,
            generator=torch.Generator().manual_seed(1),
        )["total"]
        for m in (metric, "correlation")
    ]  # fmt: skip
    torch.testing.assert_close(stc[0], stc[1])


def _old_style(config: TopoConfig, ws_kind: str) -> dict:
    """A topo section as configs and checkpoints wrote it before ``metric``."""
    data = config.to_dict()
    del data["metric"]
    data["ws_kind"] = ws_kind
    return data


@pytest.mark.parametrize("ws_kind, metric", [("euclidean", "sqeuclidean"), ("cosine", "cosine")])
def test_old_ws_kind_maps_with_one_warning(ws_kind, metric):
    with pytest.warns(FutureWarning) as record:
        config = TopoConfig.from_dict({"name": "ws", "ws_kind": ws_kind})
    assert len(record) == 1
    message = str(record[0].message)
    assert "topo.ws_kind is deprecated" in message and repr(metric) in message
    if ws_kind == "euclidean":
        assert "'euclidean' there meant the squared distance" in message
    assert config == TopoConfig.preset("ws", metric=metric)
    assert "ws_kind" not in config.to_dict() and config.to_dict()["metric"] == metric


@pytest.mark.parametrize("name", ["as", "stc", "toploss", "none"])
def test_old_ws_kind_of_other_presets_changes_nothing(name):
    # ws_kind only ever shaped WS: an old `as` run keeps its 1 - Pearson, and since every old
    # config holds ws_kind, loading one of another preset says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TopoConfig.from_dict(_old_style(TopoConfig.preset(name), "euclidean"))
    assert config == TopoConfig.preset(name)


def test_ws_kind_with_metric_or_a_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="give only topo.metric") as info:
        TopoConfig.from_dict({"name": "ws", "ws_kind": "cosine", "metric": "cosine"})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="topo.ws_kind"):
        TopoConfig.from_dict({"name": "ws", "ws_kind": "manhattan"})
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"topo.ws_kind": "cosine"})  # no override of a retired key


def test_checkpoint_style_round_trip_and_yaml(tmp_path):
    new = RunConfig().with_overrides({"topo.name": "ws", "topo.metric": "sqeuclidean"})
    old = new.to_dict()
    old["topo"] = _old_style(new.topo, "euclidean")
    with pytest.warns(FutureWarning, match="sqeuclidean"):
        loaded = RunConfig.from_dict(old)
    assert loaded == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what it saves again has the new name: no warning
        assert RunConfig.from_dict(loaded.to_dict()) == new
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.warns(FutureWarning, match="topo.ws_kind"):
        assert load_config(path) == new
    # the command line's preset override still works, on old and new configs
    args = build_parser().parse_args(["train", "--config", str(path), "--topo", "ws"])
    with pytest.warns(FutureWarning):
        config = load_config(args.config, overrides_from_args(args))
    assert config.topo == TopoConfig.preset("ws")


def _tiny(tiny_config, topo: dict, out: Path) -> dict:
    data = tiny_config.with_overrides({"optim.epochs": 1, "run.out": str(out)}).to_dict()
    data["topo"] = topo
    return data


def _losses(run_dir: Path) -> list[tuple]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["topo/IT/weights"]) for r in lines if "loss" in r]


def test_old_config_trains_the_same_losses_as_the_new_name(tiny_config, tmp_path):
    old = _old_style(TopoConfig.preset("ws"), "euclidean")
    with pytest.warns(FutureWarning, match="topo.ws_kind"):
        old_config = RunConfig.from_dict(_tiny(tiny_config, old, tmp_path / "old"))
    new_topo = TopoConfig.preset("ws", metric="sqeuclidean").to_dict()
    new_config = RunConfig.from_dict(_tiny(tiny_config, new_topo, tmp_path / "new"))
    train(old_config)
    train(new_config)
    old_losses, new_losses = _losses(tmp_path / "old"), _losses(tmp_path / "new")
    assert old_losses and old_losses == new_losses
    correlation = RunConfig.from_dict(
        _tiny(tiny_config, TopoConfig.preset("ws").to_dict(), tmp_path / "corr")
    )
    train(correlation)
    assert _losses(tmp_path / "corr") != new_losses  # the metric does reach the loss


def test_old_checkpoint_resumes(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config.with_overrides(
        {"topo.name": "ws", "topo.metric": "cosine", "optim.epochs": 1, "run.out": str(run_dir)}
    )
    train(config)
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    raw["config"]["topo"] = _old_style(config.topo, "cosine")
    torch.save(raw, run_dir / "last.pt")
    with pytest.warns(FutureWarning, match="topo.ws_kind"):
        assert Checkpoint.load(run_dir / "last.pt").run_config == config
    with pytest.warns(FutureWarning, match="topo.ws_kind"):
        assert main(["train", "--out", str(run_dir), "--resume", "--epochs", "2"]) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["topo"]["metric"] == "cosine" and "ws_kind" not in saved["topo"]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------- the YAML presets


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_build_an_11x11_it(name):
    preset, dataset, metric = PAPER[name]
    config = load_config(CONFIGS / name)
    topo = config.topo
    assert config.data.dataset == dataset
    assert (topo.name, topo.metric, topo.connectivity, topo.alpha) == (preset, metric, 8, 1.0)
    assert topo.areas == ("last",) and not topo.wrap
    model = AreaStack(config.model, 10, 3)
    assert topo.select_areas(model.area_names) == ("IT",)
    shapes = model.output_shapes(config.data.image_size)
    channels, h, w = shapes["IT"]
    assert channels == 121 and near_square(channels) == (11, 11)
    assert model.areas["IT"].output_weight.shape[0] == 121
    sheets = build_area_sheets(model, config)
    sheet = sheets["IT"]
    assert sheet.layout == "tiled" and sheet.shape == (121, h, w)
    grid = channel_pairs(121, topo.connectivity, topo.wrap)
    assert grid.shape == (GRID_11_PAIRS, 2)
    assert {tuple(p) for p in grid.tolist()} == {
        tuple(p) for p in grid_neighbours((11, 11), 8).tolist()
    }
    if preset == "ws":  # the loss reads exactly the 11×11 channel grid's pairs
        _terms(topo, sheet, weights=model.areas["IT"].output_weight)
        cached = sheet.cached(("channel_pairs", 8, False, "cpu"), lambda: pytest.fail("unused"))
        assert cached.shape == (GRID_11_PAIRS, 2)
    else:  # the tiled lattice: the 11×11 grid at every position, joined across tiles
        pairs = {tuple(p) for p in pair_set(sheet, None, topo.connectivity, topo.wrap).tolist()}
        side_h, side_w = 11 * h, 11 * w
        lattice = side_h * (side_w - 1) + (side_h - 1) * side_w + 2 * (side_h - 1) * (side_w - 1)
        assert len(pairs) == lattice
        for pos in (0, h * w - 1):
            tile = {(i * h * w + pos, j * h * w + pos) for i, j in grid.tolist()}
            assert tile <= pairs
        # a 1×1 map gives the 'grid' sheet: exactly the 11×11 channel grid's 420 pairs
        one = build_sheet("IT", (121, 1, 1), 70.0, 31.8, layout=topo.sheet_layout((121, 1, 1)))
        assert one.layout == "grid"
        assert {tuple(p) for p in pair_set(one, None, topo.connectivity, topo.wrap).tolist()} == {
            tuple(p) for p in grid.tolist()
        }


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_train_a_step(name, tmp_path):
    config = load_config(
        CONFIGS / name,
        {
            "data.dataset": "shapes",  # no download: the built-in dataset at the preset's size
            "data.train_size": 8,
            "data.test_size": 8,
            "optim.batch_size": 8,
            "optim.epochs": 1,
            "run.out": str(tmp_path / "run"),
            "run.quiet": True,
            "run.log_every": 1,
        },
    )
    summary = train(config)
    assert summary["global_steps"] == 1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in lines if "loss" in r)
    term = "topo/IT/weights" if PAPER[name][0] == "ws" else "topo/IT/rate"
    assert term in step and step[term] == step[term]  # logged, not NaN
    assert {k.split("/")[1] for k in step if k.startswith("topo/")} == {"IT"}
