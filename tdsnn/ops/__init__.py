"""Compiled ops (``torch.ops.tdsnn.*``) and the one place that decides when they run.

Three layers per op (DESIGN §9): the schema in ``cuda_kernels/ops.cpp``, the kernels in the C++
(``lif_cpu.cpp``) and ``.cu`` files registered per dispatch key, and a module here
(:mod:`tdsnn.ops.lif`, :mod:`tdsnn.ops.pairs`, :mod:`tdsnn.ops.bn_lif`) that owns the op's
PyTorch reference and its dispatch, and whose ``register()`` registers the fake function for
``torch.compile``, the autograd formula and, for ops without a compiled CPU kernel, the CPU
implementation (the reference). Modules here import nothing from the rest of tdsnn but
:mod:`tdsnn.errors`: :mod:`tdsnn.neurons` and :mod:`tdsnn.topo` call them, never the reverse.

Which path runs is set by ``TDSNN_KERNELS``:

- ``auto`` (default): CUDA tensors use the CUDA kernels, and CPU tensors the compiled CPU
  kernels where an op has one (:data:`CPU_KERNELS`), built on first use; if a build fails, one
  warning says why and the PyTorch reference runs instead. Other CPU ops run the reference.
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
    "CPU_KERNELS",
    "KERNEL_POLICIES",
    "KernelBuildError",
    "kernel_policy",
    "load_kernels",
    "loaded",
    "use_kernels",
]

KERNEL_POLICIES = ("auto", "cuda", "reference")
# ops with a compiled CPU kernel (the others: the reference)
CPU_KERNELS = frozenset({"lif", "bn_lif", "swap_window"})

_lock = threading.Lock()
# per library ("cpu", "cuda"): its BuildResult once loaded, or the KernelBuildError it raised
_state: dict[str, object] = {"cpu": None, "cuda": None, "warned": set()}
# whether the ops' Python parts (fake functions, autograd formulas, CPU implementations) are
# registered with torch: once a process, as the first library loads
_registered: list[bool] = []


def kernel_policy() -> str:
    """``TDSNN_KERNELS`` (default ``auto``); an unknown value is a ``ConfigError``."""
    policy = os.environ.get("TDSNN_KERNELS", "auto").strip().lower() or "auto"
    if policy not in KERNEL_POLICIES:
        raise ConfigError(
            f"TDSNN_KERNELS={policy!r} is not a kernel policy; use one of: "
            + ", ".join(KERNEL_POLICIES)
        )
    return policy


def load_kernels(verbose: bool = False, cuda: bool = True) -> BuildResult:
    """Build (first call) and load the compiled ops: the CPU library, and with ``cuda`` the
    CUDA one; then register their Python parts.

    Raises ``KernelBuildError`` when they cannot be built; the failure is remembered, so a
    process tries once per library.
    """
    key = "cuda" if cuda else "cpu"
    with _lock:
        found = _state[key]
        if not cuda and isinstance(_state["cuda"], BuildResult):
            return _state["cuda"]  # loading the CUDA kernels loaded the CPU library first
        if isinstance(found, BuildResult):
            return found
        if isinstance(found, KernelBuildError):
            raise found
        try:
            result = build_kernels(verbose=verbose, cuda=cuda)
        except KernelBuildError as exc:
            _state[key] = exc
            raise
        if not _registered:  # once a process, whichever library loads first
            from tdsnn.ops import lif, pairs  # fake, autograd and CPU parts, after the schemas
            from tdsnn.ops.bn_lif import register as register_bn_lif

            lif.register()
            pairs.register()
            register_bn_lif()
            _registered.append(True)

        _state[key] = result
        return result


def loaded(cuda: bool = True) -> bool:
    """Whether the compiled ops (with ``cuda``, the CUDA kernels too) are loaded here."""
    return isinstance(_state["cuda"], BuildResult) or (
        not cuda and isinstance(_state["cpu"], BuildResult)
    )


def use_kernels(tensor: Tensor, op: str) -> bool:
    """Whether ``op`` on ``tensor`` should run the compiled kernel (the dispatch decision).

    True for CUDA tensors, and for CPU tensors of an op in :data:`CPU_KERNELS`, under the
    ``auto`` or ``cuda`` policy once the kernels are built; builds them on the first call.
    Under ``auto`` a failed build warns once and returns False from then on; under ``cuda``
    it raises ``KernelBuildError``.
    """
    cuda = tensor.device.type == "cuda"
    if not cuda and not (tensor.device.type == "cpu" and op in CPU_KERNELS):
        return False
    policy = kernel_policy()
    if policy == "reference":
        return False
    try:
        load_kernels(cuda=cuda)
    except KernelBuildError as exc:
        if policy == "cuda":
            raise KernelBuildError(
                f"TDSNN_KERNELS=cuda needs the compiled kernels: {exc}; install the CUDA toolkit "
                "and a C++ compiler, or set TDSNN_KERNELS=auto (PyTorch ops where they fail) or "
                "TDSNN_KERNELS=reference"
            ) from exc
        device = "CUDA" if cuda else "the CPU"
        if device not in _state["warned"]:
            _state["warned"].add(device)
            warnings.warn(
                f"tdsnn: using the PyTorch reference ops on {device}: {exc}", RuntimeWarning, 2
            )
        return False
    return True


def implementation(device: str | torch.device, op: str = "lif") -> str:
    """``"kernel"`` or ``"reference"``: what ``op`` runs for tensors on ``device`` now."""
    device = torch.device(device)
    if kernel_policy() == "reference":
        return "reference"
    if device.type == "cuda":
        return "kernel" if loaded() else "reference"
    return "kernel" if op in CPU_KERNELS and loaded(cuda=False) else "reference"
