"""Tile plans of pair lists and the pair moments: the plan decodes to the pairs it was built
from within its limits; the moments equal the sums of the per-pair similarities, with their
gradients; the STC terms computed from the moments equal the per-pair path; the compiled ops'
CPU parts pass opcheck. On a GPU: the tiled kernels against the reference, opcheck, gradcheck,
corrupt plans, and the loss on CUDA against the CPU."""

from __future__ import annotations

import pytest
import torch

from tdsnn.errors import ConfigError
from tdsnn.ops.pairs import PairMoments, pair_dot, pair_moments
from tdsnn.ops.tiles import MAX_TILE_PAIRS, MAX_TILE_UNITS, pair_tiles, spatial_rank
from tdsnn.topo.forms import alignment_form, distance_kernel, local_form, reduce_moments
from tdsnn.topo.losses import stc_loss
from tdsnn.topo.pairs import csr_to_pairs, pair_distances, radius_pairs
from tdsnn.topo.similarity import ccg_pairs, pearson_pairs
from tdsnn.topo_config import TermWeights


def _grid(side: int, spacing: float = 0.1) -> torch.Tensor:
    """``[side², 2]`` positions of a square grid, shuffled so that index order is not spatial."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([xs.flatten(), ys.flatten()], 1).double() * spacing
    return pos[torch.randperm(len(pos), generator=torch.Generator().manual_seed(side))]


def _radius(positions: torch.Tensor, radius: float) -> torch.Tensor:
    return csr_to_pairs(*radius_pairs(positions, radius))


def _check_plan(tiles, pairs, max_units=MAX_TILE_UNITS, max_pairs=MAX_TILE_PAIRS):
    assert torch.equal(tiles.tile_pairs(), tiles.in_tile_order(pairs))
    assert tiles.units.shape[1] <= max_units
    assert int(tiles.offsets.diff().max()) <= max_pairs
    assert tiles.local.dtype == torch.int32 and tiles.units.dtype == torch.long
    valid = tiles.units >= 0  # each tile lists its units once, padding last
    assert all(
        len(set(row[ok].tolist())) == int(ok.sum())
        for row, ok in zip(tiles.units, valid, strict=True)
    )
    values = torch.arange(len(pairs), dtype=torch.float64)
    assert torch.equal(tiles.in_given_order(tiles.in_tile_order(values)), values)


# ----------------------------------------------------------------------------- plans


@pytest.mark.parametrize("max_units,max_pairs", [(128, 1024), (16, 40), (2, 1), (5, 3)])
def test_plan_decodes_to_the_pairs_within_its_limits(max_units, max_pairs):
    gen = torch.Generator().manual_seed(max_units + max_pairs)
    pairs = torch.randint(0, 70, (500, 2), generator=gen)
    pairs[0] = torch.tensor([3, 3])  # a unit with itself
    pairs[1] = pairs[2]  # a duplicate
    tiles = pair_tiles(pairs, 70, max_units=max_units, max_pairs=max_pairs)
    _check_plan(tiles, pairs, max_units, max_pairs)


def test_plan_in_the_given_order_has_no_permutation_and_of_no_pairs_is_empty():
    pairs = torch.tensor([[0, 1], [0, 2], [1, 2], [2, 0]])  # one tile, in the given order
    tiles = pair_tiles(pairs, 144)
    assert tiles.order is None
    _check_plan(tiles, pairs)
    empty = pair_tiles(pairs[:0], 144)
    assert empty.local.shape == (0, 2) and empty.offsets.tolist() == [0]
    assert pair_moments(torch.ones(144, 3), torch.ones(144, 3), empty).tolist() == [0, 0, 0]


def test_positions_make_tiles_of_neighbours_that_share_rows():
    """On a shuffled grid, tiles built on positions read each row for many pairs; by index the
    first units of a tile are scattered and their rows are shared far less."""
    pos = _grid(40)
    pairs = _radius(pos, 0.25)  # 20 neighbours per unit
    spatial = pair_tiles(pairs, len(pos), pos)
    by_index = pair_tiles(pairs, len(pos))
    _check_plan(spatial, pairs)

    def reuse(tiles):
        return 2 * len(pairs) / int((tiles.units >= 0).sum())

    assert reuse(spatial) > 5.0
    assert reuse(spatial) > 2 * reuse(by_index)


def test_spatial_rank_follows_the_z_curve():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [3.0, 3.0]])
    rank = spatial_rank(pos)
    assert sorted(rank.tolist()) == list(range(6))
    assert rank[:4].tolist() == [0, 1, 2, 3]  # the 2×2 block at the origin comes first
    assert rank[5] == 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pairs": torch.zeros(4, 3, dtype=torch.long)}, r"pairs must be a \[P, 2\]"),
        ({"pairs": torch.tensor([[0, 9]])}, r"outside \[0, 5\)"),
        ({"positions": torch.zeros(4, 2)}, r"positions must be \[N, 2\] = \[5, 2\]"),
        ({"max_units": 129}, "max_units <= 128"),
        ({"max_pairs": 0}, "max_pairs <= 1024"),
    ],
)
def test_bad_plans_are_one_line_errors(kwargs, match):
    args = {"pairs": torch.tensor([[0, 1], [1, 2]]), "num_units": 5, **kwargs}
    with pytest.raises(ConfigError, match=match):
        pair_tiles(**args)


# ----------------------------------------------------------------------------- moments


def _moments_by_definition(x, y, pairs, w):
    s = (x[pairs[:, 0]] * y[pairs[:, 1]]).sum(1).double()
    ws = (w.double() * s).sum() if w is not None else s.new_zeros(())
    return torch.stack([s.sum(), s.pow(2).sum(), ws])


@pytest.mark.parametrize("weighted", [True, False])
def test_moments_equal_the_sums_and_pass_gradcheck(weighted):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 7, dtype=torch.float64, generator=gen).requires_grad_()
    y = torch.randn(30, 7, dtype=torch.float64, generator=gen).requires_grad_()
    pairs = torch.randint(0, 30, (90, 2), generator=gen)
    w = torch.randn(90, dtype=torch.float64, generator=gen) if weighted else None
    expected = _moments_by_definition(x, y, pairs, w)
    torch.testing.assert_close(pair_moments(x, y, pairs, w), expected)
    torch.testing.assert_close(pair_moments(x, y, pair_tiles(pairs, 30), w), expected)
    assert torch.autograd.gradcheck(lambda a, b: PairMoments.apply(a, b, pairs, w), (x, y))
    grads = torch.autograd.grad(
        (pair_moments(x, y, pairs, w) * torch.tensor([1.0, -2, 3])).sum(), (x, y)
    )
    direct = torch.autograd.grad((expected * torch.tensor([1.0, -2, 3])).sum(), (x, y))
    for a, b in zip(grads, direct, strict=True):
        torch.testing.assert_close(a, b)


def test_moments_reject_weights_of_another_length():
    x = torch.randn(5, 2)
    with pytest.raises(ConfigError, match=r"weights must be \[P\] = \[2\]"):
        pair_moments(x, x, torch.tensor([[0, 1], [2, 3]]), torch.ones(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_cpu_tiled_ops(kernels, dtype):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 9, dtype=dtype, generator=gen).requires_grad_()
    y = torch.randn(40, 9, dtype=dtype, generator=gen).requires_grad_()
    pairs = torch.randint(0, 40, (120, 2), generator=gen)
    tiles = pair_tiles(pairs, 40, max_units=12, max_pairs=30)
    plan = (tiles.units, tiles.local, tiles.offsets)
    w = tiles.in_tile_order(torch.randn(120, dtype=dtype, generator=gen))
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity_tiled.default, (x, y, *plan))
    torch.library.opcheck(torch.ops.tdsnn.pair_moments.default, (x, y, *plan, w))
    torch.library.opcheck(torch.ops.tdsnn.pair_moments.default, (x, y, *plan, None))
    out = torch.ops.tdsnn.pair_similarity_tiled(x, y, *plan)
    torch.testing.assert_close(tiles.in_given_order(out), pair_dot(x, y, pairs))


# ----------------------------------------------------------------------------- losses


def _per_pair_terms(spikes, v, positions, pairs, form):
    """The STC terms through the [P] similarities (the path the moments replace)."""
    t, b, n = spikes.shape
    sims = {
        "rate": pearson_pairs(spikes.sum(0), pairs),
        "synchrony": ccg_pairs(spikes, pairs),
        "membrane": pearson_pairs(v.reshape(t * b, n), pairs),
    }
    kern = distance_kernel(pair_distances(positions, pairs))
    if form == "local":
        return {k: local_form(1.0 - s) for k, s in sims.items()}
    return {k: alignment_form(s, kern) for k, s in sims.items()}


@pytest.mark.parametrize("form", ["alignment", "local"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_terms_from_moments_equal_the_per_pair_path(form, dtype):
    gen = torch.Generator().manual_seed(5)
    pos = _grid(9)
    pairs = _radius(pos, 0.25)
    spikes = (torch.rand(4, 16, 81, generator=gen) < 0.3).to(dtype)
    spikes[:, :, 4] = 0.0  # a silent unit: correlations 0, zero gradient
    v = torch.randn(4, 16, 81, dtype=dtype, generator=gen)
    v[:, :, 4] = 2.0
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == torch.float32 else {}
    for plan in (pairs, pair_tiles(pairs, 81, pos)):
        s1, v1 = spikes.clone().requires_grad_(), v.clone().requires_grad_()
        s2, v2 = spikes.clone().requires_grad_(), v.clone().requires_grad_()
        got = stc_loss(s1, pos, plan, weights=TermWeights(1.0, 1.0, 1.0), v=v1, form=form)
        want = _per_pair_terms(s2, v2, pos, pairs, form)
        for term, value in want.items():
            torch.testing.assert_close(got[term], value, **tol)
            ga = torch.autograd.grad(got[term], (s1, v1), allow_unused=True)
            gb = torch.autograd.grad(value, (s2, v2), allow_unused=True)
            for x, y in zip(ga, gb, strict=True):
                assert (x is None) == (y is None)
                if x is not None:
                    torch.testing.assert_close(x, y, **tol)
                    assert x[:, :, 4].abs().max() == 0


def test_flat_similarities_or_kernel_give_half_with_zero_gradient():
    z = torch.randn(4, 10, dtype=torch.float64).requires_grad_()
    pairs = torch.tensor([[0, 1], [2, 3]])
    flat_kernel = torch.ones(2, dtype=torch.float64)
    loss = reduce_moments(z, z, 10.0, pairs, 2, flat_kernel, "alignment")
    assert loss.item() == 0.5
    assert torch.autograd.grad(loss, z)[0].abs().max() == 0
    assert reduce_moments(z, z, 10.0, pairs[:0], 0, flat_kernel[:0], "alignment").item() == 0.5
    assert reduce_moments(z, z, 10.0, pairs[:0], 0, None, "local").item() == 0.0


def test_stc_loss_on_tiles_equals_it_on_the_pair_list():
    gen = torch.Generator().manual_seed(6)
    pos = _grid(10)
    pairs = _radius(pos, 0.3)
    spikes = (torch.rand(4, 12, 100, generator=gen) < 0.3).double()
    v = torch.randn(4, 12, 100, dtype=torch.float64, generator=gen)
    kwargs = {"weights": TermWeights(1.0, 0.5, 0.25), "v": v}
    on_list = stc_loss(spikes, pos, pairs, **kwargs)
    on_tiles = stc_loss(spikes, pos, pair_tiles(pairs, 100, pos), **kwargs)
    for term in ("rate", "synchrony", "membrane", "total"):
        torch.testing.assert_close(on_tiles[term], on_list[term])
    with pytest.raises(ConfigError, match="tiles index 99 units, the area has 100"):
        stc_loss(spikes, pos, pair_tiles(pairs[pairs.max(1).values < 99], 99), **kwargs)


# ----------------------------------------------------------------------------- GPU


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "n,m,p,max_units,max_pairs",
    [(1, 1, 1, 128, 1024), (50, 33, 400, 16, 40), (3000, 64, 40000, 128, 1024),
     (400, 17, 5000, 128, 1024), (20, 5, 0, 128, 1024), (300, 200, 3000, 2, 1)],
)  # fmt: skip
def test_cuda_tiled_kernels_match_the_reference(kernels, dtype, n, m, p, max_units, max_pairs):
    gen = torch.Generator().manual_seed(n + m + p)
    base = torch.randn(m, n, dtype=dtype, generator=gen)
    x = base.t().cuda().requires_grad_()  # non-contiguous rows
    y = torch.randn(n, m, dtype=dtype, generator=gen).cuda().requires_grad_()
    pairs = torch.randint(0, n, (p, 2), generator=gen)
    w = torch.randn(p, dtype=dtype, generator=gen)
    tiles = pair_tiles(pairs, n, max_units=max_units, max_pairs=max_pairs).to("cuda")
    x_ref, y_ref = x.detach().cpu().requires_grad_(), y.detach().cpu().requires_grad_()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    out = pair_dot(x, y, tiles)
    ref = pair_dot(x_ref, y_ref, pairs)
    assert _rel_err(out.cpu(), ref) <= tol
    g = torch.linspace(-1, 1, p, dtype=dtype)
    grads = torch.autograd.grad((out * g.cuda()).sum(), (x, y))
    refs = torch.autograd.grad((ref * g).sum(), (x_ref, y_ref))
    for a, b in zip(grads, refs, strict=True):
        assert _rel_err(a.cpu(), b) <= tol
    for weights in (w, None):
        mom = pair_moments(x, y, tiles, None if weights is None else weights.cuda())
        mom_ref = pair_moments(x_ref, y_ref, pairs, weights)
        assert _rel_err(mom.cpu(), mom_ref) <= tol
        c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        grads = torch.autograd.grad((mom * c.cuda()).sum(), (x, y))
        refs = torch.autograd.grad((mom_ref * c).sum(), (x_ref, y_ref))
        for a, b in zip(grads, refs, strict=True):
            assert _rel_err(a.cpu(), b) <= tol


@pytest.mark.gpu
def test_cuda_tiled_opcheck_and_gradcheck(kernels):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 19, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    y = torch.randn(40, 19, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    pairs = torch.randint(0, 40, (150, 2), generator=gen)
    tiles = pair_tiles(pairs, 40, max_units=10, max_pairs=25).to("cuda")
    plan = (tiles.units, tiles.local, tiles.offsets)
    w = tiles.in_tile_order(torch.randn(150, dtype=torch.float64, generator=gen).cuda())
    torch.library.opcheck(torch.ops.tdsnn.pair_similarity_tiled.default, (x, y, *plan))
    torch.library.opcheck(torch.ops.tdsnn.pair_moments.default, (x, y, *plan, w))
    torch.library.opcheck(torch.ops.tdsnn.pair_moments.default, (x, y, *plan, None))
    assert torch.autograd.gradcheck(
        lambda a, b: torch.ops.tdsnn.pair_similarity_tiled(a, b, *plan), (x, y)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: torch.ops.tdsnn.pair_moments(a, b, *plan, w), (x, y)
    )


@pytest.mark.gpu
def test_cuda_corrupt_plans_give_nan_or_clear_errors(kernels):
    x = torch.randn(10, 4, device="cuda")
    tiles = pair_tiles(torch.tensor([[0, 1], [2, 3], [4, 5]]), 10).to("cuda")
    units, local, offsets = tiles.units, tiles.local.clone(), tiles.offsets
    local[1, 1] = 99  # a slot outside the tile
    out = torch.ops.tdsnn.pair_similarity_tiled(x, x, units, local, offsets)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    assert torch.isnan(torch.ops.tdsnn.pair_moments(x, x, units, local, offsets, None)).all()
    too_far = offsets.clone()
    too_far[-1] = 50  # more pairs than local holds
    assert torch.isnan(torch.ops.tdsnn.pair_moments(x, x, units, tiles.local, too_far, None)).all()
    with pytest.raises(RuntimeError, match="local must be a \\[P, 2\\] int32"):
        torch.ops.tdsnn.pair_similarity_tiled(x, x, units, local.long(), offsets)
    with pytest.raises(RuntimeError, match="the tile plan is on cpu"):
        torch.ops.tdsnn.pair_similarity_tiled(x, x, units.cpu(), local, offsets)
    with pytest.raises(RuntimeError, match="weights must be \\[P\\]"):
        torch.ops.tdsnn.pair_moments(x, x, units, local, offsets, torch.ones(2, device="cuda"))


@pytest.mark.gpu
def test_cuda_topo_loss_on_tiles_equals_the_cpu(kernels):
    from tdsnn.ops.tiles import PairTiles
    from tdsnn.sheet import Sheet
    from tdsnn.topo import TopoConfig
    from tdsnn.topo.objective import TopoObjective
    from tdsnn.topo.pairs import pair_plan

    pos = _grid(16).float()
    sheet = Sheet(
        area="V1",
        shape=(1, 16, 16),
        side_mm=1.6,
        neighbourhood_mm=0.25,
        layout="retinotopic",
        positions=pos,
    )
    config = TopoConfig.preset("stc-dense")
    radius = sheet.neighbourhood_mm * config.window_factor
    assert isinstance(pair_plan(sheet, radius, 4, False, torch.device("cuda")), PairTiles)
    gen = torch.Generator().manual_seed(8)
    spikes = (torch.rand(4, 32, 256, generator=gen) < 0.3).float()
    cpu = spikes.clone().requires_grad_()
    gpu = spikes.cuda().requires_grad_()
    objective = TopoObjective(config, {"V1": sheet}, ("V1",))
    want = objective.terms(spikes={"V1": cpu})["V1"]["total"]
    got = objective.terms(spikes={"V1": gpu})["V1"]["total"]
    assert abs(got.item() - want.item()) <= 1e-5
    ga = torch.autograd.grad(got, gpu)[0].cpu()
    gb = torch.autograd.grad(want, cpu)[0]
    assert _rel_err(ga, gb) <= 1e-4


def _plan_and_rows():
    tiles = pair_tiles(torch.tensor([[0, 1], [2, 3], [4, 5]]), 10, max_units=4, max_pairs=2)
    x = torch.randn(10, 4, dtype=torch.float64)
    return x, (tiles.units, tiles.local, tiles.offsets)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda x, p: (x.float(), x, *p), "x and y must be float32 or float64 of one dtype"),
        (lambda x, p: (x, x[:5], *p), r"x and y must be rows \[N, M\] of the same shape"),
        (lambda x, p: (x, x, p[0].int(), *p[1:]), r"units must be a \[G, U\] int64 tensor"),
        (lambda x, p: (x, x, p[0], p[1].long(), p[2]), r"local must be a \[P, 2\] int32"),
        (lambda x, p: (x, x, *p[:2], p[2][:-1]), r"offsets must be a \[G \+ 1\]"),
        (lambda x, p: (x, x, *p[:2], p[2] + 1), "offsets must rise from 0 to P = 3"),
        (lambda x, p: (x, x, p[0], p[1] + 5, p[2]), r"local slots must lie in \[0, "),
        (lambda x, p: (x, x, p[0] + 20, *p[1:]), r"units must lie in \[-1, N = 10\)"),
        (lambda x, p: (x, x, torch.zeros(2, 129, dtype=torch.long), *p[1:]), "1 to 128 units"),
    ],
)
def test_cpu_tiled_ops_reject_bad_input_in_one_line(kernels, change, match):
    x, plan = _plan_and_rows()
    args = change(x, plan)
    with pytest.raises(ConfigError, match=match):
        torch.ops.tdsnn.pair_similarity_tiled(*args)
    with pytest.raises(ConfigError, match=match):
        torch.ops.tdsnn.pair_moments(*args, None)


def test_cpu_moments_reject_bad_weights(kernels):
    x, plan = _plan_and_rows()
    with pytest.raises(ConfigError, match=r"pair_moments: weights must be \[P\] = \[3\]"):
        torch.ops.tdsnn.pair_moments(x, x, *plan, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="weights must be torch.float64"):
        torch.ops.tdsnn.pair_moments(x, x, *plan, torch.ones(3))
