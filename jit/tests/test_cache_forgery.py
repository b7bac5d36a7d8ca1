"""A cache entry is only executed under the signature it was stored for, and
only regular files in the cache are ever opened."""

import contextlib
import hashlib
import logging
import os
import signal
import struct

import numpy as np
import pytest
from test_cache_and_plugins import cache_dir, declare_axpb, run_axpb  # noqa: F401  (cache_dir is a fixture)

from helix_jit import cache, cache_stats, clear_cache


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging forever if something opens a FIFO for reading."""

    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def two_entries(k):
    """Compile d=8 and d=16; return their entry paths and bytes, memory cleared."""
    run_axpb(k, d=8)
    run_axpb(k, d=16)
    a, b = (cache._path(k.signature("F32x16", d=d)) for d in (8, 16))
    clear_cache(disk=False)
    return a, b, a.read_bytes(), b.read_bytes()


def payload_of(entry: bytes) -> bytes:
    return entry[len(cache._MAGIC) + cache._HEADER.size :]


def forged(kind, own: bytes, other: bytes) -> bytes:
    if kind == "swapped":  # another kernel's whole entry under this name
        return other
    obj = payload_of(other) if kind == "plain_checksum" else payload_of(own)
    magic = cache._MAGIC if kind == "plain_checksum" else b"HELIXJIT1\n"
    return magic + struct.pack("<Q32s", len(obj), hashlib.sha256(obj).digest()) + obj


@pytest.mark.parametrize("kind", ["swapped", "plain_checksum", "old_format"])
def test_forged_or_old_entry_is_recompiled_not_executed(cache_dir, caplog, kind):  # noqa: F811
    k = declare_axpb("forgery")
    a, b, entry_a, entry_b = two_entries(k)
    b.write_bytes(forged(kind, entry_b, entry_a))
    before = cache_stats()
    with caplog.at_level(logging.INFO, logger="helix_jit"):
        y, want = run_axpb(k, d=16)
    np.testing.assert_array_equal(y, want)
    after = cache_stats()
    assert (after.compiles, after.disk_loads) == (before.compiles + 1, before.disk_loads)
    # a forgery is a warning; an entry of an older format (expected after an upgrade) only informs
    level = logging.INFO if kind == "old_format" else logging.WARNING
    assert any("recompiling" in r.getMessage() and b.name in r.getMessage() and r.levelno == level
               for r in caplog.records)
    assert b.read_bytes() == entry_b  # the honest entry is written back
    clear_cache(disk=False)
    run_axpb(k, d=16)
    assert cache_stats().disk_loads == after.disk_loads + 1  # and that one is trusted again


def make_fifo(p, elsewhere):
    os.mkfifo(p)


def make_directory(p, elsewhere):
    p.mkdir()


def make_symlink(p, elsewhere):
    p.symlink_to(elsewhere)


def make_device(p, elsewhere):
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null


@pytest.mark.parametrize("make", [make_fifo, make_directory, make_symlink, make_device], ids=lambda f: f.__name__[5:])
def test_non_regular_entry_is_skipped_unopened_and_left(cache_dir, caplog, make):  # noqa: F811
    k = declare_axpb("special")
    run_axpb(k, d=8)
    p = cache._path(k.signature("F32x16", d=8))
    elsewhere = cache_dir / "valid-entry-elsewhere"
    os.replace(p, elsewhere)  # a symlink would point at a valid entry: still not followed
    make(p, elsewhere)
    kind = os.lstat(p).st_mode
    clear_cache(disk=False)
    before = cache_stats()
    with deadline(30), caplog.at_level(logging.WARNING, logger="helix_jit"):
        y, want = run_axpb(k, d=8)
    np.testing.assert_array_equal(y, want)
    after = cache_stats()
    assert (after.compiles, after.disk_loads) == (before.compiles + 1, before.disk_loads)
    assert any("not a regular file" in r.getMessage() for r in caplog.records)
    assert os.lstat(p).st_mode == kind  # left in place, not replaced or deleted
    assert after.entries == 0  # and not counted as an entry
    assert clear_cache() == 0 and os.lstat(p).st_mode == kind
