"""The network promise: a sweep, on the local executor or on a Ray instance
this tool starts, contacts nothing but loopback and listens only on loopback.

Three guards, each on every process of the run (the helix driver, the process
pool's workers, Ray's raylet-spawned Python workers and agents):

- a ``sitecustomize`` on the subprocess's PYTHONPATH that records every
  ``connect``, ``connect_ex``, ``sendto`` and ``getaddrinfo`` /
  ``gethostbyname`` of a non-loopback address or name by Python code (it also
  records which processes it ran in, so a guard that never loaded fails);
- the listening TCP/UDP sockets of the run's processes (its session), read
  from /proc while the sweep runs;
- ``strace -f`` on connect/sendto/sendmsg, which also sees Ray's C++ processes
  (raylet, gcs_server); skipped, with the reason, where strace cannot trace.
"""

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_test_support import ROOT, TESTS

GUARD = r'''
import ipaddress, os, socket, sys

_LOG = os.environ.get("HELIX_NET_GUARD_LOG")
_SEEN = os.environ.get("HELIX_NET_GUARD_SEEN")


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%")[0]
    if host in ("", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that would go to the resolver


def _record(kind, what):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {kind} {what!r} {sys.argv[:2]!r}\n")


def _check(kind, address):
    if isinstance(address, tuple) and address and not _loopback(address[0]):
        _record(kind, address)


def _wrap_method(name):
    original = getattr(socket.socket, name)

    def wrapped(self, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6) and args:
            _check(name, args[-1] if name == "sendto" else args[0])
        return original(self, *args)

    setattr(socket.socket, name, wrapped)


def _wrap_lookup(name):
    original = getattr(socket, name)

    def wrapped(host, *args, **kwargs):
        if not _loopback(host):
            _record(name, host)
        return original(host, *args, **kwargs)

    setattr(socket, name, wrapped)


if _LOG:
    for _name in ("connect", "connect_ex", "sendto"):
        _wrap_method(_name)
    for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        _wrap_lookup(_name)
    with open(_SEEN, "a") as _f:
        _f.write(f"{os.getpid()}\t{' '.join(sys.argv)}\n")
'''


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("net-sweep")
    rng = np.random.default_rng(0)
    save_file({
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((96, 64)).astype(np.float32),
        "model.layers.1.mlp.down_proj.weight": rng.standard_normal((96, 128)).astype(np.float32),
    }, str(d / "m.safetensors"))
    (d / "s.yaml").write_text(
        "name: net\ncodec: rtn\ngrid: {bits: [4, 8]}\n"
        "fixed: {rows: {calibration: 48, measurement: 24, seed: 1}}\nmeasure: [rel_l2]\n"
    )
    return d


def _guarded_env(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELIX_", "RAY_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(guard), str(TESTS)]),
        "HELIX_NET_GUARD_LOG": str(tmp_path / "violations.log"),
        "HELIX_NET_GUARD_SEEN": str(tmp_path / "seen.log"),
        "HELIX_JIT_CACHE_DIR": str(tmp_path / "jit-cache"),
        "HELIX_CACHE_DIR": str(tmp_path / "cache"),
    })
    return env


# -- listening sockets of a process session, from /proc --------------------------------


def _session_pids(sid):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # after ")": state, ppid, pgrp, session
                pids.append(int(entry))
    return pids


def _socket_inodes(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", link)
            if m:
                out.add(m.group(1))
    except OSError:
        pass
    return out


def _hex_address(text, v6):
    raw = bytes.fromhex(text)
    if v6:  # four host-order 32-bit words
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return ipaddress.IPv6Address(raw)
    return ipaddress.IPv4Address(raw[::-1])


def _bound_addresses():
    """inode -> (protocol, address, port) of listening TCP and bound UDP sockets."""
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state, inode = f[1], f[3], f[9]
            if proto.startswith("tcp") and state != "0A":  # LISTEN
                continue
            host, port = local.split(":")
            out[inode] = (proto, _hex_address(host, proto.endswith("6")), int(port, 16))
    return out


def _is_loopback(address):
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _run_watched(args, env, timeout=420):
    """Run ``args`` in a new session; meanwhile collect every bound socket of
    the session's processes. Returns (completed result, {(proto, addr, port, pid)})."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    seen = set()
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            bound = _bound_addresses()
            for pid in _session_pids(proc.pid):
                for inode in _socket_inodes(pid):
                    if inode in bound:
                        seen.add((*bound[inode], pid))
            time.sleep(0.2)
        out, err = proc.communicate(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err), seen


def _sweep_args(d, tmp_path, executor):
    return [sys.executable, "-m", "helix_framework.cli", "sweep", str(d / "s.yaml"), "--model",
            str(d / "m.safetensors"), "--db", str(tmp_path / "db"), "--executor", executor, "--jobs", "2", "--json"]


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_sweep_contacts_and_listens_on_loopback_only(executor, sweep_files, tmp_path):
    if executor == "ray":
        pytest.importorskip("ray")
    env = _guarded_env(tmp_path)
    result, bound = _run_watched(_sweep_args(sweep_files, tmp_path, executor), env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] == 2 and summary["executor"] == executor
    # the guard ran in the driver and in every worker that computed a candidate
    seen = {}
    for line in Path(env["HELIX_NET_GUARD_SEEN"]).read_text().splitlines():
        pid, argv = line.split("\t", 1)
        seen[int(pid)] = argv
    workers = {c["worker_pid"] for c in summary["candidates"]}
    assert workers and workers <= set(seen), (workers, seen)
    if executor == "ray":
        assert any("default_worker.py" in argv for argv in seen.values())
    log = Path(env["HELIX_NET_GUARD_LOG"])
    violations = log.read_text() if log.exists() else ""
    assert violations == "", f"non-loopback network use:\n{violations}"
    if executor == "ray":
        assert any(proto.startswith("tcp") for proto, *_ in bound), "no Ray listening socket was seen"
    outside = sorted({(p, str(a), port, pid) for p, a, port, pid in bound if not _is_loopback(a)})
    assert outside == [], f"sockets bound beyond loopback: {outside}"


def _strace_works():
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"strace cannot trace here: {probe.stderr.strip()[:200]}"
    return None


_INET = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def test_strace_sees_only_loopback_connects_from_every_ray_process(sweep_files, tmp_path):
    """Covers what a Python guard cannot: raylet, gcs_server and other C++ code."""
    pytest.importorskip("ray")
    reason = _strace_works()
    if reason:
        pytest.skip(reason)
    env = _guarded_env(tmp_path)
    trace = tmp_path / "trace.txt"
    args = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
            *_sweep_args(sweep_files, tmp_path, "ray")]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    addresses = set()
    for line in trace.read_text().splitlines():
        for v4, v6 in _INET.findall(line):
            addresses.add(ipaddress.ip_address(v4 or v6))
    assert addresses, "strace recorded no inet connect at all: the trace is not working"
    outside = sorted(str(a) for a in addresses if not _is_loopback(a))
    assert outside == [], f"non-loopback addresses contacted: {outside}"
