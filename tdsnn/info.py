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
    """What :func:`tdsnn.neurons.lif_multistep` runs, and whether a compiled op is registered.

    Read from ``tdsnn.neurons.LIF_OP``, the object ``lif_multistep`` calls, and from the
    ``torch.ops.tdsnn`` namespace, so the report follows the code rather than a description of it.
    """
    op = neurons.LIF_OP
    compiled = _compiled_op("lif_multistep")
    if compiled is not None and op is compiled:
        return "torch.ops.tdsnn.lif_multistep (compiled op)"
    name = f"{getattr(op, '__module__', '?')}.{getattr(op, '__qualname__', repr(op))}"
    if isinstance(op, type) and issubclass(op, torch.autograd.Function):
        name += " (PyTorch autograd.Function: forward and backward over all T steps in one call)"
    status = "registered but not used" if compiled is not None else "not registered"
    return f"{name}; compiled torch.ops.tdsnn.lif_multistep: {status}"


def _compiled_op(name: str) -> object | None:
    """``torch.ops.tdsnn.<name>`` if a compiled extension registered it, else None."""
    try:
        return getattr(torch.ops.tdsnn, name)
    except (AttributeError, RuntimeError):
        return None
