"""The README keeps up with the hooks and the environment variables."""

import re

from helix_test_support import ROOT
from helix_framework import hookspecs

README = (ROOT / "README.md").read_text()


def test_every_hook_has_a_readme_section_and_a_docstring():
    for name in hookspecs.KINDS.values():
        assert f"#### `{name}(register)`" in README, name
        assert getattr(hookspecs, name).__doc__.strip()


def test_every_environment_variable_is_documented():
    used = set()
    for path in [*ROOT.glob("helix_framework/**/*.py"), *ROOT.glob("jit/helix_jit/**/*.py"), *ROOT.glob("plugins/*/*/*.py")]:
        used |= set(re.findall(r"\bHELIX_[A-Z_]+[A-Z]\b", path.read_text()))
    assert used, "no environment variables found: the scan is broken"
    missing = sorted(v for v in used if f"`{v}" not in README)
    assert not missing, f"undocumented in README.md: {missing}"


def test_readme_shows_the_two_setup_commands():
    assert "make run" in README and "make test" in README
