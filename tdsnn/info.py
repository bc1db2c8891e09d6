"""Environment report for ``tdsnn info``: versions, devices and which op implementations run."""

from __future__ import annotations

import platform
import shutil

import torch

import tdsnn
from tdsnn import neurons


def collect_info() -> dict[str, str]:
    """Versions of Python, torch, CUDA and tdsnn, the devices seen, and the LIF implementation."""
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
    info["LIF implementation"] = lif_implementation()
    return info


def lif_implementation() -> str:
    """What :func:`tdsnn.neurons.lif_multistep` runs, and whether a compiled op is registered."""
    op = neurons.LIF_OP
    try:
        torch.ops.tdsnn.lif_multistep  # noqa: B018 - raises unless a compiled op is registered
        kernel = "torch.ops.tdsnn.lif_multistep is registered"
    except (AttributeError, RuntimeError):
        kernel = "no compiled torch.ops.tdsnn kernel is registered"
    return f"{op.__module__}.{op.__qualname__} ({kernel})"
