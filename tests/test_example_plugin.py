"""The example third-party plugin, installed with pip like a user would."""

import json
import os
import subprocess
import sys

import pytest

from helix_test_support import ROOT, run_helix

EXAMPLE = ROOT / "examples" / "helix-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install the example into a private target directory (not the venv)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True, cwd=build, timeout=300,
    )
    return target


def test_example_plugin_is_discovered_through_its_entry_point(installed):
    rows = json.loads(run_helix(["plugins", "--json"], pythonpath=[installed], check=True).stdout)
    (row,) = [r for r in rows if r["name"] == "signscale"]
    assert row["kind"] == "codec" and row["source"] == "entry point" and row["status"] == "loaded"
    assert row["distribution"] == "helix-example-plugin" and row["version"] == "0.1.0"
    assert row["lane_widths"] == ["F32x16"]


def test_config_selecting_the_example_validates(installed):
    proc = run_helix(["check", "examples/candidate_signscale.yaml"], pythonpath=[installed])
    assert proc.returncode == 0, proc.stderr
    assert "example_signscale codec=signscale" in proc.stdout


def test_config_selecting_the_example_fails_without_it():
    # entry points off: the example may be installed in the venv (the README suggests it)
    proc = run_helix(["check", "examples/candidate_signscale.yaml"], env={"HELIX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 2 and "unknown codec 'signscale'" in proc.stderr


def test_example_plugin_own_tests_pass(installed):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True, text=True, env=env, cwd=installed, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
