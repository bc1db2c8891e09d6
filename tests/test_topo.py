"""Topographic losses against slow loop implementations written from DESIGN §8, plus presets."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from tdsnn.config import RunConfig, load_config
from tdsnn.errors import ConfigError
from tdsnn.sheet import build_sheet
from tdsnn.topo import (
    TOPO_PRESETS,
    TermWeights,
    TopoConfig,
    as_loss,
    ccg_dense,
    ccg_pairs,
    gather_clusters,
    membrane_loss,
    pair_dot,
    rate_loss,
    stc_loss,
    synchrony_loss,
    toploss_loss,
    ws_loss,
)
from tdsnn.topo.objective import TopoObjective
from tdsnn.topo.pairs import cluster_lists, grid_neighbours, sample_cluster_index

F64 = torch.float64

# ----------------------------------------------------------------------------- slow references


def ref_pearson(a, b):
    """Pearson of two 1-D tensors; 0 if either is constant."""
    a, b = a - a.mean(), b - b.mean()
    va, vb = (a * a).sum(), (b * b).sum()
    if float(va.detach()) == 0.0 or float(vb.detach()) == 0.0:
        return (a * b).sum() * 0.0
    return (a * b).sum() / torch.sqrt(va * vb)


def ref_alignment(sims, positions, pairs):
    ks = [1.0 / (1.0 + torch.dist(positions[i], positions[j])) for i, j in pairs.tolist()]
    return 0.5 * (1.0 - ref_pearson(torch.stack(sims), torch.stack(ks).to(sims[0])))


def ref_rate(spikes, positions, pairs):
    counts = spikes.sum(0)  # [B, N]
    sims = [ref_pearson(counts[:, i], counts[:, j]) for i, j in pairs.tolist()]
    return ref_alignment(sims, positions, pairs)


def ref_ccg(spikes, i, j, window):
    """CCG(i,j) = Σ_{τ=−W..W} 1/(B·(T−|τ|)) Σ_b Σ_t S_i^b(t) S_j^b(t+τ)."""
    t_steps, batch = spikes.shape[:2]
    total = spikes.new_zeros(())
    for tau in range(-window, window + 1):
        acc = spikes.new_zeros(())
        for b in range(batch):
            for t in range(t_steps):
                if 0 <= t + tau < t_steps:
                    acc = acc + spikes[t, b, i] * spikes[t + tau, b, j]
        total = total + acc / (batch * (t_steps - abs(tau)))
    return total


def ref_rccg(spikes, i, j, window):
    return ref_ccg(spikes, i, j, window) / torch.sqrt(
        ref_ccg(spikes, i, i, window) * ref_ccg(spikes, j, j, window)
    )


def ref_sync(spikes, positions, pairs, window=None):
    t_steps = spikes.shape[0]
    w = min(t_steps // 2 if window is None else window, t_steps - 1)
    sims = [ref_rccg(spikes, i, j, w) for i, j in pairs.tolist()]
    return ref_alignment(sims, positions, pairs)


def ref_membrane(v, positions, pairs):
    sims = [ref_pearson(v[:, :, i].reshape(-1), v[:, :, j].reshape(-1)) for i, j in pairs.tolist()]
    return ref_alignment(sims, positions, pairs)


def ref_as(spikes, pairs):
    counts = spikes.sum(0)
    terms = [1.0 - ref_pearson(counts[:, i], counts[:, j]) for i, j in pairs.tolist()]
    return torch.stack(terms).mean()


def ref_ws(w, pairs, metric):
    terms = []
    for i, j in pairs.tolist():
        a, b = w[i], w[j]
        if metric == "correlation":
            a, b = a - a.mean(), b - b.mean()
        if metric == "sqeuclidean":
            terms.append(((a - b) ** 2).sum())
        elif metric == "euclidean":
            terms.append(((a - b) ** 2).sum().sqrt())
        else:
            terms.append(1.0 - (a * b).sum() / (a.norm() * b.norm()))
    return torch.stack(terms).mean()


def ref_bilinear_matrix(n_out, n_in):
    """Rows: bilinear (align_corners=False) weights of each output sample over the inputs."""
    m = torch.zeros(n_out, n_in, dtype=F64)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1.0 - lam
        m[o, i1] += lam
    return m


def ref_toploss(w, grid_hw, factor):
    rows, cols = grid_hw
    maps = w.t().reshape(-1, rows, cols)  # [F, rows, cols]
    dr, dc = max(1, int(rows / factor)), max(1, int(cols / factor))
    down_r, down_c = ref_bilinear_matrix(dr, rows), ref_bilinear_matrix(dc, cols)
    up_r, up_c = ref_bilinear_matrix(rows, dr), ref_bilinear_matrix(cols, dc)
    blur = torch.stack([up_r @ (down_r @ m @ down_c.t()) @ up_c.t() for m in maps])
    cos = []
    for r in range(rows):
        for c in range(cols):
            a, b = maps[:, r, c], blur[:, r, c]
            cos.append((a * b).sum() / (a.norm() * b.norm()))
    return 1.0 - torch.stack(cos).mean()


# ----------------------------------------------------------------------------- fixtures


def _data(t=4, b=6, n=9, seed=0, binary=True):
    g = torch.Generator().manual_seed(seed)
    if binary:
        x = (torch.rand(t, b, n, generator=g, dtype=F64) < 0.4).to(F64)
    else:
        x = torch.rand(t, b, n, generator=g, dtype=F64) + 0.1
    pos = torch.rand(n, 2, generator=g, dtype=F64) * 3.0
    return x, pos


def _all_pairs(n):
    i, j = torch.triu_indices(n, n, 1)
    return torch.stack([i, j], 1)


def _some_pairs(n, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = _all_pairs(n)
    return pairs[torch.randperm(pairs.shape[0], generator=g)[:p]]


def _grads(fn, x):
    x = x.clone().requires_grad_()
    out = fn(x)
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- vs references


@pytest.mark.parametrize("binary", [True, False])
def test_rate_loss_matches_loop(binary):
    x, pos = _data(binary=binary)
    pairs = _some_pairs(9, 20)
    for p, ref_pairs in ((pairs, pairs), (None, _all_pairs(9))):
        got, g_got = _grads(lambda y, p=p: rate_loss(y, pos, p), x)
        want, g_want = _grads(lambda y, rp=ref_pairs: ref_rate(y, pos, rp), x)
        _close(got, want)
        _close(g_got, g_want)


@pytest.mark.parametrize("window", [None, 0, 1, 3, 10])
def test_synchrony_loss_matches_loop(window):
    x, pos = _data(t=4, b=3, n=6, seed=1, binary=False)
    pairs = _some_pairs(6, 10, seed=1)
    for p, ref_pairs in ((pairs, pairs), (None, _all_pairs(6))):
        got, g_got = _grads(lambda y, p=p: synchrony_loss(y, pos, p, window=window), x)
        want, g_want = _grads(lambda y, rp=ref_pairs: ref_sync(y, pos, rp, window), x)
        _close(got, want)
        _close(g_got, g_want)


def test_ccg_binary_spikes_match_loop():
    x, _ = _data(t=5, b=4, n=5, seed=2)
    pairs = _all_pairs(5)
    r = ccg_pairs(x, pairs, window=2)
    want = torch.stack([ref_rccg(x, i, j, 2) for i, j in pairs.tolist()])
    _close(r, want)
    dense = ccg_dense(x.permute(2, 0, 1)[None], window=2)[0]  # [n, n]
    _close(dense[pairs[:, 0], pairs[:, 1]], want)
    _close(dense[pairs[:, 1], pairs[:, 0]], want)


def test_membrane_loss_matches_loop():
    v, pos = _data(binary=False, seed=3)
    v = torch.randn_like(v)
    pairs = _some_pairs(9, 15, seed=3)
    for p, ref_pairs in ((pairs, pairs), (None, _all_pairs(9))):
        got, g_got = _grads(lambda y, p=p: membrane_loss(y, pos, p), v)
        want, g_want = _grads(lambda y, rp=ref_pairs: ref_membrane(y, pos, rp), v)
        _close(got, want)
        _close(g_got, g_want)


def test_as_loss_matches_loop():
    x, _ = _data(binary=False, seed=4)
    pairs = grid_neighbours((3, 3), 8)
    got, g_got = _grads(lambda y: as_loss(y, pairs), x)
    want, g_want = _grads(lambda y: ref_as(y, pairs), x)
    _close(got, want)
    _close(g_got, g_want)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "correlation"])
def test_ws_loss_matches_loop(metric):
    w = torch.randn(12, 7, dtype=F64, generator=torch.Generator().manual_seed(5))
    pairs = grid_neighbours((3, 4), 4, wrap=True)
    got, g_got = _grads(lambda y: ws_loss(y, pairs, metric=metric), w)
    want, g_want = _grads(lambda y: ref_ws(y, pairs, metric), w)
    _close(got, want)
    _close(g_got, g_want)


@pytest.mark.parametrize("grid_hw, factor", [((4, 6), 2.0), ((6, 6), 3.0), ((3, 8), 2.5)])
def test_toploss_matches_loop(grid_hw, factor):
    c = grid_hw[0] * grid_hw[1]
    w = torch.randn(c, 5, dtype=F64, generator=torch.Generator().manual_seed(6))
    got, g_got = _grads(lambda y: toploss_loss(y, grid_hw, factor), w)
    want, g_want = _grads(lambda y: ref_toploss(y, grid_hw, factor), w)
    _close(got, want)
    _close(g_got, g_want)
    # identical rows are perfectly smooth
    assert float(toploss_loss(torch.ones(c, 5), grid_hw, factor)) == pytest.approx(0.0, abs=1e-6)


def test_stc_loss_weights_terms():
    x, pos = _data(binary=False, seed=7)
    v = torch.randn_like(x)
    pairs = _some_pairs(9, 20, seed=7)
    out = stc_loss(x, pos, pairs, weights=TermWeights(2.0, 3.0, 5.0), v=v, window=1)
    _close(out["rate"], rate_loss(x, pos, pairs))
    _close(out["synchrony"], synchrony_loss(x, pos, pairs, window=1))
    _close(out["membrane"], membrane_loss(v, pos, pairs))
    _close(out["total"], 2.0 * out["rate"] + 3.0 * out["synchrony"] + 5.0 * out["membrane"])
    assert set(stc_loss(x, pos, pairs, weights=TermWeights(beta=0.0))) == {"rate", "total"}
    with pytest.raises(ConfigError, match="v="):
        stc_loss(x, pos, pairs, weights=TermWeights(gamma=1.0))
    with pytest.raises(ConfigError, match="alignment"):
        stc_loss(x, pos, pairs, form="global")
    with pytest.raises(ConfigError, match="TermWeights"):
        stc_loss(x, pos, pairs, weights={"rate": 1.0})
    with pytest.raises(ConfigError, match=r"beta must be a finite number in \[0, 1000000\]"):
        TermWeights(beta=-1.0)


def test_local_form_stc_is_mean_dissimilarity():
    x, pos = _data(binary=False, seed=8)
    pairs = _all_pairs(9)
    rate_only = TermWeights(1.0, 0.0)
    out = stc_loss(x, pos, pairs, weights=rate_only, form="local")
    _close(out["rate"], as_loss(x, pairs))
    dense = stc_loss(x, pos, None, weights=rate_only, form="local")
    _close(dense["rate"], out["rate"])


# ----------------------------------------------------------------------------- dense == pair list


def test_clusters_equal_pair_lists():
    x, pos = _data(t=4, b=8, n=40, seed=9, binary=True)
    v = torch.randn_like(x)
    clusters = [torch.arange(0, 12), torch.tensor([3, 7, 20, 21, 39]), torch.arange(15, 40)]
    kw = dict(weights=TermWeights(2.0, 3.0, 0.5), window=2)

    def batched(y):
        return stc_loss(y, pos, clusters, v=v * y, **kw)["total"]

    def one_by_one(y):
        per = []
        for c in clusters:
            pairs = _all_pairs(c.numel())
            yc, vc = y[:, :, c], (v * y)[:, :, c]
            per.append(stc_loss(yc, pos[c], pairs, v=vc, **kw)["total"])
        return torch.stack(per).mean()

    got, g_got = _grads(batched, x)
    want, g_want = _grads(one_by_one, x)
    _close(got, want)
    _close(g_got, g_want)


def test_gather_clusters_pads_with_zeros():
    x = torch.arange(24.0).reshape(2, 3, 4)
    xg, index, valid = gather_clusters(x, [torch.tensor([2, 0]), torch.tensor([1, 3, 2])])
    assert xg.shape == (2, 3, 2, 3)
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(xg[0, 0], x[..., 2]) and torch.equal(xg[1, 1], x[..., 3])
    assert torch.equal(xg[0, 2], torch.zeros(2, 3))


def test_gather_clusters_takes_the_padded_pair_as_the_list():
    x = torch.randn(3, 4, 30)
    clusters = [torch.tensor([2, 5, 9]), torch.tensor([0, 29]), torch.arange(10, 14)]
    index = torch.tensor([[2, 5, 9, 2], [0, 29, 0, 0], [10, 11, 12, 13]])
    valid = index.new_tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    listed = gather_clusters(x, clusters)
    paired = gather_clusters(x, (index, valid))
    for a, b in zip(listed, paired, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="valid"):
        gather_clusters(x, (index, valid[:, :2]))


# ----------------------------------------------------------------------------- invariances


def test_pair_order_and_direction_invariance():
    x, pos = _data(binary=False, seed=10)
    pairs = _some_pairs(9, 25, seed=10)
    perm = pairs[torch.randperm(25, generator=torch.Generator().manual_seed(0))]
    flipped = pairs.flip(1)
    for fn in (rate_loss, synchrony_loss, membrane_loss):
        base = fn(x, pos, pairs)
        _close(fn(x, pos, perm), base)
        _close(fn(x, pos, flipped), base)
    _close(as_loss(x, flipped), as_loss(x, pairs))
    w = x[0].t().contiguous()
    _close(ws_loss(w, flipped, metric="cosine"), ws_loss(w, pairs, metric="cosine"))


def test_rate_loss_scale_invariance():
    x, pos = _data(binary=False, seed=11)
    pairs = _some_pairs(9, 20, seed=11)
    _close(rate_loss(3.7 * x, pos, pairs), rate_loss(x, pos, pairs))
    _close(rate_loss(3.7 * x, pos), rate_loss(x, pos))


def test_rate_loss_range_and_signs():
    b, n = 16, 12
    pos = torch.stack([torch.arange(n, dtype=F64), torch.zeros(n, dtype=F64)], 1)
    g = torch.Generator().manual_seed(0)
    # smooth: responses drift with position -> nearby units correlate -> low loss
    base = torch.randn(b, 1, generator=g, dtype=F64)
    slope = torch.randn(b, 1, generator=g, dtype=F64)
    smooth = base + slope * torch.arange(n, dtype=F64) / n
    smooth = smooth + 0.05 * torch.randn(b, n, generator=g, dtype=F64)
    loss_smooth = float(rate_loss(smooth[None], pos))
    loss_anti = float(rate_loss(smooth[None][..., torch.randperm(n, generator=g)], pos))
    assert 0.0 <= loss_smooth < 0.2 < loss_anti <= 1.0


# ----------------------------------------------------------------------------- gradcheck


def _real(t=3, b=4, n=6, seed=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(t, b, n, generator=g, dtype=F64) + 0.2
    pos = torch.rand(n, 2, generator=g, dtype=F64) * 2
    return x.requires_grad_(), pos


@pytest.mark.parametrize("dense", [False, True])
def test_gradcheck_alignment_losses(dense):
    x, pos = _real()
    pairs = None if dense else _some_pairs(6, 10)
    assert torch.autograd.gradcheck(lambda y: rate_loss(y, pos, pairs), (x,))
    assert torch.autograd.gradcheck(lambda y: membrane_loss(y, pos, pairs), (x,))
    assert torch.autograd.gradcheck(lambda y: synchrony_loss(y, pos, pairs), (x,))
    assert torch.autograd.gradcheck(lambda y: synchrony_loss(y, pos, pairs, window=2), (x,))


def test_gradcheck_local_and_weight_losses():
    x, _ = _real()
    pairs = grid_neighbours((2, 3), 8)
    assert torch.autograd.gradcheck(lambda y: as_loss(y, pairs), (x,))
    w = torch.randn(6, 5, dtype=F64, requires_grad=True)
    for metric in ("euclidean", "sqeuclidean", "cosine", "correlation"):
        assert torch.autograd.gradcheck(lambda y, m=metric: ws_loss(y, pairs, metric=m), (w,))
    assert torch.autograd.gradcheck(lambda y: toploss_loss(y, (2, 3), 2.0), (w,))


def test_gradcheck_pair_dot():
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    y = torch.randn(5, 3, dtype=F64, requires_grad=True)
    pairs = torch.tensor([[0, 1], [2, 2], [4, 0], [0, 1]])
    assert torch.autograd.gradcheck(lambda a, b: pair_dot(a, b, pairs), (x, y))


# ----------------------------------------------------------------------------- zero variance


def _assert_zero_finite_grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    assert bool(torch.isfinite(g).all()) and float(g.abs().max()) == 0.0


@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize("dense", [False, True])
def test_silent_or_constant_input_gives_half_and_zero_grad(fill, dense):
    x = torch.full((4, 5, 8), fill, requires_grad=True)
    pos = torch.rand(8, 2)
    pairs = None if dense else _all_pairs(8)
    for fn in (rate_loss, synchrony_loss, membrane_loss):
        loss = fn(x, pos, pairs)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5)
        _assert_zero_finite_grad(loss, x)
    out = stc_loss(x, pos, pairs, weights=TermWeights(gamma=1.0), v=x)
    _assert_zero_finite_grad(out["total"], x)
    clusters = [torch.arange(8), torch.arange(3)]
    _assert_zero_finite_grad(stc_loss(x, pos, clusters)["total"], x)
    loss = as_loss(x, _all_pairs(8))
    assert loss.item() == pytest.approx(1.0)
    _assert_zero_finite_grad(loss, x)


def test_zero_weights_are_safe():
    w = torch.zeros(6, 4, requires_grad=True)
    pairs = grid_neighbours((2, 3))
    for loss in (ws_loss(w, pairs, metric="cosine"), toploss_loss(w, (2, 3), 2.0)):
        assert torch.isfinite(loss)
        _assert_zero_finite_grad(loss, w)
    assert ws_loss(w, pairs).item() == 0.0


def test_partly_silent_units_get_zero_grad():
    x, pos = _data(t=4, b=8, n=10, seed=13)
    x[:, :, [2, 5]] = 0.0
    x.requires_grad_()
    for pairs in (None, _all_pairs(10)):
        loss = stc_loss(x, pos, pairs)["total"]
        (g,) = torch.autograd.grad(loss, x)
        assert bool(torch.isfinite(g).all())
        assert float(g[:, :, [2, 5]].abs().max()) == 0.0
        assert float(g.abs().max()) > 0.0


def test_identical_units_are_constant_similarity():
    row = (torch.rand(4, 6, 1) < 0.5).float()
    x = row.expand(4, 6, 7).clone().requires_grad_()
    loss = rate_loss(x, torch.rand(7, 2))
    assert loss.item() == pytest.approx(0.5)
    _assert_zero_finite_grad(loss, x)


# ----------------------------------------------------------------------------- presets


def test_presets_yaml_round_trip():
    for name in TOPO_PRESETS:
        cfg = TopoConfig.preset(name)
        text = yaml.safe_dump(cfg.to_dict())
        assert TopoConfig.from_dict(yaml.safe_load(text)) == cfg
    cfg = TopoConfig.preset("stc", alpha=10, beta=90, areas=["V1", "IT"], ccg_window=1)
    back = TopoConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert back == cfg and back.areas == ("V1", "IT") and back.alpha == 10.0


def test_preset_meanings():
    stc = TopoConfig.preset("stc")
    assert (stc.alpha, stc.beta, stc.gamma) == (0.1, 0.1, 0.0)
    assert (stc.warmup, stc.max_units) == (0.5, 200)
    assert (stc.pairs, stc.form, stc.feature, stc.num_clusters) == (
        "clusters",
        "alignment",
        "spikes",
        10,
    )
    assert TopoConfig.preset("stc-dense").pairs == "radius"
    ws = TopoConfig.preset("ws")
    assert (ws.feature, ws.form, ws.pairs, ws.areas) == (
        "weights",
        "local",
        "grid-neighbours",
        ("last",),
    )
    a = TopoConfig.preset("as")
    assert (a.feature, a.form, a.pairs, a.beta) == ("spikes", "local", "grid-neighbours", 0.0)
    assert TopoConfig.preset("tdann").feature == "membrane"
    assert TopoConfig.preset("toploss").form == "blur"
    assert not TopoConfig.preset("none").enabled


def test_unknown_preset_and_keys():
    with pytest.raises(ConfigError, match="stc-dense"):
        TopoConfig.preset("topo9000")
    with pytest.raises(ConfigError, match="valid keys"):
        TopoConfig.from_dict({"name": "stc", "alpah": 3})
    with pytest.raises(ConfigError, match="valid keys"):
        TopoConfig.preset("stc", lamda=1)
    with pytest.raises(ConfigError, match="grid-neighbours"):
        TopoConfig.preset("stc", pairs="everything")
    with pytest.raises(ConfigError, match="alpha"):
        TopoConfig.preset("stc", alpha=-1)
    with pytest.raises(ConfigError, match="alpha"):
        TopoConfig.preset("stc", alpha="big")
    with pytest.raises(ConfigError, match="blur"):
        TopoConfig.preset("stc", form="blur")
    with pytest.raises(ConfigError):
        TopoConfig.from_dict({"name": "nope"})


def test_select_areas_and_layouts():
    stack = ("V1", "V2", "V4", "IT")
    assert TopoConfig.preset("stc").select_areas(stack) == stack
    assert TopoConfig.preset("ws").select_areas(stack) == ("IT",)
    assert TopoConfig.preset("stc", areas=["it", "v1"]).select_areas(stack) == ("V1", "IT")
    assert TopoConfig.preset("none").select_areas(stack) == ()
    with pytest.raises(ConfigError, match="V4"):
        TopoConfig.preset("stc", areas=["MT"]).select_areas(stack)
    assert TopoConfig.preset("stc").sheet_layout((64, 8, 8)) == "retinotopic"
    assert TopoConfig.preset("as").sheet_layout((64, 8, 8)) == "tiled"
    assert TopoConfig.preset("as").sheet_layout((64, 1, 1)) == "grid"


# ----------------------------------------------------------------------------- per-area loss


def _area_terms(cfg, sheet, *, spikes=None, v=None, weights=None, generator=None):
    """One area's terms on the objective's per-area path (``{}`` when the loss is off)."""
    area = sheet.area
    objective = TopoObjective(cfg, {area: sheet}, (area,))
    terms = objective.terms(
        spikes={area: spikes},
        membrane={area: v},
        weights={area: weights},
        generator=generator,
        reference=True,
    )
    return terms.get(area, {})


def test_config_weights_are_checked_once_and_reach_the_terms():
    cfg = TopoConfig.preset("stc", alpha=2.0, beta=0.0, gamma=0.5)
    assert cfg.term_weights == TermWeights(2.0, 0.0, 0.5)
    assert cfg.term_weights.terms == {"rate": 2.0, "membrane": 0.5}
    with pytest.raises(ConfigError, match=r"topo.gamma must be a finite number in \[0, 1000000\]"):
        TopoConfig.preset("stc", gamma=-0.5)


@pytest.mark.parametrize("name", TOPO_PRESETS)
def test_area_terms_every_preset(name):
    cfg = TopoConfig.preset(name, num_clusters=3)
    layout = cfg.sheet_layout((8, 4, 4))
    sheet = build_sheet("V4", (8, 4, 4), 4.0, 1.5, layout=layout, seed=0)
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(4, 6, 8, 4, 4, generator=g) < 0.3).float().requires_grad_()
    v = torch.randn(4, 6, 8, 4, 4, generator=g, requires_grad=True)
    conv = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
    out = _area_terms(cfg, sheet, spikes=spikes, v=v, weights=conv, generator=g)
    if cfg.enabled:
        assert torch.isfinite(out["total"])
        out["total"].backward()
        grads = [t.grad for t in (spikes, v, conv) if t.grad is not None]
        assert grads and all(bool(torch.isfinite(gr).all()) for gr in grads)
        assert any(float(gr.abs().max()) > 0 for gr in grads)
    else:
        assert out == {}


def test_area_terms_on_clusters_match_sample_clusters():
    cfg = TopoConfig.preset("stc", num_clusters=4, cluster_positions=3)
    sheet = build_sheet("V1", (8, 6, 6), 6.0, 2.0, seed=1)
    spikes = (torch.rand(4, 5, 8 * 36, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    out = _area_terms(cfg, sheet, spikes=spikes, generator=torch.Generator().manual_seed(3))
    window = cfg.cluster_window_mm(sheet)
    assert window == 3.0  # 3 hypercolumns of 1 mm, above the 2 mm neighbourhood
    clusters = cluster_lists(
        *sample_cluster_index(
            sheet, 4, window_mm=window, generator=torch.Generator().manual_seed(3)
        )
    )
    want = stc_loss(spikes, sheet.positions, clusters, weights=cfg.term_weights)
    torch.testing.assert_close(out["total"], want["total"])


def test_area_terms_errors():
    sheet = build_sheet("V1", (8, 4, 4), 4.0, 1.5)
    with pytest.raises(ConfigError, match="units"):
        _area_terms(TopoConfig.preset("stc"), sheet, spikes=torch.zeros(4, 2, 100))
    with pytest.raises(ConfigError, match="weights="):
        _area_terms(TopoConfig.preset("ws"), sheet, spikes=torch.zeros(4, 2, 128))
    with pytest.raises(ConfigError, match="tiled"):
        _area_terms(TopoConfig.preset("as"), sheet, spikes=torch.zeros(4, 2, 128))
    with pytest.raises(ConfigError, match="v="):
        _area_terms(TopoConfig.preset("tdann"), sheet, spikes=torch.zeros(4, 2, 128))


# ----------------------------------------------------------------------------- the recipe


def _old_run_topo_section() -> dict:
    """The topo section of a run config written before the summed recipe (alpha = beta = 1)."""
    new_keys = ("area_weights", "area_reduction", "cluster_positions")
    old = TopoConfig.preset("stc", alpha=1.0, beta=1.0).to_dict()
    return {k: v for k, v in old.items() if k not in new_keys}


def _old_run_config() -> RunConfig:
    """A run's resolved config as tdsnn wrote it before the recipe, read back as saved."""
    data = RunConfig().to_dict()
    data["topo"] = _old_run_topo_section()
    data["sheet"]["layout"] = "auto"
    return RunConfig.from_saved(data)


def test_area_weights_parse_validate_and_round_trip():
    cfg = TopoConfig.preset("stc", area_weights="V1=1, v4=0.5")
    assert cfg.area_weights == (("V1", 1.0), ("v4", 0.5))
    assert TopoConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert cfg.area_weight_map(("V1", "V4", "IT")) == {"V1": 1.0, "V4": 0.5, "IT": 1.0}
    with pytest.raises(ConfigError, match=r"valid: \['V1', 'IT'\]"):
        cfg.area_weight_map(("V1", "IT"))
    for bad, match in [
        ("V1", "V1=1"),
        ("V1=-1", ">= 0"),
        ("V1=x", "number"),
        ("V1=1,v1=2", "twice"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TopoConfig.preset("stc", area_weights=bad)


def test_stc_is_the_recipe_and_old_run_configs_keep_the_mean():
    """The stc default sums the areas and spans 3 positions; a run config written before
    those keys existed reads as what it computed (mean, one neighbourhood width); the previous
    default stays available as configs/stc-mean.yaml."""
    default = RunConfig()
    assert (default.topo.area_reduction, default.topo.cluster_positions) == ("sum", 3)
    assert (default.topo.alpha, default.topo.beta) == (0.1, 0.1)
    assert default.sheet.layout == "auto"
    assert TopoConfig.preset("stc-dense").area_reduction == "sum"
    assert TopoConfig.preset("tdann").area_reduction == "mean"  # only stc's presets changed
    old = _old_run_config()
    assert (old.topo.area_reduction, old.topo.cluster_positions) == ("mean", 0)
    assert old.topo == TopoConfig.preset("stc", alpha=1.0, beta=1.0, area_reduction="mean",
                                         cluster_positions=0)  # fmt: skip
    # a user's config without the keys takes today's defaults
    assert TopoConfig.from_dict({"name": "stc"}).area_reduction == "sum"
    # keys that are present win over the saved-config defaults
    kept = RunConfig.from_saved(default.to_dict())
    assert kept == default
    previous = load_config(Path(__file__).parents[1] / "configs" / "stc-mean.yaml")
    assert previous.topo == old.topo and previous.sheet.layout == "random"


def test_a_run_dir_config_written_before_the_recipe_resumes_with_the_mean(tmp_path):
    from tdsnn.rundir import config_for_resume

    data = _old_run_config().to_dict()
    for key in ("area_reduction", "cluster_positions"):
        del data["topo"][key]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    resumed = config_for_resume({"run.out": str(tmp_path)})
    assert (resumed.topo.area_reduction, resumed.topo.cluster_positions) == ("mean", 0)


def test_objective_sums_weighted_area_totals():
    terms = {a: {"total": torch.tensor(v)} for a, v in (("V1", 0.2), ("V4", 0.4), ("IT", 0.6))}
    stack = ("V1", "V4", "IT")
    summed = TopoObjective(
        TopoConfig.preset("stc", area_weights="V4=0.5", area_reduction="sum"), {}, stack
    )
    torch.testing.assert_close(summed.loss(terms), torch.tensor(0.2 + 0.5 * 0.4 + 0.6))
    old = TopoObjective(_old_run_config().topo, {}, stack)
    torch.testing.assert_close(old.loss(terms), torch.tensor(0.4))  # the old mean
    # adding an area adds its term and leaves the others' weights alone
    two = {a: terms[a] for a in ("V1", "V4")}
    torch.testing.assert_close(summed.loss(terms) - summed.loss(two), terms["IT"]["total"])
    with pytest.raises(ConfigError, match="MT"):
        TopoObjective(TopoConfig.preset("stc", area_weights="MT=2"), {}, stack)


@pytest.mark.parametrize("area", ["V1", "V4", "IT"])
def test_clusters_span_several_positions(area):
    """With cluster_positions 3, a cluster holds units of >= 3x3 map positions of the default
    stack's sheets (the neighbourhood width alone holds about one V1 position)."""
    shapes = {"V1": (16, 24, 24), "V4": (64, 12, 12), "IT": (128, 6, 6)}
    sizes = {"V1": (36.75, 1.626), "V4": (22.4, 2.545), "IT": (70.0, 31.818)}
    c, h, w = shapes[area]
    sheet = build_sheet(area, shapes[area], *sizes[area], seed=0)
    cfg = TopoConfig.preset("stc", cluster_positions=3)
    window = cfg.cluster_window_mm(sheet)
    g = torch.Generator().manual_seed(0)
    for cluster in cluster_lists(
        *sample_cluster_index(sheet, 20, window_mm=window, max_units=200, generator=g)
    ):
        positions = {int(u) % (h * w) for u in cluster}  # unit = c·H·W + position
        assert len(positions) >= 9, len(positions)
    old = _old_run_config().topo.cluster_window_mm(sheet)
    assert old == pytest.approx(sizes[area][1]) and window >= 3 * sizes[area][0] / max(h, w)
