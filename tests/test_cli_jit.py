"""`helix jit stats` and `helix jit clear` on a private cache directory."""

import json
import subprocess
import sys

from helix_test_support import run_helix


def test_jit_stats_and_clear(tmp_path):
    env = {"HELIX_JIT_CACHE_DIR": str(tmp_path)}
    code = (
        "import numpy as np, helix_jit; "
        "x = np.ones((4, 16), np.float32); helix_jit.fwht(x); "
        "print(helix_jit.cache_stats().compiles)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "PATH": ""})
    assert proc.stdout.strip() == "1", proc.stderr
    stats = json.loads(run_helix(["jit", "stats", "--json"], env=env, check=True).stdout)
    assert stats["entries"] == 1 and stats["bytes"] > 0
    assert (stats["hits"], stats["misses"], stats["compiles"]) == (0, 0, 0)  # this process compiled nothing
    table = run_helix(["jit", "stats"], env=env, check=True).stdout
    assert "entries     1" in table
    assert run_helix(["jit", "clear"], env=env, check=True).stdout.strip() == "cleared the kernel cache (1 entries removed)"
    assert json.loads(run_helix(["jit", "stats", "--json"], env=env, check=True).stdout)["entries"] == 0
