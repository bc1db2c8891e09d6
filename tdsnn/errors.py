"""Errors that describe a user mistake (bad argument, missing file, corrupt checkpoint), and
:class:`Stopped`, a long command stopped by Ctrl-C or SIGTERM.

The command line prints these as one line and exits non-zero (2 for a mistake, 130 for a stop);
anything else is a bug and keeps its traceback. Each mistake class also derives from the
builtin type a Python caller would expect.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
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


class Stopped(Exception):
    """Ctrl-C or SIGTERM (:class:`tdsnn.runtime.StopSignals`) stopped a long command at a safe
    point, and the files it leaves are usable.

    Raised by :func:`tdsnn.train.train`, :func:`tdsnn.record.record_run`,
    :func:`tdsnn.evaluate.report.evaluate_runs`,
    :func:`tdsnn.sheet_optimize.optimize_run_sheets` and
    :func:`tdsnn.experiment.runner.run_experiment`; the command line prints its message as one
    line and exits with status 130, the status of a process ended by SIGINT.

    ``str(exc)`` says what stopped and how far it got, where its files are, and how to continue
    (keyword arguments written ``name=value``, which the command line spells as its flags).

    Attributes:
        path: the file or folder that holds what was kept (``last.pt``, the recording, ...).
        continue_with: the keyword arguments that, added to the same call, continue it
            (``{"resume": True}``; empty where the same call again continues).

    Not a :class:`UserError`: nothing the user gave was wrong, and a stop is no failure. The
    command line answers a user error with ``error: ...`` and status 2, and an experiment's
    worker with status 2, which fails its run; a stop must pass every ``except UserError``
    untouched, to end in status 130 (a stopped worker's experiment stops, to continue later).
    """

    def __init__(
        self, message: str, *, path: str | Path, continue_with: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.continue_with = dict(continue_with or {})


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


def check_state_version(state: dict, supported: int, what: str) -> None:
    """Raise a CheckpointError unless ``state``'s ``"version"`` (``supported`` when absent) is
    ``supported``; ``what`` names the state, e.g. ``"sheet state"``."""
    version = state.get("version", supported)
    if version != supported:
        raise CheckpointError(
            f"{what} version {version!r} is not supported (this tdsnn reads {supported})"
        )


def import_optional(
    module: str, extra: str, purpose: str, error: type[MissingPackageError] = MissingPackageError
) -> ModuleType:
    """Import ``module`` (dotted names allowed), or raise ``error`` saying that ``purpose``
    needs it and which extra installs it (``pip install 'tdsnn[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module.split(".")[0], extra, purpose, error) from exc


def package_folder(package: str, extra: str, purpose: str) -> Path:
    """The folder of the installed top-level ``package``, found without importing it (for its
    data files), or a :class:`MissingPackageError` as :func:`import_optional` raises it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise _missing(package, extra, purpose, MissingPackageError)
    return Path(locations[0])


def _missing(
    package: str, extra: str, purpose: str, error: type[MissingPackageError]
) -> MissingPackageError:
    return error(f"{purpose} needs the '{package}' package: pip install 'tdsnn[{extra}]'")
