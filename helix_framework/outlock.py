"""An exclusive lock on an output directory (a calibration ``--out``, a sweep ``--db``).

The lock is the file ``DIR/.helix-lock`` holding ``<pid> <command>``, locked
with ``flock``: the kernel drops the lock when its holder dies, so the file a
killed run leaves behind is stale and the next run takes it over. A second
live run refuses at once with `OutputLocked`, naming the holder's pid.
Where ``flock`` is not supported, the pid in the file decides: a live pid
holds the directory, a dead one is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from helix_framework.errors import OutputError, OutputLocked

LOCK_FILE = ".helix-lock"


@contextlib.contextmanager
def hold(directory: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of the existing ``directory`` for the ``with`` block."""
    path = Path(directory) / LOCK_FILE
    fd = _acquire(path, command)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, path):
                path.unlink()
        os.close(fd)


def _acquire(path: Path, command: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError.from_oserror(path.parent, exc, f"cannot create the lock file {LOCK_FILE}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                pid, holder = _holder(fd)
                os.close(fd)
                raise OutputLocked(str(path.parent), pid, holder) from None
            pid, holder = _holder(fd)  # no flock on this filesystem: trust a live pid
            if pid is not None and pid != os.getpid() and pid_alive(pid):
                os.close(fd)
                raise OutputLocked(str(path.parent), pid, holder) from None
        # The previous holder may have unlinked the file between our open and
        # our flock; then we locked an orphan inode and must start again.
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
    except OSError as exc:
        os.close(fd)
        raise OutputError.from_oserror(path.parent, exc, f"cannot write the lock file {LOCK_FILE}") from None
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, command) written in the lock file, or Nones when it is unreadable."""
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").split()
        return int(text[0]), " ".join(text[1:2]) or None
    except (OSError, ValueError, IndexError):
        return None, None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 reaches it or is not ours to send)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
