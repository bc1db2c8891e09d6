"""Cache of swap-optimised sheet positions (``sheet.layout: swap``), one file per result.

Files live in ``$TDSNN_CACHE/positions/<key>.pt`` (``~/.cache/tdsnn`` without the variable, as
for the compiled kernels: :func:`tdsnn.ops.build.cache_dir`). The key is a SHA-256 of
everything the result depends on, passed by the caller: the initial weights of the areas (so
the architecture, width, image size and seed), the starting sheets (sizes, neighbourhood widths,
jitter, positions) and the swap parameters. A changed input is a new key, never a stale file.
A file that cannot be read, or holds sheets of other shapes, is a one-line warning and ``None``
(the caller recomputes and overwrites it). Writes are atomic (:func:`tdsnn.atomic.write_atomic`).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tdsnn.atomic import write_atomic
from tdsnn.errors import one_line
from tdsnn.sheet import Sheet

__all__ = ["cache_key", "cache_path", "load_positions", "store_positions"]

FORMAT = "tdsnn-positions-1"


def cache_path(key: str) -> Path:
    """Where the result of ``key`` is cached."""
    from tdsnn.ops.build import cache_dir

    return cache_dir() / "positions" / f"{key}.pt"


def cache_key(settings: Mapping, tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of ``settings`` (JSON-able) and of ``tensors`` (dtype, shape and bytes)."""
    digest = hashlib.sha256()
    digest.update(FORMAT.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_positions(key: str, expected: Mapping[str, Sheet]) -> dict[str, Sheet] | None:
    """The cached sheets of ``key``, or ``None`` (missing; or unreadable / not matching the
    ``expected`` sheets' areas and shapes, with a one-line warning)."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a tdsnn positions file")
        sheets = {name: Sheet.from_state_dict(state) for name, state in data["sheets"].items()}
        for name, sheet in expected.items():
            if name not in sheets or tuple(sheets[name].shape) != tuple(sheet.shape):
                raise ValueError(f"no {name} sheet of shape {tuple(sheet.shape)}")
    except Exception as exc:  # any damage means: recompute
        warnings.warn(
            f"ignoring the damaged positions cache file {path} ({one_line(exc)}); recomputing it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return sheets


def store_positions(key: str, sheets: Mapping[str, Sheet], report: Mapping) -> Path:
    """Write ``sheets`` (and a JSON-able ``report``) as the result of ``key``; returns the path."""
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    states = {name: sheet.state_dict() for name, sheet in sheets.items()}
    torch.save({"format": FORMAT, "sheets": states, "report": dict(report)}, buffer)
    write_atomic(path, buffer.getvalue())
    return path
