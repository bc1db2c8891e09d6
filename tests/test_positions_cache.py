"""Swap-optimised frozen positions (``sheet.layout: swap``) and their cache."""

import pytest
import torch

import tdsnn.area_sheets as placement
from tdsnn.areas import AreaStack
from tdsnn.config import RunConfig
from tdsnn.topo.positions_cache import cache_path

BASE = {
    "model.area_stack": "v1-v4-it",
    "model.width": 0.0625,
    "model.blocks": 1,
    "data.image_size": 16,
    "run.quiet": True,
}


@pytest.fixture
def cheap_swaps(tmp_path, monkeypatch):
    """A private cache folder and a small swap budget (the recipe's structure, fewer steps)."""
    monkeypatch.setenv("TDSNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(placement, "SWAP_VISITS", 2)
    monkeypatch.setattr(placement, "SWAP_PROPOSALS", 20)
    calls = []
    real = placement._swap

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(placement, "_swap", counting)
    return tmp_path / "cache" / "positions", calls


def sheets_of(overrides: dict):
    config = RunConfig().with_overrides({**BASE, **overrides})
    torch.manual_seed(config.run.seed)
    model = AreaStack(config.model, num_classes=4)
    return model, placement.build_area_sheets(model, config)


def positions(sheets) -> dict[str, torch.Tensor]:
    return {name: sheet.positions.clone() for name, sheet in sheets.items()}


@pytest.mark.slow
def test_swap_layout_permutes_positions_and_a_second_build_reads_the_cache(cheap_swaps):
    folder, calls = cheap_swaps
    _, random = sheets_of({"sheet.layout": "random"})
    _, first = sheets_of({"sheet.layout": "swap"})
    assert len(calls) == 1 and len(list(folder.glob("*.pt"))) == 1
    moved = 0
    for name, sheet in first.items():
        assert sheet.optimized and sheet.layout == random[name].layout == "retinotopic"
        before, after = random[name].positions, sheet.positions
        # a permutation of the same positions: same multiset of points
        key = lambda p: sorted(map(tuple, p.tolist()))  # noqa: E731
        assert key(before) == key(after)
        moved += int((before != after).any(1).sum())
    assert moved > 0
    _, second = sheets_of({"sheet.layout": "swap"})
    assert len(calls) == 1  # nothing recomputed
    for name in first:
        assert torch.equal(first[name].positions, second[name].positions)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [{"run.seed": 1}, {"model.width": 0.125}, {"data.image_size": 20}, {"sheet.jitter": 0.2}],
)
def test_a_change_of_architecture_seed_or_sheet_misses_the_cache(cheap_swaps, change):
    folder, calls = cheap_swaps
    sheets_of({"sheet.layout": "swap"})
    sheets_of({"sheet.layout": "swap", **change})
    assert len(calls) == 2 and len(list(folder.glob("*.pt"))) == 2


@pytest.mark.slow
def test_a_damaged_cache_file_is_a_warning_and_a_recomputation(cheap_swaps):
    folder, calls = cheap_swaps
    _, first = sheets_of({"sheet.layout": "swap"})
    (path,) = folder.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="damaged positions cache") as caught:
        _, again = sheets_of({"sheet.layout": "swap"})
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert len(calls) == 2
    for name in first:
        assert torch.equal(first[name].positions, again[name].positions)  # deterministic
    _, third = sheets_of({"sheet.layout": "swap"})  # the rewritten file is read
    assert len(calls) == 2


def test_random_layout_is_todays_auto_and_touches_no_cache(cheap_swaps):
    folder, calls = cheap_swaps
    _, random = sheets_of({"sheet.layout": "random"})
    _, retino = sheets_of({"sheet.layout": "retinotopic"})
    assert not calls and not folder.exists()
    for name in random:
        assert torch.equal(random[name].positions, retino[name].positions)
        assert not random[name].optimized


@pytest.mark.slow
def test_swapping_leaves_the_model_and_the_random_state_alone(cheap_swaps):
    config = RunConfig().with_overrides({**BASE, "sheet.layout": "swap"})
    torch.manual_seed(0)
    model = AreaStack(config.model, num_classes=4)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    placement.build_area_sheets(model, config)
    assert torch.equal(torch.get_rng_state(), state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert model.training  # not left in another mode by the probe copy


def test_swap_plan_follows_tdann():
    from tdsnn.sheet import build_sheet

    v1 = build_sheet("V1", (128, 28, 28), 36.75, 1.626)  # TDANN's V1 layer
    plan = placement.swap_plan(v1)
    assert plan["window_mm"] == pytest.approx(6.0)
    assert (plan["swaps_per_step"], plan["max_units"]) == (500, 500)
    assert plan["steps"] == 10_000  # TDANN's default number of windows
    small = placement.swap_plan(build_sheet("V1", (16, 24, 24), 36.75, 1.626))
    assert 1_000 < small["steps"] < 10_000  # same visits per unit on a smaller sheet
    it = placement.swap_plan(build_sheet("IT", (128, 6, 6), 70.0, 31.818))
    assert it["window_mm"] == 70.0  # capped at the sheet


def test_cache_path_honours_tdsnn_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TDSNN_CACHE", str(tmp_path))
    assert cache_path("abc") == tmp_path / "positions" / "abc.pt"


@pytest.mark.slow
def test_two_trainings_share_the_frozen_positions(cheap_swaps, tiny_config, tmp_path):
    from tdsnn.rundir import load_run
    from tdsnn.train import train

    _, calls = cheap_swaps
    runs = []
    for name in ("first", "second"):
        config = tiny_config.with_overrides(
            {"sheet.layout": "swap", "optim.epochs": 1, "run.out": str(tmp_path / name)}
        )
        train(config)
        runs.append(load_run(tmp_path / name)[2])
    assert len(calls) == 1  # the second run read the cache
    for area, sheet in runs[0].items():
        assert sheet.optimized
        assert torch.equal(sheet.positions, runs[1][area].positions)
