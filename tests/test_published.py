"""Truong & Hasson's networks (``--arch wsas-mnist|wsas-cifar``): built as areas, the published
state dicts imported (``tdsnn import``) with identical logits, AS before the nonlinearity, and
a small run trained, recorded, analysed and evaluated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdsnn.area_sheets import build_area_sheets
from tdsnn.areas import PaperNet, build_model
from tdsnn.cli import main
from tdsnn.config import RunConfig
from tdsnn.errors import CheckpointError
from tdsnn.model_config import ModelConfig, layer_names
from tdsnn.published import import_state_dict
from tdsnn.receptive import receptive_fields_px
from tdsnn.rundir import load_run
from tdsnn.topo import TopoConfig
from tdsnn.topo.objective import TopoObjective

# --------------------------------------------------------------- the published layer lists
# Written out here, independently of tdsnn, from the layer lists of Truong & Hasson's arch.py.


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64, 121)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(121, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        pre = self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.fc2(self.dropout(F.relu(pre))), pre


class CifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        widths = [3, 32, 64, 128, 256]
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(widths[i - 1], widths[i], 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.fc1 = nn.Linear(256, 121)
        self.fc2 = nn.Linear(121, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        for i in range(1, 5):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i < 4:
                x = F.max_pool2d(x, 2)
        pre = self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.fc2(self.dropout(F.relu(pre))), pre


def _perturbed(net: nn.Module) -> nn.Module:
    """``net`` with random batch-norm statistics (eval mode), so that they matter."""
    torch.manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return net.eval()


def _import(tmp_path, net, arch, size, dataset):
    path = tmp_path / "published.pth"
    torch.save(net.state_dict(), path)
    config = RunConfig().with_overrides(
        {
            "model.arch": arch,
            "model.neuron": "relu",
            "topo.name": "none",
            "data.dataset": dataset,
            "data.image_size": size,
        }
    )
    return import_state_dict(path, config, tmp_path / "run")


@pytest.mark.parametrize(
    ("arch", "net", "channels", "size"),
    [("wsas-mnist", MnistNet, 1, 28), ("wsas-cifar", CifarNet, 3, 32)],
)
def test_imported_state_dict_gives_identical_logits(tmp_path, arch, net, channels, size):
    torch.manual_seed(0)
    published = _perturbed(net())
    run_dir = _import(tmp_path, published, arch, size, "shapes")
    trained = load_run(run_dir)
    images = torch.rand(6, channels, size, size)
    mean, std = trained.config.data.normalize or (0.0, 1.0)  # MNIST's for wsas-mnist
    assert (arch == "wsas-mnist") == (trained.config.data.normalize == (0.1307, 0.3081))
    with torch.no_grad():
        logits, pre = published((images - mean) / std)
        out = trained.model(images, record_membrane=["fc1"])
    assert torch.equal(out.logits, logits)
    assert torch.equal(out.membrane["fc1"].reshape(6, 121), pre)  # AS's input: fc1 before ReLU
    assert trained.model.area_names == layer_names(trained.config.model)
    assert set(trained.sheets) == set(trained.model.area_names)


def test_import_command_writes_a_run_that_evaluate_reads(tmp_path, capsys):
    torch.save(_perturbed(CifarNet()).state_dict(), tmp_path / "cifar.pth")
    out = tmp_path / "run"
    code = main(["import", str(tmp_path / "cifar.pth"), "--arch", "wsas-cifar", "--dataset",
                 "shapes", "--image-size", "16", "--out", str(out)])  # fmt: skip
    assert code == 0 and "run directory" in capsys.readouterr().out
    trained = load_run(out)
    assert trained.config.model.arch == "wsas-cifar" and trained.config.topo.name == "none"
    ev = ["evaluate", str(out), "--tests", "weight-noise", "--layers", "fc1", "--repeats", "1"]
    assert main([*ev, "--test-size", "16", "--out", str(tmp_path / "ev")]) == 0


def test_import_names_missing_extra_and_misshaped_keys(tmp_path):
    state = MnistNet().state_dict()
    state.pop("conv2.bias")
    state["conv3.weight"] = torch.zeros(1)
    state["fc1.weight"] = torch.zeros(100, 64)
    torch.save(state, tmp_path / "bad.pth")
    config = RunConfig().with_overrides(
        {"model.arch": "wsas-mnist", "model.neuron": "relu", "topo.name": "none"}
    )
    with pytest.raises(CheckpointError) as err:
        import_state_dict(tmp_path / "bad.pth", config, tmp_path / "run")
    text = str(err.value)
    assert "\n" not in text
    assert "missing: conv2.bias" in text and "unexpected: conv3.weight" in text
    assert "fc1.weight (100, 64) (expected (121, 64))" in text


def test_import_refuses_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not a torch file")
    for name in ("list.pth", "text.pth"):
        code = main(["import", str(tmp_path / name), "--arch", "wsas-mnist", "--dataset",
                     "shapes", "--out", str(tmp_path / "run")])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1, err
    assert "not a state dict" in err or "corrupt or not a tdsnn file" in err


def test_arch_with_stack_options_is_one_line(capsys):
    for flag, value in (("--area-stack", "v1-it"), ("--blocks", "2")):
        code = main(["train", "--arch", "wsas-mnist", flag, value, "--epochs", "1"])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and flag in err, err


def test_grey_images_on_three_channels_reach_wsas_mnist_as_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="wsas-mnist", neuron="relu"), 10, 3).eval()
    grey = torch.rand(2, 1, 28, 28)
    assert model.in_channels == 1
    with torch.no_grad():
        torch.testing.assert_close(model(grey.expand(-1, 3, -1, -1)).logits, model(grey).logits)


def test_published_network_trains_without_a_loss_by_default(monkeypatch):
    import tdsnn.commands.train as command

    seen = {}
    monkeypatch.setattr(
        command, "train_config", lambda config, resume: seen.setdefault("c", config)
    )
    with pytest.raises(TypeError):  # the fake summary cannot be printed; the config was built
        main(["train", "--arch", "wsas-mnist", "--neuron", "relu", "--epochs", "1"])
    assert seen["c"].topo.name == "none" and seen["c"].data.normalize == (0.1307, 0.3081)


def test_lif_version_averages_the_logits_over_steps():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="wsas-mnist", timesteps=3), 10, 1).eval()
    assert isinstance(model, PaperNet)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out = model(images, record=True)
        spikes = out.spikes["fc1"]  # [T, B, 121, 1, 1]
        per_step = model.readout(spikes.flatten(2))  # logits of every step [T, B, 10]
    assert spikes.shape == (3, 4, 121, 1, 1) and set(spikes.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.logits, per_step.mean(0))


def test_receptive_fields_count_the_pools():
    # conv1: 3; conv2: a 2 x 2 pool (jump 2) and a 3 x 3 conv: 1 + 2 + 1 + 2·2 = 8
    fields = receptive_fields_px(ModelConfig(arch="wsas-mnist"))
    assert fields == {"conv1": 3.0, "conv2": 8.0, "fc1": float("inf")}
    assert receptive_fields_px(build_model(ModelConfig(arch="wsas-cifar"), 10)) == {
        "conv1": 3.0, "conv2": 8.0, "conv3": 18.0, "conv4": 38.0, "fc1": float("inf"),
    }  # fmt: skip


def _as_objective(as_input: str):
    config = RunConfig().with_overrides(
        {"model.arch": "wsas-mnist", "model.neuron": "relu", "topo.name": "as",
         "topo.areas": ["fc1"], "topo.connectivity": 8, "topo.as_input": as_input}
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config.model, 10, 1)
    sheets = build_area_sheets(model, config)
    return model, TopoObjective(config.objective_topo(), sheets, model.area_names)


def test_as_reads_fc1_before_or_after_its_nonlinearity():
    model, pre = _as_objective("pre")
    _, post = _as_objective("post")
    assert pre.needs_membrane and pre.recording()["record_membrane"] == ("fc1",)
    assert not post.needs_membrane
    out = model(torch.rand(16, 1, 28, 28), **pre.recording())
    v, s = out.membrane["fc1"], out.spikes["fc1"]
    assert (v < 0).any()  # the ReLU changes what AS sees
    read_pre = pre.terms(spikes={"fc1": s}, membrane={"fc1": v})["fc1"]["total"]
    assert torch.equal(read_pre, post.terms(spikes={"fc1": v})["fc1"]["total"])
    assert not torch.equal(read_pre, post.terms(spikes={"fc1": s})["fc1"]["total"])


def test_as_input_defaults_to_the_architecture():
    paper = RunConfig().with_overrides(
        {"model.arch": "wsas-mnist", "model.neuron": "relu", "topo.name": "as"}
    )
    assert paper.topo.as_input is None and paper.objective_topo().as_input == "pre"
    assert RunConfig().objective_topo().as_input == "post"
    assert TopoConfig.preset("as").as_input is None  # resolved by the run config


@pytest.mark.slow
def test_a_small_run_trains_records_analyses_and_evaluates(tmp_path):
    from tdsnn.train import train

    out = tmp_path / "run"
    config = RunConfig().with_overrides(
        {"model.arch": "wsas-mnist", "model.neuron": "relu", "model.readout_units": 16,
         "topo.name": "as", "topo.areas": ["fc1"], "topo.connectivity": 8, "topo.warmup": 0,
         "data.image_size": 16, "data.train_size": 96, "data.test_size": 64,
         "optim.epochs": 1, "optim.batch_size": 16, "run.out": str(out), "run.quiet": True}
    )  # fmt: skip
    summary = train(config)
    assert 0.0 <= summary["test_acc"] <= 1.0
    assert main(["record", str(out), "--stimuli", "gratings", "--out", str(tmp_path / "g.h5"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["analyze", str(tmp_path / "g.h5"), "--out", str(tmp_path / "maps"),
                 "--nulls", "2"]) == 0  # fmt: skip
    ev = ["evaluate", str(out), "--tests", "weight-noise", "--layers", "fc1", "--repeats", "1"]
    assert main([*ev, "--test-size", "32", "--out", str(tmp_path / "ev")]) == 0
