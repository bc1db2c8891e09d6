"""NIR export of trained networks: the graph, its metadata and sheets, the file, the command's
errors, and round trips through snntorch's and spikingjelly's own NIR importers that compare
spikes at every LIF layer and step, and logits, with tdsnn's."""

import os
import sys

import numpy as np
import pytest
import torch

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import AreaStack
from tdsnn.cli import main
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError
from tdsnn.neurons import LIF
from tdsnn.rundir import load_run

nir = pytest.importorskip("nir")
from tdsnn.nir.format import DT_S, NIR_FORMAT, area_nodes, lif_nodes  # noqa: E402 (after the importorskip)
from tdsnn.nir.reader import from_nir, read_nir  # noqa: E402
from tdsnn.nir.writer import _Builder, nir_graph, write_nir  # noqa: E402
from tdsnn.peers.nir import PEERS, load_peer, peer_trace  # noqa: E402
from tdsnn.peers.roundtrip import RoundTrip, round_trip, tdsnn_trace  # noqa: E402

# float32: tdsnn applies batch norm after the convolution, the file holds it folded into the
# weights, so the two round differently (about 1e-7 relative) and a unit whose potential lies
# that close to threshold may fire in one and not the other. Stated tolerance: at least 99.9 %
# of spike values equal. In float64 the same networks must agree exactly.
SPIKE_TOLERANCE = 1e-3


def _randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from their defaults, so folding matters."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)


def _stack(overrides: dict, classes: int = 5):
    """An untrained stack (eval mode, batch norm randomised) and its sheets."""
    config = RunConfig().with_overrides(
        {"model.width": 0.0625, "model.v_threshold": 0.3, "data.image_size": 12, **overrides}
    )
    torch.manual_seed(0)
    model = AreaStack(config.model, classes)
    _randomise_batch_norm(model)
    return config, model.eval(), build_area_sheets(model, config)


@pytest.fixture(scope="module")
def v2_residual():
    """V1 -> V2 -> IT with two residual blocks per area: identity and 1x1-conv shortcuts."""
    return _stack({"model.area_stack": "v1-v2-it", "model.blocks": 2})


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _check(result: RoundTrip, exact: bool) -> None:
    assert result.layers, result.summary()
    if exact:
        assert result.spikes_equal, result.summary()
        assert result.same_predictions == result.images, result.summary()
    else:
        assert 1.0 - result.spike_agreement <= SPIKE_TOLERANCE, result.summary()
        assert result.same_predictions >= result.images - 1, result.summary()
    if result.spikes_equal:
        assert result.max_logit_diff <= 1e-5 * max(1.0, result.max_abs_logit), result.summary()


def _spiking_layers(model, images) -> dict[str, float]:
    trace = tdsnn_trace(model, images)
    return {name: float(s.mean()) for name, s in trace.spikes.items()}


# --------------------------------------------------------------------------- the graph


def test_graph_folds_batch_norm_and_maps_lif_parameters(v2_residual):
    config, model, sheets = v2_residual
    graph = nir_graph(model, sheets)
    nodes = graph.nodes
    assert isinstance(nodes["input"], nir.Input) and isinstance(nodes["output"], nir.Output)
    np.testing.assert_array_equal(nodes["input"].input_type["input"], [3, 12, 12])
    # Every conv + batch norm is one Conv2d computing what the eval-mode pair computes.
    x = torch.rand(2, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    block = model.areas["V1"].blocks[1]
    conv = nodes["areas.V1.blocks.1.conv1"]
    assert isinstance(conv, nir.Conv2d) and conv.metadata["tdsnn.batch_norm_folded"]
    folded = torch.nn.functional.conv2d(
        x, torch.from_numpy(conv.weight), torch.from_numpy(conv.bias), conv.stride, conv.padding
    )
    with torch.no_grad():
        want = block.conv1(x.unsqueeze(0))[0]
    torch.testing.assert_close(folded, want, rtol=1e-5, atol=1e-5)
    # Residual sums are two edges into the block's second LIF: conv2 and the shortcut.
    into = {dst: sorted(src for src, d in graph.edges if d == dst) for _, dst in graph.edges}
    assert into["areas.V1.blocks.1.lif2"] == ["areas.V1.blocks.0.lif2", "areas.V1.blocks.1.conv2"]
    assert into["areas.V2.blocks.0.lif2"] == [
        "areas.V2.blocks.0.conv2",
        "areas.V2.blocks.0.shortcut",
    ]
    assert into["areas.V2.blocks.0.shortcut"] == ["areas.V1.blocks.1.lif2"]
    assert into["readout"] == ["flatten"] and into["flatten"] == ["pool"]
    assert isinstance(nodes["pool"], nir.AvgPool2d) and isinstance(nodes["readout"], nir.Affine)
    # LIF: tau = tau_steps * dt, r = 1 (decay_input), v_leak = v_reset = 0, threshold.
    lifs = lif_nodes(graph)
    assert len(lifs) == 1 + 3 * 2 * 2
    lif = nodes["areas.V2.blocks.0.lif1"]
    c, h, w = sheets["V2"].shape
    assert lif.tau.shape == (c, h, w)
    assert (lif.tau == 2.0 * DT_S).all() and (lif.r == 1.0).all()
    assert (lif.v_leak == 0).all() and (lif.v_reset == 0).all() and (lif.v_threshold == 0.3).all()
    assert lif.metadata["tdsnn.tau_steps"] == 2.0 and lif.metadata["tdsnn.surrogate"] == "atan"
    # Each area's output units carry the sheet.
    assert area_nodes(graph) == {
        "V1": "areas.V1.blocks.1.lif2",
        "V2": "areas.V2.blocks.1.lif2",
        "IT": "areas.IT.blocks.1.lif2",
    }
    meta = nodes["areas.V2.blocks.1.lif2"].metadata
    np.testing.assert_array_equal(meta["tdsnn.positions_mm"], sheets["V2"].positions.numpy())
    np.testing.assert_array_equal(meta["tdsnn.unit_shape"], sheets["V2"].shape)
    assert meta["tdsnn.neighbourhood_mm"] == sheets["V2"].neighbourhood_mm == 3.977
    assert graph.metadata["tdsnn.areas"] == "V1,V2,IT"


def test_decay_input_false_maps_to_r_equal_tau():
    _, model, sheets = _stack({"model.decay_input": False, "model.tau": 4.0})
    lif = nir_graph(model, sheets, dt=1e-3).nodes["stem_lif"]
    assert (lif.tau == 4e-3).all() and (lif.r == 4.0).all()
    assert lif.metadata["tdsnn.decay_input"] is False


def test_what_nir_cannot_express_is_an_error_naming_the_layer():
    _, model, sheets = _stack({"model.v_reset": None})
    with pytest.raises(ConfigError, match=r"layer stem_lif \(soft reset"):
        nir_graph(model, sheets)
    _, model, sheets = _stack({"model.neuron": "relu", "topo.name": "none"})
    with pytest.raises(ConfigError, match=r"layer stem_lif \(ReLU units"):
        nir_graph(model, sheets)
    _, model, sheets = _stack({"model.surrogate": "sigmoid", "model.detach_reset": True})
    meta = nir_graph(model, sheets).nodes["stem_lif"].metadata  # training-only: no block
    assert meta["tdsnn.surrogate"] == "sigmoid" and meta["tdsnn.detach_reset"] is True


def test_file_reads_back_with_positions_per_area(v2_residual, tmp_path):
    _, model, sheets = v2_residual
    path = write_nir(nir_graph(model, sheets), tmp_path / "net.nir")
    graph, read_sheets = read_nir(path)
    assert list(read_sheets) == ["V1", "V2", "IT"]
    for area, sheet in sheets.items():
        got = read_sheets[area]
        assert torch.equal(got.positions, sheet.positions)
        assert (got.shape, got.side_mm, got.neighbourhood_mm, got.layout, got.optimized) == (
            sheet.shape,
            sheet.side_mm,
            sheet.neighbourhood_mm,
            sheet.layout,
            sheet.optimized,
        )
    assert graph.metadata["tdsnn.format"] == NIR_FORMAT  # str, not bytes
    assert graph.nodes["stem_lif"].metadata["tdsnn.fire"] == "H >= v_threshold"
    assert not list(tmp_path.glob(".*partial*"))


# --------------------------------------------------------------------------- round trips


def _lif_graph(shape, tau: float, decay_input: bool):
    lif = LIF(tau=tau, v_threshold=1.0, decay_input=decay_input)
    builder = _Builder(nir, np.dtype(np.float32), DT_S)
    builder.add("input", nir.Input(input_type=np.array(shape)), [], shape)
    builder.lif("lif", lif, ["input"])
    builder.add("output", nir.Output(output_type=np.array(shape)), ["lif"], shape)
    return lif, nir.NIRGraph(nodes=builder.nodes, edges=builder.edges)


@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_dynamics_are_bit_exact_in_snntorch(decay_input):
    pytest.importorskip("snntorch")
    lif, graph = _lif_graph((50,), 2.0, decay_input)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, 50, generator=g) * 0.8 + 0.6  # [T, B, N]
    net = load_peer(graph, "snntorch")
    got = peer_trace(net, graph, x).spikes["lif"]
    want = lif(x)
    assert 0.05 < float(want.mean()) < 0.95
    assert torch.equal(got, want), f"first differing step {(got != want).nonzero()[0, 0]}"


def test_threshold_ties_differ_as_documented():
    """tdsnn fires on H >= V_th, NIR (and snntorch) on v > v_threshold: an input of exactly
    tau * V_th reaches the threshold at the first step and only tdsnn fires there."""
    pytest.importorskip("snntorch")
    lif, graph = _lif_graph((1,), 2.0, True)
    x = torch.full((1, 1, 1), 2.0)
    got = peer_trace(load_peer(graph, "snntorch"), graph, x).spikes["lif"]
    assert lif(x).item() == 1.0 and got.item() == 0.0


@pytest.mark.parametrize("simulator", PEERS)
def test_v2_residual_stack_round_trips(v2_residual, images, simulator):
    pytest.importorskip(simulator)
    _, model, sheets = v2_residual
    rates = _spiking_layers(model, images)
    assert all(rate > 0 for rate in rates.values()), rates  # every layer spikes: a real test
    graph = nir_graph(model, sheets)
    result = round_trip(model, graph, images, simulator, batch_size=4)
    assert [layer.layer for layer in result.layers] == list(rates)
    _check(result, exact=False)


def test_float64_export_is_exact_in_spikingjelly(v2_residual, images):
    """With weights and arithmetic in float64 the folding's rounding is far below any margin
    to threshold: every spike at every layer and step equals tdsnn's."""
    pytest.importorskip("spikingjelly")
    _, model, sheets = v2_residual
    model64 = AreaStack(model.config, 5).eval()
    model64.load_state_dict(model.state_dict())
    model64 = model64.double()
    graph = nir_graph(model64, sheets, dtype=np.float64)
    result = round_trip(model64, graph, images, "spikingjelly", dtype=torch.float64)
    _check(result, exact=True)
    assert result.max_logit_diff <= 1e-12


def test_fc_readout_round_trips():
    pytest.importorskip("spikingjelly")
    _, model, sheets = _stack(
        {"model.area_stack": "v1-it", "model.readout": "fc", "model.readout_units": 16}
    )
    graph = nir_graph(model, sheets)
    assert area_nodes(graph)["readout"] == "areas.readout.units"
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    _check(round_trip(model, graph, x, "spikingjelly"), exact=False)


def test_rate_coded_inputs_are_the_models_draws():
    pytest.importorskip("snntorch")
    _, model, sheets = _stack({"model.area_stack": "v1-it", "model.encoding": "rate"})
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    trace = tdsnn_trace(model, x, seed=5)
    assert set(trace.inputs.unique().tolist()) <= {0.0, 1.0}
    graph = nir_graph(model, sheets)
    assert graph.metadata["tdsnn.encoding"] == "rate"
    _check(round_trip(model, graph, x, "snntorch", seed=5), exact=False)


# --------------------------------------------------------------------------- the command


def test_default_run_exports_and_verifies(spiking_run, tmp_path, capsys):
    for simulator in PEERS:
        pytest.importorskip(simulator)
    out = tmp_path / "net.nir"
    argv = ["export", str(spiking_run), "--format", "nir", "--out", str(out), "--verify", "32"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"wrote {out}") and "MB" in lines[0]
    assert lines[1].startswith("snntorch: 32 images x 4 steps")
    assert lines[2].startswith("spikingjelly: 32 images x 4 steps")
    graph, sheets = read_nir(out)
    trained = load_run(spiking_run)
    assert list(sheets) == list(trained.sheets) == ["V1", "V4", "IT"]
    for area in sheets:
        assert torch.equal(sheets[area].positions, trained.sheets[area].positions)
    images = torch.stack([torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(k))
                          for k in range(8)])  # fmt: skip
    for simulator in PEERS:
        _check(round_trip(trained.model, graph, images, simulator), exact=False)
    assert main(["export", str(spiking_run), "--format", "nir", "--out", str(out),
                 "--checkpoint", "last", "--overwrite"]) == 0  # fmt: skip


def test_bad_network_exports_are_one_line_errors_and_write_nothing(
    spiking_run, relu_fc_run, tmp_path, capsys, monkeypatch
):
    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep), err

    keep = ["empty", "old.nir", "rec.h5", "file"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "old.nir").write_bytes(b"old")
    (tmp_path / "rec.h5").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"")
    out = str(tmp_path / "net.nir")
    run = str(spiking_run)
    fails(["export", str(tmp_path / "empty"), "--format", "nir", "--out", out], "best.pt")
    fails(["export", str(tmp_path / "nowhere"), "--format", "nir", "--out", out], "does not exist")
    fails(["export", run, "--format", "nir", "--out", str(tmp_path / "old.nir")], "--overwrite")
    assert (tmp_path / "old.nir").read_bytes() == b"old"
    fails(["export", run, "--format", "nir", "--out", str(tmp_path / "file" / "n.nir")],
          "does not exist")  # fmt: skip
    fails(["export", str(relu_fc_run["ws"]), "--format", "nir", "--out", out],
          "layer stem_lif (ReLU units: NIR has no ReLU node)")  # fmt: skip
    fails(["export", run, "--format", "nwb", "--out", out], "--format nir")
    fails(["export", str(tmp_path / "rec.h5"), "--format", "nir", "--out", out], "run directory")
    fails(["export", str(tmp_path / "rec.h5"), "--format", "nwb", "--out", out, "--checkpoint",
           "last"], "--checkpoint applies")  # fmt: skip

    def broken_write(path, graph, **kwargs):  # the disk fills up half way
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nir, "write", broken_write)
    fails(["export", run, "--format", "nir", "--out", out], "No space left on device")
    monkeypatch.undo()
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        keep.append("locked")
        try:
            fails(["export", run, "--format", "nir", "--out", str(locked / "n.nir")],
                  "not writable")  # fmt: skip
        finally:
            locked.chmod(0o700)
    monkeypatch.setitem(sys.modules, "nir", None)
    fails(["export", run, "--format", "nir", "--out", out], "pip install 'tdsnn[nir]'")


# --------------------------------------------------------------------------- import


def _snntorch_conv_net():
    """conv -> Leaky -> conv -> Leaky -> flatten -> linear -> Leaky, hard reset to 0 without
    delay (the neuron NIR's LIF describes). snntorch 1.0's exporter needs per-neuron beta and
    threshold on conv layers: with scalars its LIF nodes have shape () and nir's type check
    refuses the conv -> LIF edge."""
    snn = pytest.importorskip("snntorch")

    def leaky(shape, **kwargs):
        return snn.Leaky(beta=torch.full(shape, 0.5), threshold=torch.full(shape, 0.4),
                         reset_mechanism="zero", reset_delay=False, init_hidden=True,
                         **kwargs)  # fmt: skip

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), leaky((4, 8, 8)),
        torch.nn.Conv2d(4, 4, 3, padding=1, stride=2), leaky((4, 4, 4)),
        torch.nn.Flatten(), torch.nn.Linear(64, 3), leaky((3,), output=True),
    )  # fmt: skip


def test_snntorch_graph_imports_and_spikes_as_in_snntorch():
    pytest.importorskip("nirtorch")
    from snntorch.export_nir import export_to_nir

    net = _snntorch_conv_net()
    x = torch.rand(6, 5, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.5  # [T, B, ...]
    with torch.no_grad():
        graph = export_to_nir(net, x[0, :1], ignore_dims=[0])
        module = from_nir(graph)
        lifs = [m for m in module.modules() if isinstance(m, LIF)]
        assert [(m.params.tau, m.params.decay_input) for m in lifs] == [(2.0, False)] * 3
        assert all(m.params.v_threshold == pytest.approx(0.4) for m in lifs)
        recorded = {}
        hooks = [m.register_forward_hook(lambda _m, _a, out, i=i: recorded.__setitem__(i, out))
                 for i, m in enumerate(lifs)]  # fmt: skip
        out = module(x)
        for h in hooks:
            h.remove()
        snn_layers = [m for m in net if hasattr(m, "reset_mem")]
        for m in snn_layers:
            m.reset_mem()
        want = {i: [] for i in range(3)}
        hooks = [m.register_forward_hook(lambda _m, _a, o, i=i: want[i].append(o[0] if
                 isinstance(o, tuple) else o)) for i, m in enumerate(snn_layers)]  # fmt: skip
        for t in range(x.shape[0]):
            net(x[t])
        for h in hooks:
            h.remove()
    assert out.shape == (6, 5, 3)
    for i in range(3):
        got, ref = recorded[i], torch.stack(want[i]).reshape(recorded[i].shape)
        assert 0 < float(ref.mean()) < 1
        assert torch.equal(got, ref), (
            f"LIF layer {i}: first differing step {(got != ref).nonzero()[0, 0]}"
        )


def test_imported_tdsnn_file_trains_with_its_sheets(v2_residual, images, tmp_path):
    _, model, sheets = v2_residual
    path = write_nir(nir_graph(model, sheets), tmp_path / "net.nir")
    module = from_nir(path)
    assert sorted(module.sheets) == sorted(
        f"layers.areas_{a}_blocks_1_lif2" for a in ("V1", "V2", "IT")
    )
    reference = tdsnn_trace(model, images)
    logits = module(reference.inputs).mean(0)
    torch.testing.assert_close(logits, reference.logits, rtol=1e-4, atol=1e-5)
    topo = module.regularizer("stc", alpha=1.0, beta=1.0)
    key = "layers.areas_V2_blocks_1_lif2"
    assert torch.equal(topo.sheets[key].positions, sheets["V2"].positions)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    loss = module(reference.inputs).mean(0).square().mean() + topo.loss()
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    topo.close()


def test_import_refuses_what_tdsnn_cannot_run():
    shape = np.array([3])
    lif = nir.LIF(tau=np.full(3, 2e-4), r=np.full(3, 5.0), v_leak=np.zeros(3),
                  v_threshold=np.ones(3))  # fmt: skip
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(shape), "lif": lif, "output": nir.Output(shape)},
        edges=[("input", "lif"), ("lif", "output")],
    )
    with pytest.raises(ConfigError, match="node lif: r = 5.0 is neither 1 nor tau/dt"):
        from_nir(graph)
    cuba = nir.CubaLIF(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 2e-4), r=np.full(3, 2.0),
                       v_leak=np.zeros(3), v_threshold=np.ones(3))  # fmt: skip
    graph.nodes["lif"] = cuba
    with pytest.raises(ConfigError, match="node lif is a CubaLIF"):
        from_nir(graph)
