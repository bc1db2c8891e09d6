"""tdsnn.interop: STC on spikingjelly and snntorch networks through forward hooks."""

from __future__ import annotations

import io
import math

import pytest
import snntorch as snn
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from tdsnn.errors import CheckpointError, ConfigError
from tdsnn.interop import TopoRegularizer
from tdsnn.peers.detect import spiking_layers
from tdsnn.topo import TopoConfig

T, B = 4, 16


def sj_net(store_v_seq: bool = False) -> nn.Sequential:
    """Two conv + BN + LIF stages, multi-step: ``[T, B, 1, 12, 12] -> [T, B, 8, 6, 6]``."""
    torch.manual_seed(0)

    def lif():
        return neuron.LIFNode(tau=2.0, step_mode="m", store_v_seq=store_v_seq)

    return nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(8, step_mode="m"),
        lif(),
        layer.Conv2d(8, 8, 3, stride=2, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(8, step_mode="m"),
        lif(),
    )


def gratings(generator: torch.Generator, batch: int = B) -> torch.Tensor:
    """Noisy sine gratings, random orientation and phase, repeated over T: ``[T, B, 1, 12, 12]``."""
    theta = torch.rand(batch, 1, 1, generator=generator) * math.pi
    phase = torch.rand(batch, 1, 1, generator=generator) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    img = torch.sin(0.8 * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
    img = img + 0.3 * torch.randn(batch, 12, 12, generator=generator)
    return img[:, None].expand(T, -1, -1, -1, -1).contiguous()


class LeakyNet(nn.Module):
    """snntorch MLP, the user's loop over T: ``[T, B, 64] -> [T, B, 32]`` spikes."""

    def __init__(self, init_hidden: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.init_hidden = init_hidden
        self.fc1 = nn.Linear(64, 64)
        self.lif1 = snn.Leaky(beta=0.5, init_hidden=init_hidden)
        self.fc2 = nn.Linear(64, 32)
        self.lif2 = snn.Leaky(beta=0.5, init_hidden=init_hidden)
        self.mems: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.init_hidden:
            self.lif1.reset_mem()
            self.lif2.reset_mem()
            return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(xt)))) for xt in x])
        mem1, mem2 = self.lif1.reset_mem(), self.lif2.reset_mem()
        out, self.mems = [], []
        for xt in x:
            spk1, mem1 = self.lif1(self.fc1(xt), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            out.append(spk2)
            self.mems.append(mem1)
        return torch.stack(out)


def clustered_inputs(generator: torch.Generator, protos: torch.Tensor, steps: int = 6):
    """Noisy copies of 4 prototypes, repeated over ``steps``: ``[steps, 32, 64]``."""
    labels = torch.randint(len(protos), (32,), generator=generator)
    x = protos[labels] + 0.5 * torch.randn(32, protos.shape[1], generator=generator)
    return (1.5 * x).expand(steps, -1, -1)


def first_last(values: list[float], k: int = 3) -> tuple[float, float]:
    return sum(values[:k]) / k, sum(values[-k:]) / k


# ----------------------------------------------------------------------------- training


def test_spikingjelly_stc_loss_falls():
    net = sj_net()
    topo = TopoRegularizer(net, preset="stc", alpha=1.0, beta=1.0, seed=0)
    assert topo.layers == ("2", "5")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(15):
        net(gratings(gen))
        loss, terms = topo.loss(return_terms=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(net)
        history.append(loss.item())
        assert set(terms) == {
            f"{n}/{t}" for n in ("2", "5") for t in ("rate", "synchrony", "total")
        }
        assert not any(v.requires_grad for v in terms.values())
    first, last = first_last(history)
    assert last < first - 0.1, history
    topo.close()


def test_snntorch_stc_loss_falls():
    net = LeakyNet()
    topo = TopoRegularizer(net, preset="stc", alpha=1.0, beta=1.0, seed=0)
    assert topo.layers == ("lif1", "lif2")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    protos = torch.randn(4, 64, generator=gen)
    history = []
    for _ in range(15):
        net(clustered_inputs(gen, protos))
        loss = topo.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    first, last = first_last(history)
    assert last < first - 0.1, history
    assert topo.sheets["lif1"].shape == (64, 1, 1)
    assert topo.sheets["lif2"].shape == (32, 1, 1)
    topo.close()


# ----------------------------------------------------------------------------- capture


def test_spikingjelly_capture_shapes_membrane_and_gradient():
    net = sj_net(store_v_seq=True)
    x = gratings(torch.Generator().manual_seed(0))
    with TopoRegularizer(net, alpha=1.0, beta=1.0, gamma=1.0) as topo:
        net(x)
        rec = topo.captured()
        assert set(rec) == {"2", "5"}
        (s1, v1), (s2, v2) = rec["2"], rec["5"]
        assert s1.shape == v1.shape == (T, B, 8, 12, 12)
        assert s2.shape == v2.shape == (T, B, 8, 6, 6)
        assert v1 is net[2].v_seq and s1.requires_grad and v1.requires_grad
        assert set(s1.unique().tolist()) <= {0.0, 1.0}
        assert topo.sheets["2"].shape == (8, 12, 12) and topo.sheets["5"].shape == (8, 6, 6)
        assert topo.sheets["2"].layout == "retinotopic"
        loss, terms = topo.loss(return_terms=True)
        assert {"2/membrane", "5/membrane"} <= set(terms)
        assert torch.isfinite(loss)
        loss.backward()  # the topographic loss alone
        grad = net[0].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert topo.captured() == {}  # loss() cleared the record
    functional.reset_net(net)


def test_membrane_term_needs_recorded_membrane():
    net = sj_net(store_v_seq=False)
    with TopoRegularizer(net, alpha=1.0, beta=0.0, gamma=1.0) as topo:
        net(gratings(torch.Generator().manual_seed(0)))
        assert topo.captured()["2"][1] is None
        with pytest.raises(ConfigError, match="store_v_seq=True"):
            topo.loss()
        assert topo.captured() == {}  # cleared even on error


def test_spikingjelly_single_step_is_stacked():
    torch.manual_seed(0)
    lif = neuron.LIFNode(tau=2.0, step_mode="s", store_v_seq=True)
    net = nn.Sequential(nn.Linear(10, 20), lif)
    x = torch.randn(T, B, 10) * 3
    with TopoRegularizer(net) as topo:
        outs = [net(xt) for xt in x]
        spikes, v = topo.captured()["1"]
        assert spikes.shape == v.shape == (T, B, 20)
        assert torch.equal(spikes, torch.stack(outs))
        assert torch.equal(v[-1], lif.v)
        assert topo.sheets["1"].shape == (20, 1, 1)
        assert torch.isfinite(topo.loss())


def test_snntorch_membrane_is_the_returned_mem():
    net = LeakyNet()
    with TopoRegularizer(net, layers=["lif1"], alpha=1.0, beta=1.0, gamma=1.0) as topo:
        net(torch.randn(5, 8, 64))
        spikes, v = topo.captured()["lif1"]
        assert spikes.shape == v.shape == (5, 8, 64)
        assert torch.equal(v, torch.stack(net.mems))
        _, terms = topo.loss(return_terms=True)
        assert "lif1/membrane" in terms

    hidden = LeakyNet(init_hidden=True)  # returns spk only, keeps mem in a buffer
    with TopoRegularizer(hidden, alpha=1.0, beta=1.0, gamma=1.0) as topo:
        hidden(torch.randn(5, 8, 64))
        assert topo.captured()["lif1"][1] is None
        with pytest.raises(ConfigError, match="init_hidden=False"):
            topo.loss()


def test_eval_mode_is_not_recorded_unless_asked():
    net = LeakyNet().eval()
    x = torch.randn(3, 4, 64)
    with TopoRegularizer(net) as topo:
        net(x)
        with pytest.raises(ConfigError, match="nothing was recorded"):
            topo.loss()
    with TopoRegularizer(net, train_only=False) as topo:
        net(x)
        assert topo.captured()["lif2"][0].shape == (3, 4, 32)


def test_multistep_layer_run_twice_is_an_error():
    net = sj_net()
    x = gratings(torch.Generator().manual_seed(0), batch=4)
    with TopoRegularizer(net) as topo:
        net(x)
        functional.reset_net(net)
        net(x)
        with pytest.raises(ConfigError, match="ran 2 times"):
            topo.loss()
        net(x)
        topo.reset()
        assert topo.captured() == {}


def test_unexpected_shape_is_an_error():
    net = nn.Sequential(nn.Identity())
    with TopoRegularizer(net, layers=["0"]) as topo:
        with pytest.raises(ConfigError, match=r"\[T, B, N\] or \[T, B, C, H, W\]"):
            net(torch.zeros(4, 2, 3, 5))
        assert topo.captured() == {}


# ----------------------------------------------------------------------------- hooks, errors


def test_close_removes_hooks():
    net = sj_net()
    topo = TopoRegularizer(net)
    lifs = [net[2], net[5]]
    assert all(len(m._forward_hooks) == 1 for m in lifs)
    topo.close()
    assert topo.closed and all(len(m._forward_hooks) == 0 for m in lifs)
    net(gratings(torch.Generator().manual_seed(0), batch=4))
    assert topo.captured() == {}
    with pytest.raises(ConfigError, match="close"):
        topo.loss()
    with TopoRegularizer(net):
        assert all(len(m._forward_hooks) == 1 for m in lifs)
    assert all(len(m._forward_hooks) == 0 for m in lifs)


def test_missing_layer_lists_the_spiking_layers():
    net = LeakyNet()
    assert list(spiking_layers(net)) == ["lif1", "lif2"]
    with pytest.raises(ConfigError, match=r"\['lif3'\].*\['lif1', 'lif2'\]"):
        TopoRegularizer(net, layers=["lif1", "lif3"])
    with pytest.raises(ConfigError, match="no spiking layers"):
        TopoRegularizer(nn.Linear(3, 3))


def test_presets_and_options():
    net = LeakyNet()
    with pytest.raises(ConfigError, match="weights"):
        TopoRegularizer(net, preset="ws")
    with pytest.raises(ConfigError, match="not both"):
        TopoRegularizer(net, config=TopoConfig.preset("stc"), alpha=1.0)
    with pytest.raises(ConfigError, match="unknown topo config key"):
        TopoRegularizer(net, alph=1.0)
    with pytest.raises(ConfigError, match="sheet_mm"):
        TopoRegularizer(net, sheet_mm={"nope": 3.0})

    # `as` keeps the last layer only, on a lattice layout
    with TopoRegularizer(net, preset="as", sheet_mm={"lif2": 4.0}) as topo:
        assert topo.layers == ("lif2",)
        net(torch.randn(3, 8, 64))
        sheet = topo.sheets["lif2"]
        assert (sheet.layout, sheet.side_mm) == ("grid", 4.0)
        assert torch.isfinite(topo.loss())

    with TopoRegularizer(net, preset="none") as topo:
        assert topo.layers == ()
        net(torch.randn(3, 8, 64))
        assert topo.loss().item() == 0.0

    with TopoRegularizer(net, neighbourhood_mm={"lif1": 1.5}) as topo:
        net(torch.randn(3, 8, 64))
        assert topo.sheets["lif1"].neighbourhood_mm == 1.5
        assert topo.sheets["lif2"].neighbourhood_mm == 10.0  # 32 units: the whole sheet


# ----------------------------------------------------------------------------- checkpoint


def test_sheets_state_dict_round_trip():
    net = sj_net()
    x = gratings(torch.Generator().manual_seed(0), batch=8)
    a = TopoRegularizer(net, alpha=1.0, beta=1.0, seed=3)
    net(x)
    functional.reset_net(net)
    a.reset()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    b = TopoRegularizer(net, alpha=1.0, beta=1.0, seed=99)
    b.load_state_dict(state)
    for name in ("2", "5"):
        assert torch.equal(a.sheets[name].positions, b.sheets[name].positions)
    net(x)  # both record the same pass: same sheets, same cluster draws, same loss
    assert torch.equal(a.loss(), b.loss())
    functional.reset_net(net)
    a.close()
    b.close()

    # sheets are fixed: another input size no longer fits them
    with pytest.raises(ConfigError, match="sheets are fixed"):
        c = TopoRegularizer(net)
        c.load_state_dict(state)
        try:
            net(torch.zeros(T, 2, 1, 10, 10))
        finally:
            c.close()
            functional.reset_net(net)

    other = TopoRegularizer(LeakyNet())
    with pytest.raises(CheckpointError, match="does not record"):
        other.load_state_dict(state)
    other.close()
