"""The folders commands take, checked without torch, so that a wrong path is answered at once."""

from __future__ import annotations

from pathlib import Path

from tdsnn.errors import CheckpointError, ConfigError

__all__ = ["check_run_dir"]


def check_run_dir(path: str | Path, *, must_exist: bool) -> Path:
    """``path`` as a run directory: a folder (or, when not ``must_exist``, not there yet)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} is a file; pass a folder")
    if must_exist and not path.is_dir():
        raise CheckpointError(f"run directory {path} does not exist")
    return path
