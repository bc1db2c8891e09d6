"""Compiled ops (``torch.ops.tdsnn.*``) and the one place that decides when they run.

Three layers per op (DESIGN §9): the schema in ``cuda_kernels/ops.cpp``, the CUDA kernel in a
``.cu`` file registered for the CUDA key, and a module here (:mod:`tdsnn.ops.lif`,
:mod:`tdsnn.ops.pairs`) that registers the CPU implementation (the PyTorch reference), the fake
function for ``torch.compile`` and the autograd formula.

Which path runs is set by ``TDSNN_KERNELS``:

- ``auto`` (default): CUDA tensors use the kernels, built on first use; if the build fails,
  one warning says why and the PyTorch reference runs instead. CPU tensors use the reference.
- ``cuda``: as ``auto``, but a failed build is an error.
- ``reference``: the PyTorch reference everywhere; nothing is built.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch
from torch import Tensor

from tdsnn.errors import ConfigError
from tdsnn.ops.build import BuildResult, KernelBuildError, build_kernels

__all__ = [
    "KERNEL_POLICIES",
    "KernelBuildError",
    "kernel_policy",
    "load_kernels",
    "loaded",
    "use_kernels",
]

KERNEL_POLICIES = ("auto", "cuda", "reference")

_lock = threading.Lock()
_state: dict[str, object] = {"result": None, "error": None, "warned": False}


def kernel_policy() -> str:
    """``TDSNN_KERNELS`` (default ``auto``); an unknown value is a ``ConfigError``."""
    policy = os.environ.get("TDSNN_KERNELS", "auto").strip().lower() or "auto"
    if policy not in KERNEL_POLICIES:
        raise ConfigError(
            f"TDSNN_KERNELS={policy!r} is not a kernel policy; use one of: "
            + ", ".join(KERNEL_POLICIES)
        )
    return policy


def load_kernels(verbose: bool = False) -> BuildResult:
    """Build (first call) and load the compiled ops, then register their Python parts.

    Raises ``KernelBuildError`` when they cannot be built; the failure is remembered, so a
    process tries once.
    """
    with _lock:
        if _state["result"] is not None:
            return _state["result"]  # type: ignore[return-value]
        if _state["error"] is not None:
            raise _state["error"]  # type: ignore[misc]
        try:
            result = build_kernels(verbose=verbose)
        except KernelBuildError as exc:
            _state["error"] = exc
            raise
        from tdsnn.ops import lif, pairs  # noqa: F401  registers fake, autograd and CPU parts

        _state["result"] = result
        return result


def loaded() -> bool:
    """Whether the compiled ops are registered in this process."""
    return _state["result"] is not None


def use_kernels(tensor: Tensor) -> bool:
    """Whether an op on ``tensor`` should run the compiled kernel (the dispatch decision).

    True only for CUDA tensors under the ``auto`` or ``cuda`` policy once the kernels are
    built; builds them on the first CUDA call. Under ``auto`` a failed build warns once and
    returns False from then on; under ``cuda`` it raises ``KernelBuildError``.
    """
    if tensor.device.type != "cuda":
        return False
    policy = kernel_policy()
    if policy == "reference":
        return False
    try:
        load_kernels()
    except KernelBuildError as exc:
        if policy == "cuda":
            raise
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                f"tdsnn: using the PyTorch reference ops on CUDA: {exc}", RuntimeWarning, 2
            )
        return False
    return True


def implementation(device: str | torch.device) -> str:
    """``"kernel"`` or ``"reference"``: what the ops run for tensors on ``device`` now."""
    device = torch.device(device)
    if device.type != "cuda" or kernel_policy() == "reference":
        return "reference"
    return "kernel" if loaded() else "reference"
