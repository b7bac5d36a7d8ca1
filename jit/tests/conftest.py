import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # for the _shapes helper module

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    """All tests use a private cache dir (never the user's)."""
    d = tmp_path_factory.mktemp("helix-jit-cache")
    old = os.environ.get("HELIX_JIT_CACHE_DIR")
    os.environ["HELIX_JIT_CACHE_DIR"] = str(d)
    os.environ.pop("HELIX_JIT_DISABLE", None)
    yield d
    if old is None:
        os.environ.pop("HELIX_JIT_CACHE_DIR", None)
    else:
        os.environ["HELIX_JIT_CACHE_DIR"] = old
