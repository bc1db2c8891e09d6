"""Errors that describe a user mistake (bad argument, missing file, corrupt checkpoint).

The command line prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback. Each class also derives from the builtin type a Python caller would expect.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(Exception):
    """Base of every error caused by the user's input rather than by tdsnn itself."""


class ConfigError(UserError, ValueError):
    """A configuration value, command-line option or name is not valid."""


class DataError(UserError, FileNotFoundError):
    """A dataset folder or file is missing or not in the expected format."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or run directory is corrupt or does not match the requested model."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RecordingError(UserError, OSError):
    """A recording file is missing, not a tdsnn recording, truncated or corrupt."""


class DiskFullError(UserError, OSError):
    """A file could not be written: the disk is full or a file-size limit was reached."""


class MissingPackageError(UserError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra."""


def one_line(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters (the type's name when
    the message is empty); with ``typed``, prefixed by the type's name."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    if not first:
        return type(exc).__name__
    return f"{type(exc).__name__}: {first}" if typed else first


def import_optional(
    module: str, extra: str, purpose: str, error: type[MissingPackageError] = MissingPackageError
) -> ModuleType:
    """Import ``module`` (dotted names allowed), or raise ``error`` saying that ``purpose``
    needs it and which extra installs it (``pip install 'tdsnn[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise error(
            f"{purpose} needs the '{package}' package: pip install 'tdsnn[{extra}]'"
        ) from exc
