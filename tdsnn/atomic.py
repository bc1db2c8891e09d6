"""Crash-safe file writes: whole files through a temporary file, fsync and an atomic rename.

Every file a run or an experiment must be able to trust after a hard kill (checkpoints,
``sheets.pt``, ``summary.json``, experiment plans, measures and results) is written by
:func:`write_atomic`: the bytes go to ``NAME.tmp`` beside the target, are flushed to disk
(``os.fsync``) and renamed over it (``os.replace``), and the folder entry is flushed too. A
kill at any moment leaves either the previous file or the new one, never half of one. A full
disk or file-size limit (ENOSPC, EDQUOT, EFBIG) is a one-line :class:`DiskFullError` naming the
file and the bytes it needed; the previous file is left as it was. Importing this module is
cheap (no torch).

Test hook: with ``TDSNN_TEST_KILL_BEFORE_RENAME=NAME:N`` in the environment, the process
SIGKILLs itself during its N-th write of a file named NAME, after the temporary file is on disk
and before the rename (the worst moment for a kill). The recording writer
(:mod:`tdsnn.record.hdf5`) calls it for its N-th batch of the recording NAME, after the batch's
data is written and before it is committed. It exists for the fault tests only.
"""

from __future__ import annotations

import errno
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tdsnn.errors import DiskFullError

__all__ = ["append_text", "disk_full", "kill_hook", "write_atomic"]

FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
KILL_HOOK = "TDSNN_TEST_KILL_BEFORE_RENAME"
_writes: dict[str, int] = {}  # per file name, writes so far in this process (for the hook)


class _Counter:
    """A write-only sink that counts bytes: the size a failed write needed."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary file) to
    ``path`` through ``path.tmp``, fsync and an atomic rename."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        kill_hook(path.name)
        os.replace(tmp, path)
    except BaseException as exc:
        cause = _full_disk_cause(exc)
        if cause is None:
            tmp.unlink(missing_ok=True)
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        raise disk_full(cause, path, _needed(data, written)) from exc
    _sync_folder(path.parent)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log); a full disk is a :class:`DiskFullError`."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as exc:
        if exc.errno in FULL_DISK:
            raise disk_full(exc, Path(path), len(text.encode())) from exc
        raise


def _full_disk_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT/EFBIG error behind ``exc``, if any (a writer such as ``torch.save``
    may raise another error while cleaning up after it)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def disk_full(exc: OSError, path: Path, size: int) -> DiskFullError:
    """The one-line error of a write of ``size`` bytes to ``path`` that hit a full disk."""
    reason = "the file-size limit" if exc.errno == errno.EFBIG else "a full disk"
    return DiskFullError(
        f"could not write {path}: {reason} ({os.strerror(exc.errno)}); it needs "
        f"{_human(size)}; any previous {path.name} is intact; "
        "free some space and run the command again"
    )


def _needed(data: bytes | Callable[[BinaryIO], object], written: int) -> int:
    """The size of the whole file (``written``, what reached the disk, if it cannot be told)."""
    if isinstance(data, bytes):
        return len(data)
    counter = _Counter()
    try:
        data(counter)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a writer that needs a real file: report what we know
        return written
    return max(counter.size, written)


def _human(size: int) -> str:
    """``300 bytes``, ``12.3 MiB (12897484 bytes)``."""
    if size < 1024:
        return f"{size} bytes"
    power = min(4, int(math.log(size, 1024)))
    unit = ("bytes", "KiB", "MiB", "GiB", "TiB")[power]
    return f"{size / 1024**power:.1f} {unit} ({size} bytes)"


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename (not possible on every system: then skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def kill_hook(name: str) -> None:
    """The test hook of the module docstring (no effect unless its variable is set)."""
    wanted = os.environ.get(KILL_HOOK)
    if not wanted:
        return
    target, _, count = wanted.rpartition(":")
    if target != name:
        return
    _writes[name] = _writes.get(name, 0) + 1
    if _writes[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
