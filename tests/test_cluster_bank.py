"""The device-resident STC path: cluster banks (tdsnn.topo.pairs.ClusterBank) and the batched
loss of all areas (stc_loss on mappings of areas, TopoObjective.terms) against the per-area
reference (stc_loss of one area, TopoObjective.terms(reference=True) with
sample_cluster_index)."""

import pytest
import torch

from tdsnn.errors import ConfigError
from tdsnn.sheet import build_sheet
from tdsnn.topo import TermWeights, TopoConfig, stc_loss
from tdsnn.topo.objective import TopoObjective
from tdsnn.topo.pairs import ClusterBank, build_cluster_bank, cluster_bank, sample_cluster_index

F64 = torch.float64


def _sheets():
    """Three areas of different sizes and cluster widths."""
    return {
        "V1": build_sheet("V1", (4, 6, 6), 6.0, 1.5, seed=1),
        "V4": build_sheet("V4", (8, 3, 3), 3.0, 2.0, seed=2),
        "IT": build_sheet("IT", (16, 2, 2), 2.0, 2.0, seed=3),
    }


def _features(sheets, seed=0, t=4, b=5):
    g = torch.Generator().manual_seed(seed)
    spikes = {
        a: (torch.rand(t, b, s.num_units, generator=g, dtype=F64) < 0.35).to(F64)
        for a, s in sheets.items()
    }
    v = {a: torch.rand(t, b, s.num_units, generator=g, dtype=F64) for a, s in sheets.items()}
    return spikes, v


def _clusters(sheets):
    """Padded clusters of every area, with a 2-unit cluster and padding in each."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for area, sheet in sheets.items():
        width = {"V1": 40, "V4": 6, "IT": 12}[area]
        index, valid = sample_cluster_index(sheet, 4, max_units=width, generator=g)
        index, valid = index.clone(), valid.clone()
        valid[0] = False
        valid[0, :2] = True  # a cluster of 2 units
        index[0, 2:] = index[0, 0]
        out[area] = (index, valid)
    assert len({int(i.shape[1]) for i, _ in out.values()}) > 1  # areas of different widths
    return out


def _loss_and_grads(fn, spikes, v):
    leaves = {a: x.clone().requires_grad_() for a, x in spikes.items()}
    vleaves = {a: x.clone().requires_grad_() for a, x in v.items()}
    out = fn(leaves, vleaves)
    total = sum(t["total"] for t in out.values())
    grads = torch.autograd.grad(total, [*leaves.values(), *vleaves.values()], allow_unused=True)
    return out, grads


@pytest.mark.parametrize("one_batch", [True, False])  # CUDA's one batch, the CPU's per area
@pytest.mark.parametrize(
    "weights,form",
    [((1.0, 1.0, 0.0), "alignment"), ((0.5, 0.7, 0.3), "alignment"), ((1.0, 1.0, 1.0), "local")],
)
def test_batched_areas_equal_the_reference_forward_and_gradients(weights, form, one_batch):
    sheets = _sheets()
    spikes, v = _features(sheets)
    clusters = _clusters(sheets)
    pos = {a: s.positions.to(F64) for a, s in sheets.items()}
    kw = dict(weights=TermWeights(*weights), form=form, window=1)

    def batched(x, vv):
        return stc_loss(x, pos, clusters, v=vv, one_batch=one_batch, **kw)

    def reference(x, vv):
        return {a: stc_loss(x[a], pos[a], clusters[a], v=vv[a], **kw) for a in x}

    new, new_grads = _loss_and_grads(batched, spikes, v)
    ref, ref_grads = _loss_and_grads(reference, spikes, v)
    for area in sheets:
        assert new[area].keys() == ref[area].keys()
        for term in ref[area]:
            torch.testing.assert_close(new[area][term], ref[area][term], rtol=1e-12, atol=1e-14)
    for got, want in zip(new_grads, ref_grads, strict=True):
        if want is None:
            assert got is None or float(got.abs().max()) == 0.0
        else:
            assert float(want.abs().max()) > 0
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_batched_areas_are_exact_on_silent_units_and_check_their_input():
    sheets = _sheets()
    spikes, _ = _features(sheets)
    spikes["V4"].zero_()  # a silent area: the loss is 1/2 there, with zero gradient
    clusters = _clusters(sheets)
    pos = {a: s.positions for a, s in sheets.items()}
    x = spikes["V4"].clone().requires_grad_()
    out = stc_loss({**spikes, "V4": x}, pos, clusters)
    assert out["V4"]["rate"].item() == 0.5 and out["V4"]["synchrony"].item() == 0.5
    (grad,) = torch.autograd.grad(out["V4"]["total"] + out["V1"]["total"], x)
    assert float(grad.abs().max()) == 0.0
    with pytest.raises(ConfigError, match="positions must be"):
        stc_loss(spikes, {**pos, "IT": pos["V1"]}, clusters)
    with pytest.raises(ConfigError, match="clusters must be"):
        stc_loss(spikes, pos, {**clusters, "IT": (clusters["IT"][0], clusters["IT"][0])})


def _bank_clusters(config, sheets, seed, generator):
    """The clusters the objective's batched path picks: each area's bank rows, in area order."""
    return {
        area: cluster_bank(sheet, config.cluster_window_mm(sheet), "cpu", seed).draw(
            config.num_clusters, config.max_units, generator
        )
        for area, sheet in sheets.items()
    }


def test_bank_terms_equal_the_reference_on_the_clusters_they_draw():
    sheets = _sheets()
    spikes, v = _features(sheets, seed=3)
    config = TopoConfig.preset("stc", num_clusters=6, max_units=7, gamma=0.5)
    objective = TopoObjective(config, sheets, tuple(sheets), seed=5)
    out = objective.terms(spikes=spikes, membrane=v, generator=torch.Generator().manual_seed(11))
    drawn = _bank_clusters(config, sheets, 5, torch.Generator().manual_seed(11))
    for area, sheet in sheets.items():
        clusters = drawn[area]
        bank = cluster_bank(sheet, config.cluster_window_mm(sheet), "cpu", 5)
        assert clusters[0].shape == (6, min(7, bank.width))
        want = stc_loss(
            spikes[area], sheet.positions, clusters, weights=config.term_weights, v=v[area]
        )
        for term, value in want.items():
            torch.testing.assert_close(out[area][term], value, rtol=1e-12, atol=1e-14)


def test_objective_takes_the_batched_path_and_keeps_the_reference():
    sheets = _sheets()
    spikes, _ = _features(sheets, seed=4)
    config = TopoConfig.preset("stc", num_clusters=5)
    objective = TopoObjective(config, sheets, tuple(sheets), seed=2)
    assert objective.batched
    new = objective.terms(spikes=spikes, generator=torch.Generator().manual_seed(1))
    clusters = _bank_clusters(config, sheets, 2, torch.Generator().manual_seed(1))
    positions = {area: sheet.positions for area, sheet in sheets.items()}
    want = stc_loss(spikes, positions, clusters, weights=config.term_weights)
    assert all(torch.equal(new[a]["total"], want[a]["total"]) for a in sheets)
    ref = objective.terms(spikes=spikes, generator=torch.Generator().manual_seed(1), reference=True)
    v1 = sheets["V1"]  # the first area's reference draws start from the generator's seed
    fresh = sample_cluster_index(
        v1,
        config.num_clusters,
        window_mm=config.cluster_window_mm(v1),
        max_units=config.max_units,
        generator=torch.Generator().manual_seed(1),
    )
    one = stc_loss(spikes["V1"], v1.positions, fresh, weights=config.term_weights)
    torch.testing.assert_close(ref["V1"]["total"], one["total"])
    for area in sheets:
        assert torch.isfinite(ref[area]["total"]) and 0.0 <= float(ref[area]["total"]) <= 2.0
    assert not TopoObjective(TopoConfig.preset("stc-dense"), sheets, tuple(sheets)).batched
    assert not TopoObjective(TopoConfig.preset("toploss"), sheets, tuple(sheets)).batched


def test_an_unset_bank_seed_is_fixed_once_from_the_generator_whether_prepared_or_not():
    sheets = _sheets()
    spikes, _ = _features(sheets, seed=4)
    config = TopoConfig.preset("stc", num_clusters=5)

    def run(prepare: bool) -> dict:
        objective = TopoObjective(config, sheets, tuple(sheets))
        gen = torch.Generator().manual_seed(9)
        if prepare:
            objective.prepare("cpu", gen)
        out = objective.terms(spikes=spikes, generator=gen)
        assert objective.seed == 9
        objective.terms(spikes=spikes, generator=torch.Generator().manual_seed(3))
        assert objective.seed == 9  # fixed at its first use
        return out

    prepared, lazy = run(True), run(False)
    seeded = TopoObjective(config, sheets, tuple(sheets), seed=9)
    want = seeded.terms(spikes=spikes, generator=torch.Generator().manual_seed(9))
    for area in sheets:
        assert torch.equal(prepared[area]["total"], want[area]["total"])
        assert torch.equal(lazy[area]["total"], want[area]["total"])


# ----------------------------------------------------------------------------- the bank


def test_bank_is_padded_ascending_inside_its_windows_and_seeded():
    sheet = build_sheet("V1", (8, 8, 8), 8.0, 1.5, seed=4)
    bank = build_cluster_bank(sheet, window_mm=1.5, size=400, seed=9)
    assert bank.index.shape == bank.valid.shape == (400, bank.width)
    assert torch.equal(bank.valid.sum(1), bank.counts) and int(bank.counts.min()) >= 2
    assert bank.width == int(bank.counts.max())
    pos = sheet.positions.double()
    for row, ok in zip(bank.index, bank.valid, strict=True):
        units = row[ok]
        assert bool((units[1:] > units[:-1]).all()) and bool((row[~ok] == row[0]).all())
        extent = pos[units].amax(0) - pos[units].amin(0)
        assert bool((extent <= 1.5).all())
    again = build_cluster_bank(sheet, window_mm=1.5, size=400, seed=9)
    assert torch.equal(again.index, bank.index) and torch.equal(again.valid, bank.valid)
    other = build_cluster_bank(sheet, window_mm=1.5, size=400, seed=10)
    assert not torch.equal(other.index, bank.index)
    with pytest.raises(ConfigError, match="held >= 2"):
        build_cluster_bank(sheet, window_mm=1e-6, size=16)
    with pytest.raises(ConfigError, match="bank size"):
        build_cluster_bank(sheet, size=0)


def test_draws_have_static_shapes_and_respect_the_window():
    sheet = build_sheet("V1", (8, 8, 8), 8.0, 2.0, seed=4)
    bank = build_cluster_bank(sheet, window_mm=2.0, size=256, seed=1)
    g = torch.Generator().manual_seed(0)
    shapes = set()
    pos = sheet.positions.double()
    for _ in range(20):
        index, valid = bank.draw(8, 12, g)
        shapes.add(tuple(index.shape))
        assert bool((valid.sum(1) >= 2).all()) and bool((valid.sum(1) <= 12).all())
        for row, ok in zip(index, valid, strict=True):
            units = row[ok]
            assert bool((units[1:] > units[:-1]).all()) and bool((row[~ok] == row[0]).all())
            # every pair of a cluster lies within the window side along x and along y
            d = (pos[units, None, :] - pos[None, units, :]).abs()
            assert bool((d <= 2.0).all())
    assert shapes == {(8, 12)}
    assert bank.draw(3, 10_000, g)[0].shape == (3, bank.width)  # no subsampling needed


def _bin_frequencies(index, valid, sheet):
    """Inclusions per draw pooled over 4x4 spatial bins of the sheet: ``[16]``."""
    per_unit = torch.bincount(index[valid], minlength=sheet.num_units).double() / index.shape[0]
    return _binned(per_unit, sheet)


def _binned(per_unit, sheet):
    bins = (sheet.positions / sheet.side_mm * 4).long().clamp_max(3)
    return torch.zeros(16, dtype=F64).index_add_(0, bins[:, 0] * 4 + bins[:, 1], per_unit)


def test_bank_draws_follow_the_reference_window_distribution():
    """40 000 bank draws against 40 000 windows of the reference sampler on a sheet where every
    window holds >= 8 units (no redraws), so each unit's inclusion probability is exactly the
    chance that a uniform corner puts it inside: ``Π_axis |[x − w, x] ∩ [0, L]| / L``.

    Tolerances: per 4x4 spatial bin, the bank's relative deviation from that probability stays
    within twice the reference sampler's own (3-4 % here: windows include neighbouring units
    together) plus 1 %; the cluster-size histograms differ by a total variation < 0.04 (seen:
    0.015-0.025 between samples of the same distribution) and their means by < 2 %."""
    sheet = build_sheet("V1", (4, 10, 10), 10.0, 2.0, seed=6)
    side, k = 2.0, 40_000
    span = sheet.side_mm - side
    pos = sheet.positions.double()
    exact = ((pos.clamp_max(span) - (pos - side).clamp_min(0)).clamp_min(0) / span).prod(1)
    exact_bins = _binned(exact, sheet)
    ref_index, ref_valid = sample_cluster_index(
        sheet, k, window_mm=side, max_units=10_000, generator=torch.Generator().manual_seed(1)
    )
    assert int(ref_valid.sum(1).min()) >= 8
    bank = build_cluster_bank(sheet, window_mm=side, seed=2)
    index, valid = bank.draw(k, 10_000, torch.Generator().manual_seed(3))

    def deviation(ix, ok):
        return float(((_bin_frequencies(ix, ok, sheet) - exact_bins).abs() / exact_bins).max())

    ref_dev, bank_dev = deviation(ref_index, ref_valid), deviation(index, valid)
    assert ref_dev < 0.06 and bank_dev < 2 * ref_dev + 0.01
    ref_sizes = torch.bincount(ref_valid.sum(1), minlength=200).double() / k
    sizes = torch.bincount(valid.sum(1), minlength=200).double() / k
    assert 0.5 * float((ref_sizes - sizes).abs().sum()) < 0.04
    ref_mean, mean = ref_valid.sum(1).double().mean(), valid.sum(1).double().mean()
    assert abs(float(mean / ref_mean) - 1.0) < 0.02


def test_subsampling_is_uniform_within_a_window():
    """A window of ``c`` units subsampled to ``m`` includes each unit with probability
    ``m / c``; over 20 000 draws every unit's frequency is within 6 % of it (about 4 standard
    errors)."""
    sheet = build_sheet("V1", (4, 10, 10), 10.0, 2.0, seed=6)
    bank = build_cluster_bank(sheet, window_mm=2.0, size=64, seed=2)
    one = ClusterBank(bank.index[:1], bank.valid[:1], bank.counts[:1], 2.0, sheet.num_units)
    count = int(one.counts[0])
    index, valid = one.draw(20_000, 3, torch.Generator().manual_seed(0))
    assert index.shape == (20_000, 3) and bool(valid.all())
    members = one.index[0][one.valid[0]]
    hits = torch.bincount(index.reshape(-1), minlength=sheet.num_units)
    assert int(hits.sum() - hits[members].sum()) == 0  # only the window's units
    freq = hits.double() / 20_000
    assert float((freq[members] * count / 3 - 1).abs().max()) < 0.06
