"""Shared by every test directory (tests/, jit/tests/, plugins/*/tests/)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_jit_cache(tmp_path_factory):
    """Compiled kernels go to a private directory, never the user's cache,
    and the JIT runs unless a test disables it."""
    path = tmp_path_factory.mktemp("helix-jit-cache")
    saved = {k: os.environ.get(k) for k in ("HELIX_JIT_CACHE_DIR", "HELIX_JIT_DISABLE")}
    os.environ["HELIX_JIT_CACHE_DIR"] = str(path)
    os.environ.pop("HELIX_JIT_DISABLE", None)
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
