import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdsnn.config import RunConfig

# The suite's models are tiny: one thread each is faster than contending for two cores, for
# this process and for the tdsnn processes the tests start.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


def default_signals() -> None:
    """A ``preexec_fn`` for a child that a test stops with SIGINT or SIGTERM: both at their
    default disposition, whatever this process inherited (a shell running ``nohup ... &``
    without job control starts it with SIGINT ignored)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def sigint_ignored() -> None:
    """A ``preexec_fn`` that starts the child with SIGINT ignored, as ``nohup ... &`` does."""
    default_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A two-process CPU run under torchrun (gloo): 128 images / (2 ranks x 8) = 8 steps an epoch.
TORCHRUN_TRAIN = [
    "train", "--area-stack", "v1-it", "--width", "0.0625", "--blocks", "1",
    "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--train-size", "128",
    "--test-size", "32", "--device", "cpu", "--quiet", "--log-every", "1",
]  # fmt: skip
CHILD_ENV = {
    **{k: v for k, v in os.environ.items() if k != "TDSNN_DEBUG"},
    "OMP_NUM_THREADS": "1",
}
"""The environment of the ``tdsnn`` processes tests start: one thread, no debug tracebacks."""


def assert_same_model(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold bit-identical weights."""
    from tdsnn.rundir import Checkpoint

    wa, wb = Checkpoint.load(a).model, Checkpoint.load(b).model
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, port: int | None = None, nproc: int = 2) -> list[str]:
    """``tdsnn`` with ``args`` under ``torchrun`` on ``nproc`` CPU processes."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(port or free_port()), "-m", "tdsnn", *args,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def torchrun_reference(tmp_path_factory) -> Path:
    """:data:`TORCHRUN_TRAIN` run once per session, uninterrupted: the run directory that the
    interrupted and resumed torchrun runs must end identical to."""
    out = tmp_path_factory.mktemp("ddp") / "reference"
    result = subprocess.run(
        torchrun(*TORCHRUN_TRAIN, "--out", str(out)),
        capture_output=True, text=True, env=CHILD_ENV, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def kernels():
    """The compiled ops library, built (or loaded from the cache) once per test session.

    Skips where it cannot be built (no CUDA build of torch or no nvcc); CI sets
    TDSNN_REQUIRE_KERNELS=1, which turns that skip into a failure.
    """
    from tdsnn import ops

    try:
        return ops.load_kernels()
    except ops.KernelBuildError as exc:
        if os.environ.get("TDSNN_REQUIRE_KERNELS"):
            pytest.fail(f"the kernels must build here: {exc}")
        pytest.skip(f"kernels not buildable on this machine: {exc}")


@pytest.fixture(scope="session")
def cpu_kernels():
    """The compiled CPU ops library (no CUDA toolkit needed), built or loaded once per session.

    Skips where it cannot be built (no C++ compiler); CI sets TDSNN_REQUIRE_KERNELS=1.
    """
    from tdsnn import ops

    try:
        return ops.load_kernels(cuda=False)
    except ops.KernelBuildError as exc:
        if os.environ.get("TDSNN_REQUIRE_KERNELS"):
            pytest.fail(f"the CPU kernels must build here: {exc}")
        pytest.skip(f"CPU kernels not buildable on this machine: {exc}")


@pytest.fixture
def fresh_cache(tmp_path: Path) -> Path:
    """A new ``TDSNN_CACHE`` folder (nothing cached in it) holding only the CPU kernel library
    of this session's cache where that one is built, so that a tdsnn process pointed at it does
    not spend half a minute compiling the CPU kernels again."""
    from tdsnn.ops.build import library_path

    cache = tmp_path / "cache"
    built = library_path(cuda=False).parent  # <cache>/kernels/<key>
    if built.is_dir():
        shutil.copytree(built, cache / "kernels" / built.name)
    else:
        cache.mkdir()
    return cache


@pytest.fixture
def tiny_config(tmp_path) -> RunConfig:
    """A run small enough to train in a couple of seconds on one CPU core."""
    return RunConfig().with_overrides(
        {
            "model.area_stack": "v1-v4-it",
            "model.width": 0.0625,
            "model.blocks": 1,
            "data.image_size": 16,
            "optim.epochs": 2,
            "optim.batch_size": 16,
            "data.train_size": 96,
            "data.test_size": 64,
            "run.out": str(tmp_path / "run"),
            "run.quiet": True,
            "run.log_every": 2,
        }
    )


@pytest.fixture(scope="session")
def spiking_run(tmp_path_factory):
    """A tiny run trained once per session, whose areas spike readily (threshold 0.3) and
    which classifies some images: for recording, analysis and evaluation tests."""
    from tdsnn.train import train

    out = tmp_path_factory.mktemp("spiking") / "run"
    config = RunConfig().with_overrides(
        {
            "model.area_stack": "v1-v4-it",
            "model.width": 0.0625,
            "model.blocks": 1,
            "model.v_threshold": 0.3,
            "data.image_size": 16,
            "optim.epochs": 3,
            "optim.batch_size": 16,
            "data.train_size": 192,
            "data.test_size": 64,
            "run.out": str(out),
            "run.quiet": True,
        }
    )
    train(config)
    return out


@pytest.fixture(scope="session")
def relu_fc_run(tmp_path_factory):
    """Two tiny ReLU runs with Truong & Hasson's fc readout (121 units, 8 neighbours): ``ws``
    (WS on the readout) and ``none`` (no loss): ``{"ws": run dir, "none": run dir}``."""
    from tdsnn.train import train

    root = tmp_path_factory.mktemp("relu-fc")
    runs = {}
    for topo in ("ws", "none"):
        config = RunConfig().with_overrides(
            {
                "model.area_stack": "v1-it",
                "model.width": 0.0625,
                "model.neuron": "relu",
                "model.readout": "fc",
                "topo.name": topo,
                "topo.connectivity": 8,
                "data.image_size": 16,
                "optim.epochs": 1,
                "optim.batch_size": 16,
                "data.train_size": 96,
                "data.test_size": 64,
                "run.out": str(root / topo),
                "run.quiet": True,
            }
        )
        train(config)
        runs[topo] = root / topo
    return runs
