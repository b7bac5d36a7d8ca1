"""Reading an input file whole, within a size limit, from regular files only.

A FIFO would block the open and a device such as /dev/zero would read
without end, so anything but a regular file (after following symlinks) is
refused before it is opened, and at most ``max_bytes`` are ever read.
"""

from __future__ import annotations

import os
import stat

from helix_framework.errors import InputFileError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_regular_file(path: str | os.PathLike[str], max_bytes: int, *, limit_name: str = "size limit") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    Raises `InputFileError` (naming the file) for a missing or unreadable
    file, anything that is not a regular file, or a file over the limit
    (``limit_name`` says which option sets it).
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"not a regular file ({_kind(st.st_mode)}); only regular files are read", path=name)
        if st.st_size > max_bytes:
            raise InputFileError(f"{st.st_size} bytes is over the {limit_name} of {max_bytes}", path=name)
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InputFileError("not a regular file; only regular files are read", path=name)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputFileError("cannot read: no such file", path=name) from None
    except OSError as exc:
        raise InputFileError(f"cannot read: {exc.strerror or exc}", path=name) from None
    if len(data) > max_bytes:  # it grew after the size check
        raise InputFileError(f"more than the {limit_name} of {max_bytes} bytes", path=name)
    return data


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")
