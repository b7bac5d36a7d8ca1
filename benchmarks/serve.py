"""A warm `helix serve` against `helix agree` processes, measured in the same run.

    .venv/bin/python benchmarks/serve.py [--candidates 20] [--positions 2000] [--checks 200]

N candidates (RTN at 4 bit widths x 5 group sizes) each compress block 0 of
SmolLM2-135M (every other tensor is routed to passthrough) and are measured
by token agreement at --positions positions: once as N `helix agree`
processes in a row, once as N jobs submitted to one `helix serve --model
smollm2` (its start and model load included). The reference outputs are
computed once beforehand (untimed) so both sides read the same disk cache.
Printed: both times, the ratio (issue target: the server takes at most a
third), whether both sides agree on every top-1 figure, and the latency of
POST /v1/check (issue target: median under 20 ms). The server binds
127.0.0.1 only and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HELIX = [sys.executable, "-m", "helix_framework.cli"]
BITS, GROUPS = (2, 3, 4, 8), (16, 32, 48, 64, 192)  # groups divide every row width (576, 1536)


def candidate_yaml(bits: int, group: int) -> str:
    return (f"name: rtn{bits}_g{group}_blk0\ncodec: rtn\nparams: {{bits: {bits}, group_size: {group}}}\n"
            "rotation: {kind: identity}\nrows: {calibration: 256, measurement: 128, seed: 42}\n"
            "measure: [rel_l2]\nroutes:\n  - {match: '^(?!blk\\.0\\.)', route: passthrough}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--positions", type=int, default=2000)
    ap.add_argument("--checks", type=int, default=200)
    args = ap.parse_args()
    combos = [(b, g) for b in BITS for g in GROUPS][: args.candidates]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "HELIX_CACHE_DIR": str(work / "cache")}
        files = []
        for b, g in combos:
            f = work / f"rtn{b}_g{g}.yaml"
            f.write_text(candidate_yaml(b, g))
            files.append(f)
        subprocess.run([*HELIX, "check", *map(str, files)], check=True, capture_output=True)
        agree = [*HELIX, "agree", "smollm2", "--positions", str(args.positions), "--json", "--config"]
        t = time.perf_counter()
        subprocess.run([*agree, str(files[0])], cwd=work, env=env, capture_output=True, check=False)
        print(f"reference outputs cached (untimed): {time.perf_counter() - t:.1f} s", flush=True)

        cli_top1, t0 = [], time.perf_counter()
        for f in files:
            r = subprocess.run([*agree, str(f)], cwd=work, env=env, capture_output=True, text=True)
            if not r.stdout:
                raise SystemExit(f"helix agree {f.name} failed: {r.stderr.strip()}")
            cli_top1.append(json.loads(r.stdout)["top1"])
        cli = time.perf_counter() - t0
        print(f"{len(files)} helix agree processes: {cli:.1f} s", flush=True)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        server = subprocess.Popen([*HELIX, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", "smollm2"],
                                  cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                while True:
                    try:
                        c.get("/v1/health")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                ids = [c.post("/v1/agree", json={"model": "smollm2", "candidate": f.read_text(),
                                                 "positions": args.positions}).json()["job_id"] for f in files]
                results = {}
                while len(results) < len(ids):
                    for i in ids:
                        if i not in results:
                            job = c.get(f"/v1/jobs/{i}").json()
                            if job["state"] in ("done", "failed", "cancelled", "interrupted"):
                                results[i] = job
                    time.sleep(0.2)
                served = time.perf_counter() - t0
                srv_top1 = [results[i]["result"]["top1"] if results[i]["state"] == "done" else None for i in ids]
                loads = [results[i]["result"]["seconds"]["load"] for i in ids if results[i]["state"] == "done"]

                body = files[0].read_text()
                lat = []
                for _ in range(args.checks):
                    t = time.perf_counter()
                    assert c.post("/v1/check", content=body).status_code == 200
                    lat.append((time.perf_counter() - t) * 1000)
        finally:
            server.terminate()
            server.wait(30)
    print(f"{len(files)} jobs on one warm server (start and model load included): {served:.1f} s")
    print(f"server / processes: {served / cli:.3f}  (target <= 0.333)")
    print(f"load seconds per job: first {loads[0]:.2f}, others max {max(loads[1:], default=0):.2f}")
    print(f"same top-1 on every candidate: {cli_top1 == srv_top1}  ({min(cli_top1):.4f} .. {max(cli_top1):.4f})")
    lat.sort()
    print(f"POST /v1/check latency over {len(lat)} calls: median {statistics.median(lat):.2f} ms, "
          f"p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} ms  (target median < 20 ms)")


if __name__ == "__main__":
    main()
