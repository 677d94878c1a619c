"""Safe file writes and inter-process locks: the two ways lit_tuning keeps a file whole across crashes and workers."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on path (created if needed) for the block; other processes wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):  # an flock: released by the kernel when its holder is killed, so no lock outlives a crash
        yield


def atomic_write(path: str | Path, text: str) -> Path:
    """Write text to path via a temporary file and a rename, so a failure never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not land before the bytes do (a power cut mid-study)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files owner-only; results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _remove_orphaned_temporaries(path: Path) -> None:
    """Delete temporaries of path left by writers that were killed mid-write (their pid, in the name, is gone)."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = leftover.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
