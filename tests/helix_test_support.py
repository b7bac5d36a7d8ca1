"""Helpers shared by the host tests: paths, fake distributions, the CLI in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def fake_distribution(site: Path, dist: str, entry_points: dict[str, str], version: str = "0.1") -> None:
    """Write a minimal installed distribution (dist-info) with entry points."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[helix_framework]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")


def run_helix(args, *, pythonpath=(), env=None, check=False):
    """Run the helix CLI in a subprocess with extra sys.path entries."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_") or k == "HELIX_JIT_CACHE_DIR"}
    full_env.update(env or {})
    paths = [str(p) for p in pythonpath] + [str(TESTS)]
    full_env["PYTHONPATH"] = os.pathsep.join(paths)
    proc = subprocess.run(
        [sys.executable, "-m", "helix_framework.cli", *args],
        capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helix {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc
