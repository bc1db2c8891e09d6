"""Whether a compiled op reads and writes its tensors' storage as it is: the copies it makes.

A kernel that copies its input first (``.contiguous()``, ``.to()``, ``copy_``) does so through
the dispatcher, which the profiler records, also from inside a compiled op; a monkeypatched
Python ``Tensor.contiguous`` would see none of the C++ calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

COPY_OPS = frozenset({"aten::copy_", "aten::clone", "aten::_to_copy"})


def copies_made(fn: Callable[..., Any], *args: Any) -> tuple[Any, list[tuple[int, ...]]]:
    """``fn(*args)`` and the shapes of the tensors that the copy ops (:data:`COPY_OPS`) it
    dispatched copied, in call order (the dispatcher-level profiler: no start-up cost)."""
    with torch.autograd.profiler.profile(use_kineto=False, record_shapes=True) as prof:
        result = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return result, [tuple(e.input_shapes[0]) for e in prof.function_events if e.name in COPY_OPS]


def channels_last_steps(x: torch.Tensor) -> torch.Tensor:
    """``x [T, B, C, H, W]`` with every time step channels-last and time outermost."""
    t, b = x.shape[:2]
    flat = x.detach().flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return flat.unflatten(0, (t, b))
