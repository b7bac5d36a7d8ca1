"""Kernel signatures and the two-level cache of compiled kernels.

A signature is the SHA-256 of the canonical JSON (sorted keys, no spaces) of
everything that changes the machine code: kernel name and version, lane
width, shape constants, llvmlite and LLVM versions, target triple, CPU name
and features. Never seeds or row counts (those are runtime arguments).

Level 1: a dict in this process, signature -> loaded engine.
Level 2: one object file per signature under ``$HELIX_JIT_CACHE_DIR``
(default ``platformdirs.user_cache_dir("helix-jit")``), written atomically
(temporary file in the same directory, then ``os.replace``) so concurrent
writers never leave a torn entry. Each file starts with a header holding the
payload length and the SHA-256 of the signature together with the payload,
so a truncated or corrupted file, an entry copied under another signature's
name, or one written by an older format is detected, discarded with a logged
warning (at INFO for an older format, which every upgrade leaves) and
recompiled, never executed. Only regular files are read: a FIFO,
device, directory or symlink under an entry's name is skipped unopened and
left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MAGIC = b"HELIXJIT3\n"  # 1: checksum of the payload alone; 2: entry symbols without the signature (both recompiled)
_HEADER = struct.Struct("<Q32s")  # payload length, entry_digest(signature, payload)
_SUFFIX = ".hjo"


def entry_digest(sig: str, payload: bytes) -> bytes:
    """SHA-256 binding an object to the signature it is stored under."""
    return hashlib.sha256(b"helix-jit entry\0" + sig.encode("ascii") + b"\0" + payload).digest()


def _regular(p: Path) -> bool | None:
    """True for a regular file, False for anything else, None if absent (symlinks are not followed)."""
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except FileNotFoundError:
        return None


def canonical_json(payload: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every signature
    (kernel signatures here, candidate and cache keys in helix_framework)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def signature_of(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def cache_dir() -> Path:
    """The on-disk cache directory (``$HELIX_JIT_CACHE_DIR`` or the user cache dir)."""
    env = os.environ.get("HELIX_JIT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs  # lazy: only when a kernel touches the disk

    return Path(platformdirs.user_cache_dir("helix-jit"))


@dataclass(frozen=True)
class CacheStats:
    """Counters of this process, plus the size of the on-disk cache.

    entries/bytes: object files on disk now; hits: lookups served from memory;
    misses: lookups not in memory; disk_loads: misses served from disk;
    compiles: misses that ran code generation; compile_ms: total time compiling.
    """

    entries: int
    bytes: int
    hits: int
    misses: int
    disk_loads: int
    compiles: int
    compile_ms: float


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    disk_loads: int = 0
    compiles: int = 0
    compile_ms: float = 0.0


@dataclass(frozen=True)
class KernelUse:
    """One kernel used inside :func:`record_kernels`.

    source: "compiled", "disk" or "memory" (where the first use inside the
    block got it from), or "reference" when HELIX_JIT_DISABLE=1.
    """

    name: str
    version: str
    lane_width: str
    signature: str
    source: str


@dataclass
class _Recorder:
    uses: dict[str, KernelUse] = field(default_factory=dict)

    @property
    def kernels(self) -> list[KernelUse]:
        return list(self.uses.values())


_lock = threading.RLock()
# The process-wide state the kernel module shares with this one (public names:
# `helix_jit.kernel` reads and updates them; nothing else should).
#: compiled kernels of this process by signature
memory: dict[str, Any] = {}
#: hits, misses, disk loads and compiles of this process
counters = _Counters()
#: the open `record_kernels` blocks
recorders: list[_Recorder] = []
generation = 0  # bumped by clear_cache so per-kernel fast paths re-look-up


def _path(sig: str) -> Path:
    return cache_dir() / (sig + _SUFFIX)


@contextlib.contextmanager
def signature_lock(sig: str) -> Iterator[None]:
    """Hold an exclusive file lock for one signature across the processes of
    this machine, so two processes that miss the same kernel compile it once:
    the second finds the first's object on disk. Without fcntl (or a
    writable cache directory) it is a no-op: at worst both compile."""
    try:
        import fcntl

        locks = cache_dir() / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / sig[:32], "a+")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_disk(sig: str) -> bytes | None:
    """The stored object for ``sig``, or None (missing, not a regular file, or
    bad: then removed)."""
    p = _path(sig)
    try:
        regular = _regular(p)
        if regular is None:
            return None
        if not regular:
            log.warning("helix-jit cache entry %s is not a regular file; skipped, recompiling", p)
            return None
        # O_NONBLOCK and O_NOFOLLOW: if the entry was swapped for a FIFO or a
        # symlink since the check, the open neither blocks nor follows it
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                log.warning("helix-jit cache entry %s is not a regular file; skipped, recompiling", p)
                return None
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("helix-jit cache entry %s unreadable (%s); recompiling", p, e)
        return None
    head = len(_MAGIC) + _HEADER.size
    ok = data[: len(_MAGIC)] == _MAGIC and len(data) >= head
    if ok:
        length, digest = _HEADER.unpack_from(data, len(_MAGIC))
        payload = data[head:]
        ok = len(payload) == length and entry_digest(sig, payload) == digest
    if not ok:
        if data.startswith((b"HELIXJIT1\n", b"HELIXJIT2\n")):
            # expected once per kernel after an upgrade: not worth a warning
            log.info("helix-jit cache entry %s is from an older cache format; discarding and recompiling", p)
        else:
            log.warning("helix-jit cache entry %s is truncated, corrupt or not stored under this signature; "
                        "discarding and recompiling", p)
        with contextlib.suppress(OSError):
            p.unlink()
        return None
    return payload


def write_disk(sig: str, obj: bytes) -> None:
    """Store ``obj`` atomically; failures only warn (the cache is an optimisation).

    Something other than a regular file under the entry's name is left in place.
    """
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        if _regular(d / (sig + _SUFFIX)) is False:
            log.warning("helix-jit cache entry %s is not a regular file; not replacing it", d / (sig + _SUFFIX))
            return
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + sig[:16], dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + _HEADER.pack(len(obj), entry_digest(sig, obj)) + obj)
            os.replace(tmp, d / (sig + _SUFFIX))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        log.warning("helix-jit could not write cache entry in %s: %s", d, e)


def cache_stats() -> CacheStats:
    """Entries and bytes on disk now; hits, misses, loads, compiles of this process."""
    entries = size = 0
    d = cache_dir()
    if d.is_dir():
        for p in d.glob("*" + _SUFFIX):
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
                    entries += 1
    c = counters
    return CacheStats(entries, size, c.hits, c.misses, c.disk_loads, c.compiles, round(c.compile_ms, 3))


def clear_cache(*, disk: bool = True) -> int:
    """Forget compiled kernels in memory and (by default) delete the disk entries.

    Callables already handed out keep working (they hold their engine).
    Returns the number of files removed.
    """
    global generation
    removed = 0
    with _lock:
        memory.clear()
        generation += 1
        d = cache_dir()
        if disk and d.is_dir():
            for p in list(d.glob("*" + _SUFFIX)) + list(d.glob(".tmp-*")):
                with contextlib.suppress(OSError):
                    if _regular(p):  # only what write_disk could have written
                        p.unlink()
                        removed += 1
    return removed


@contextlib.contextmanager
def record_kernels() -> Iterator[_Recorder]:
    """Collect the kernels used inside the block, for calibration manifests.

    >>> with record_kernels() as rec:            # doctest: +SKIP
    ...     pq_assign(rows, codebooks, "F32x16")
    >>> [(u.name, u.source) for u in rec.kernels]  # doctest: +SKIP
    [('pq_assign', 'compiled')]
    """
    rec = _Recorder()
    with _lock:
        recorders.append(rec)
    try:
        yield rec
    finally:
        with _lock:
            recorders.remove(rec)


def note_use(use: KernelUse) -> None:
    if recorders:
        with _lock:
            for r in recorders:
                r.uses.setdefault(use.signature, use)
