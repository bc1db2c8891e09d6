"""Cortical sheets (layouts, state dicts) and the pair sets and clusters drawn on them."""

import math

import pytest
import torch

from tdsnn.errors import CheckpointError, ConfigError
from tdsnn.sheet import LAYOUTS, Sheet, build_sheet, lattice, near_square
from tdsnn.topo import stc_loss
from tdsnn.topo.pairs import (
    cluster_lists,
    csr_to_pairs,
    grid_neighbours,
    lattice_pairs,
    pair_distances,
    radius_pairs,
    sample_cluster_index,
)

# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["retinotopic", "tiled"])
def test_positions_inside_sheet(layout):
    sheet = build_sheet("V1", (16, 6, 5), 10.0, 2.0, layout=layout, seed=3)
    assert sheet.positions.shape == (16 * 6 * 5, 2)
    assert sheet.positions.dtype == torch.float32
    assert sheet.num_units == 480
    assert bool((sheet.positions >= 0).all()) and bool((sheet.positions <= 10.0).all())
    assert sheet.layout == layout and not sheet.optimized


def test_deterministic_per_seed():
    a = build_sheet("V1", (8, 4, 4), 5.0, 1.0, seed=1)
    b = build_sheet("V1", (8, 4, 4), 5.0, 1.0, seed=1)
    c = build_sheet("V1", (8, 4, 4), 5.0, 1.0, seed=2)
    assert torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, c.positions)


def _unit_hw(shape):
    c, h, w = shape
    u = torch.arange(c * h * w)
    return u // (h * w), (u // w) % h, u % w


def test_retinotopy_units_lie_in_their_cell():
    shape, side = (12, 5, 7), 14.0
    sheet = build_sheet("V2", shape, side, 3.0, seed=0, jitter=0.0)
    _, h, w = _unit_hw(shape)
    cx, cy = side / shape[2], side / shape[1]
    x, y = sheet.positions[:, 0], sheet.positions[:, 1]
    assert bool(((x >= w * cx) & (x <= (w + 1) * cx)).all())
    assert bool(((y >= h * cy) & (y <= (h + 1) * cy)).all())
    # with the default jitter most units stay in their cell, and channels differ between cells
    jittered = build_sheet("V2", shape, side, 3.0, seed=0)
    x, y = jittered.positions[:, 0], jittered.positions[:, 1]
    inside = (x >= w * cx) & (x <= (w + 1) * cx) & (y >= h * cy) & (y <= (h + 1) * cy)
    assert inside.float().mean() > 0.8
    rel = sheet.positions.reshape(12, 35, 2) - sheet.positions.reshape(12, 35, 2).mean(1, True)
    assert rel.std(1).min() > 0.1  # channel c is not at one fixed place in every cell


def test_tiled_layout_structure():
    shape, side = (8, 3, 2), 6.0  # tile near_square(8) = (2, 4)
    sheet = build_sheet("V1", shape, side, 1.0, layout="tiled")
    c, h, w = _unit_hw(shape)
    th, tw = near_square(8)
    assert (th, tw) == (2, 4)
    cell_x, cell_y = side / shape[2], side / shape[1]
    expect_x = (w + (c % tw + 0.5) / tw) * cell_x
    expect_y = (h + (c // tw + 0.5) / th) * cell_y
    torch.testing.assert_close(sheet.positions[:, 0], expect_x.float())
    torch.testing.assert_close(sheet.positions[:, 1], expect_y.float())
    # the lattice is a regular grid of the positions
    grid = lattice(sheet)
    assert grid.shape == (3 * 2, 2 * 4)
    assert sorted(grid.reshape(-1).tolist()) == list(range(48))
    p = sheet.positions[grid]  # [rows, cols, 2]
    torch.testing.assert_close(p[:, 1:, 0] - p[:, :-1, 0], torch.full((6, 7), cell_x / tw))
    torch.testing.assert_close(p[1:, :, 1] - p[:-1, :, 1], torch.full((5, 8), cell_y / th))
    # 4-neighbour lattice pairs are all one spacing apart
    pairs = lattice_pairs(sheet)
    d = pair_distances(sheet.positions, pairs)
    assert pairs.shape[0] == 6 * 7 + 5 * 8
    assert bool(
        torch.isclose(d, torch.tensor(cell_x / tw))
        .logical_or(torch.isclose(d, torch.tensor(cell_y / th)))
        .all()
    )


def test_grid_layout():
    sheet = build_sheet("IT", (12, 1, 1), 70.0, 31.8, layout="grid")
    tiled = build_sheet("IT", (12, 1, 1), 70.0, 31.8, layout="tiled")
    assert torch.equal(sheet.positions, tiled.positions)
    assert lattice(sheet).shape == near_square(12) == (3, 4)
    assert sheet.positions.unique(dim=0).shape[0] == 12
    with pytest.raises(ConfigError, match="tiled"):
        build_sheet("IT", (12, 2, 2), 70.0, 31.8, layout="grid")


def test_bad_layout_and_shape():
    with pytest.raises(ConfigError, match="retinotopic"):
        build_sheet("V1", (4, 2, 2), 5.0, 1.0, layout="hexagonal")
    with pytest.raises(ConfigError):
        build_sheet("V1", (4, 0, 2), 5.0, 1.0)
    with pytest.raises(ConfigError, match="tiled"):
        lattice(build_sheet("V1", (4, 2, 2), 5.0, 1.0))


def test_near_square():
    assert near_square(64) == (8, 8)
    assert near_square(128) == (8, 16)
    assert near_square(81) == (9, 9)
    assert near_square(7) == (1, 7)
    assert near_square(1) == (1, 1)


# ----------------------------------------------------------------------------- state dict


def test_state_dict_round_trip(tmp_path):
    sheet = build_sheet("V4", (6, 3, 3), 22.4, 2.545, seed=5)
    sheet.optimized = True
    path = tmp_path / "sheet.pt"
    torch.save({"sheets": {"V4": sheet.state_dict()}}, path)
    state = torch.load(path, weights_only=True)["sheets"]["V4"]
    back = Sheet.from_state_dict(state)
    assert back.area == "V4" and back.shape == (6, 3, 3) and back.layout == "retinotopic"
    assert back.side_mm == 22.4 and back.neighbourhood_mm == 2.545 and back.optimized
    assert torch.equal(back.positions, sheet.positions)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda s: s.update(positions=torch.zeros(5, 2)), r"\[54, 2\]"),
        (lambda s: s.update(positions=torch.zeros(54, 3)), "positions"),
        (lambda s: s.pop("positions"), "missing positions"),
        (lambda s: s.update(shape=[6, 3]), "shape"),
        (lambda s: s.update(shape=[6, 3, -3]), "shape"),
        (lambda s: s.update(layout="hexagonal"), "layout"),
        (lambda s: s.update(positions=torch.full((54, 2), float("nan"))), "finite"),
        (lambda s: s.update(positions=torch.full((54, 2), 99.0)), "outside"),
        (lambda s: s.update(version=7), "version"),
    ],
)
def test_corrupt_state_is_checkpoint_error(corrupt, match):
    state = build_sheet("V4", (6, 3, 3), 22.4, 2.545).state_dict()
    corrupt(state)
    with pytest.raises(CheckpointError, match=match):
        Sheet.from_state_dict(state)


# ----------------------------------------------------------------------------- pair sets


@pytest.mark.parametrize("radius", [0.3, 1.0, 2.5])
def test_radius_pairs_equal_brute_force(radius):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(300, 2, generator=g) * torch.tensor([5.0, 3.0])
    indptr, indices = radius_pairs(pos, radius)
    assert indptr.shape == (301,) and indptr[-1] == indices.numel()
    d = torch.cdist(pos.double(), pos.double())
    brute = (d <= radius) & ~torch.eye(300, dtype=torch.bool)
    for i in range(300):
        got = indices[indptr[i] : indptr[i + 1]]
        assert got.tolist() == brute[i].nonzero().reshape(-1).tolist()
    pairs = csr_to_pairs(indptr, indices)
    ii, jj = torch.triu_indices(300, 300, 1)
    expect = torch.stack([ii, jj], 1)[brute[ii, jj]]
    assert torch.equal(pairs, expect)


def test_radius_pairs_keep_boundary_and_shared_positions():
    # a 0.1 mm lattice (distances equal to the radius, inexact in binary) with two units on one
    # spot: d <= r is kept, and units at the same position are each other's neighbours
    xs = torch.arange(5, dtype=torch.float64) * 0.1
    pos = torch.cartesian_prod(xs, xs)
    pos = torch.cat([pos, pos[7:8]])
    for radius in (0.1, 0.2, math.sqrt(2) * 0.1):
        indptr, indices = radius_pairs(pos, radius)
        d = ((pos[:, None] - pos[None]) ** 2).sum(-1)
        brute = (d <= radius**2) & ~torch.eye(len(pos), dtype=torch.bool)
        for i in range(len(pos)):
            got = indices[indptr[i] : indptr[i + 1]]
            assert got.tolist() == brute[i].nonzero().reshape(-1).tolist(), (radius, i)
    assert 25 in indices[indptr[7] : indptr[8]].tolist()


def test_radius_pairs_rejects_bad_radius():
    with pytest.raises(ConfigError):
        radius_pairs(torch.rand(5, 2), 0.0)


@pytest.mark.parametrize(
    "hw, conn, wrap, count",
    [
        ((4, 5), 4, False, 4 * 4 + 3 * 5),
        ((4, 5), 8, False, 4 * 4 + 3 * 5 + 2 * 3 * 4),
        ((4, 5), 4, True, 2 * 20),
        ((4, 5), 8, True, 4 * 20),
        ((1, 6), 4, False, 5),
        ((1, 6), 4, True, 6),
        ((2, 2), 8, True, 6),  # complete graph on 4 cells, no repeats or self-loops
    ],
)
def test_grid_neighbours_counts(hw, conn, wrap, count):
    pairs = grid_neighbours(hw, conn, wrap)
    assert pairs.shape == (count, 2)
    assert bool((pairs[:, 0] < pairs[:, 1]).all())
    assert torch.unique(pairs, dim=0).shape[0] == count
    assert int(pairs.max()) < hw[0] * hw[1]


def test_grid_neighbours_geometry():
    pairs = grid_neighbours((3, 4), 8)
    r, c = pairs // 4, pairs % 4
    assert bool(((r[:, 0] - r[:, 1]).abs() <= 1).all() and ((c[:, 0] - c[:, 1]).abs() <= 1).all())
    with pytest.raises(ConfigError, match="4 or 8"):
        grid_neighbours((3, 4), 6)


def test_sample_clusters_sizes_and_windows():
    sheet = build_sheet("V1", (32, 16, 16), 16.0, 2.0, seed=0)
    g = torch.Generator().manual_seed(0)
    clusters = cluster_lists(*sample_cluster_index(sheet, 20, generator=g))
    assert len(clusters) == 20
    for c in clusters:
        assert 2 <= c.numel() <= 500 and c.dtype == torch.long
        assert bool((c[1:] > c[:-1]).all())
        p = sheet.positions[c]
        extent = p.max(0).values - p.min(0).values
        assert bool((extent <= 2.0 + 1e-5).all())
    # a big window is subsampled to max_units
    big = cluster_lists(*sample_cluster_index(sheet, 5, window_mm=8.0, max_units=50, generator=g))
    assert all(c.numel() == 50 for c in big)
    # the same generator seed gives the same clusters
    a = cluster_lists(*sample_cluster_index(sheet, 3, generator=torch.Generator().manual_seed(4)))
    b = cluster_lists(*sample_cluster_index(sheet, 3, generator=torch.Generator().manual_seed(4)))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_sample_clusters_match_a_full_scan():
    sheet = build_sheet("V1", (4, 8, 8), 8.0, 1.5, seed=1)
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    clusters = cluster_lists(*sample_cluster_index(sheet, 10, window_mm=1.5, generator=g))
    g.set_state(state)
    corners = torch.rand(10, 2, generator=g, dtype=torch.float64) * (8.0 - 1.5)
    pos = sheet.positions.double()
    for units, (x0, y0) in zip(clusters, corners.tolist(), strict=True):
        inside = (
            (pos[:, 0] >= x0)
            & (pos[:, 0] <= x0 + 1.5)
            & (pos[:, 1] >= y0)
            & (pos[:, 1] <= y0 + 1.5)
        )
        assert torch.equal(units, inside.nonzero().reshape(-1))  # every window held >= 2 units


def test_cluster_index_is_padded_and_matches_the_list_form():
    sheet = build_sheet("V1", (16, 12, 12), 12.0, 3.0, seed=2)
    index, valid = sample_cluster_index(
        sheet, 6, max_units=40, generator=torch.Generator().manual_seed(5)
    )
    listed = cluster_lists(
        *sample_cluster_index(sheet, 6, max_units=40, generator=torch.Generator().manual_seed(5))
    )
    assert index.shape == valid.shape and index.shape[1] == max(c.numel() for c in listed)
    for row, mask, units in zip(index, valid, listed, strict=True):
        assert torch.equal(row[mask], units) and bool((row[~mask] == row[0]).all())
        assert 2 <= units.numel() <= 40
    spikes = torch.rand(4, 3, sheet.num_units, generator=torch.Generator().manual_seed(1)) < 0.3
    a = stc_loss(spikes.float(), sheet.positions, (index, valid))
    b = stc_loss(spikes.float(), sheet.positions, listed)
    torch.testing.assert_close(a["total"], b["total"])


def test_cluster_windows_cover_the_sheet_uniformly():
    sheet = build_sheet("V1", (4, 16, 16), 16.0, 2.0, seed=0)
    clusters = cluster_lists(
        *sample_cluster_index(sheet, 4000, generator=torch.Generator().manual_seed(0))
    )
    hits = torch.zeros(sheet.num_units)
    for units in clusters:
        hits[units] += 1
    centre = sheet.positions.sub(8.0).abs().max(1).values < 5.0  # away from the edges
    rel = hits[centre] / hits[centre].mean()
    assert float(rel.std()) < 0.25 and float(rel.min()) > 0.4


def test_windows_with_fewer_than_two_units_are_redrawn():
    # all units in the lower-left 2 mm of a 10 mm sheet: most 1 mm windows hold none
    positions = torch.rand(64, 2, generator=torch.Generator().manual_seed(0)) * 2.0
    sheet = Sheet("V1", (4, 4, 4), 10.0, 1.0, "retinotopic", positions)
    index, valid = sample_cluster_index(sheet, 12, generator=torch.Generator().manual_seed(1))
    assert index.shape[0] == 12 and bool((valid.sum(1) >= 2).all())
    for row, mask in zip(index, valid, strict=True):
        p = positions[row[mask]]
        assert bool((p.max(0).values - p.min(0).values <= 1.0 + 1e-6).all())


def test_full_windows_are_subsampled_uniformly():
    sheet = build_sheet("V1", (4, 5, 5), 5.0, 5.0, seed=0)
    clusters = cluster_lists(
        *sample_cluster_index(sheet, 400, max_units=25, generator=torch.Generator().manual_seed(0))
    )
    assert all(c.numel() == 25 and bool((c[1:] > c[:-1]).all()) for c in clusters)
    hits = torch.bincount(torch.cat(clusters), minlength=sheet.num_units)
    assert int(hits.min()) > 60 and int(hits.max()) < 140  # Binomial(400, 1/4): 100 ± 8.7


@pytest.mark.gpu
def test_cluster_index_is_drawn_on_the_device():
    sheet = build_sheet("V1", (16, 12, 12), 12.0, 3.0, seed=2)
    generator = torch.Generator("cuda").manual_seed(5)
    index, valid = sample_cluster_index(sheet, 8, max_units=40, generator=generator)
    assert index.is_cuda and valid.is_cuda and index.shape == valid.shape
    assert bool((valid.sum(1) >= 2).all()) and int(valid.sum(1).max()) <= 40
    again = sample_cluster_index(
        sheet, 8, max_units=40, generator=torch.Generator("cuda").manual_seed(5)
    )
    assert torch.equal(index, again[0]) and torch.equal(valid, again[1])
    listed = cluster_lists(*sample_cluster_index(sheet, 8, max_units=40, generator=generator))
    assert all(c.device.type == "cpu" and c.numel() >= 2 for c in listed)


def test_sample_clusters_errors():
    sheet = build_sheet("V1", (1, 2, 2), 100.0, 0.01)
    with pytest.raises(ConfigError, match="window"):
        cluster_lists(*sample_cluster_index(sheet, 2, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ConfigError):
        cluster_lists(*sample_cluster_index(sheet, 0))


def test_layouts_constant():
    assert LAYOUTS == ("retinotopic", "tiled", "grid")
