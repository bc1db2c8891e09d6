"""Errors that describe a user mistake (bad argument, missing file, corrupt checkpoint).

The command line prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback. Each class also derives from the builtin type a Python caller would expect.
"""


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
