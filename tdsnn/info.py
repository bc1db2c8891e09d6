"""Environment report for ``tdsnn info``: versions, devices and which op implementations run."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import torch

import tdsnn
from tdsnn import ops
from tdsnn.ops import build
from tdsnn.ops.build import KernelBuildError


def collect_info() -> dict[str, str]:
    """Versions of Python, torch, CUDA and tdsnn, the devices seen, and what each op runs."""
    info = {
        "tdsnn": tdsnn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch CUDA build": torch.version.cuda or "none (CPU-only build)",
        "CUDA available": str(torch.cuda.is_available()),
        "CPU threads": str(torch.get_num_threads()),
        "nvcc": shutil.which("nvcc") or "not found",
        "distributed backends": ", ".join(
            name
            for name, ok in (
                ("gloo", torch.distributed.is_gloo_available()),
                ("nccl", torch.distributed.is_nccl_available()),
            )
            if ok
        )
        or "none",
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info[f"cuda:{i}"] = (
                f"{props.name}, {props.total_memory / 2**30:.1f} GiB, "
                f"compute capability {props.major}.{props.minor}"
            )
    info["kernel policy"] = f"TDSNN_KERNELS={ops.kernel_policy()}"
    info["kernel cache"] = kernel_cache_status()
    for name, device in _op_devices():
        info[f"{name} on {device}"] = op_implementation(name, device)
    return info


# The public functions behind each compiled op, and the op each one dispatches to.
OPS = {
    "lif_multistep": "tdsnn.neurons.lif_multistep -> torch.ops.tdsnn.lif_forward/lif_backward",
    "pair_similarity": "tdsnn.topo.similarity.pair_dot -> torch.ops.tdsnn.pair_similarity"
    " (pair lists), pair_similarity_tiled (PairTiles)",
    "pair_moments": "tdsnn.ops.pairs.pair_moments -> torch.ops.tdsnn.pair_moments"
    "/pair_moments_backward",
    "pair_ccg": "tdsnn.topo.similarity.ccg_pairs -> torch.ops.tdsnn.pair_ccg",
    "bn_lif": "tdsnn.ops.bn_lif.bn_lif -> torch.ops.tdsnn.bn_lif_forward/bn_lif_backward",
    "swap_window": "tdsnn.ops.swap.swap_window -> torch.ops.tdsnn.swap_window",
}
CPU_ONLY = frozenset({"swap_window"})  # run on the CPU whatever the training device


def _op_devices() -> list[tuple[str, str]]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [
        (name, device)
        for name in OPS
        for device in devices
        if device == "cpu" or name not in CPU_ONLY
    ]


# The op names of ``tdsnn.ops.CPU_KERNELS`` behind each public function.
_OP_NAMES = {
    "lif_multistep": "lif",
    "pair_similarity": "pair_similarity",
    "pair_moments": "pair_moments",
    "pair_ccg": "pair_ccg",
    "bn_lif": "bn_lif",
    "swap_window": "swap_window",
}


def op_implementation(name: str, device: str) -> str:
    """What op ``name`` runs for tensors on ``device`` under the current policy, and why."""
    via = OPS[name]
    cuda = device != "cpu"
    if not cuda and _OP_NAMES[name] not in ops.CPU_KERNELS:
        return f"PyTorch reference ({via.split(' -> ')[0]})"
    policy = ops.kernel_policy()
    if policy == "reference":
        return "PyTorch reference (TDSNN_KERNELS=reference)"
    kind = "CUDA kernel" if cuda else "CPU kernel"
    if ops.loaded(cuda=cuda):
        return f"{kind} ({via.split(' -> ')[1]})"
    cached = cached_library(cuda)
    if cached is not None:
        return f"{kind}, loaded on first use from {cached}"
    return f"{kind}, built on first use (`tdsnn info --build-kernels` builds it now)"


def cached_library(cuda: bool = True) -> Path | None:
    """The built library (CUDA, or the CPU one) for the current sources and torch, if cached."""
    try:
        library = build.library_path(cuda)
    except KernelBuildError:
        return None
    return library if library.exists() else None


def kernel_cache_status() -> str:
    """Where the built libraries are cached, and whether the current sources are built there."""
    parts = []
    for cuda, kind in ((False, "CPU"), (True, "CUDA")):
        cached = cached_library(cuda)
        parts.append(f"{kind} built: {cached}" if cached else f"{kind} not built")
    return "; ".join(parts) + f" (cache folder {build.cache_dir() / 'kernels'})"
