"""Every test here runs with a private HOME, so headroom cannot touch the
user's; the session checks that nothing created ~/.headroom in it."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    real_headroom = Path.home() / ".headroom"
    existed = real_headroom.exists()
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("HOME", None)
    else:
        os.environ["HOME"] = saved
    assert not (home / ".headroom").exists(), "headroom wrote into the (temporary) home directory"
    assert real_headroom.exists() == existed, "headroom created ~/.headroom in the real home directory"
