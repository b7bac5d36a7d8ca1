"""The README keeps up with the hooks and the environment variables."""

import re

from helix_test_support import ROOT
from helix_framework import hookspecs

README = (ROOT / "README.md").read_text()


def _hookspecs():
    """The hook specifications themselves, not a list kept beside them."""
    marker = f"{hookspecs.PROJECT}_spec"
    found = {name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)}
    assert found, "no hookspecs found: the scan is broken"
    return found


def test_every_hook_has_a_readme_section_a_docstring_and_a_test():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    for name in _hookspecs():
        assert f"#### `{name}(register)`" in README, f"{name} has no README section"
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert re.search(rf"def {name}\(", tests), f"no test plugin implements {name}"
    assert set(hookspecs.KINDS.values()) == _hookspecs()


def test_every_optional_capability_of_a_base_class_is_documented():
    from helix_framework.codec import Codec
    from helix_framework.rotation import Rotation

    for base in (Codec, Rotation):
        flags = [n for n, v in vars(base).items() if isinstance(v, bool) and n != "override"]
        assert flags, base
        for flag in flags:
            assert f"`{flag} = True`" in README, f"{base.__name__}.{flag} is not documented in README.md"


def test_every_environment_variable_is_documented():
    used = set()
    for path in [*ROOT.glob("helix_framework/**/*.py"), *ROOT.glob("jit/helix_jit/**/*.py"), *ROOT.glob("plugins/*/*/*.py")]:
        used |= set(re.findall(r"\bHELIX_[A-Z_]+[A-Z]\b", path.read_text()))
    assert used, "no environment variables found: the scan is broken"
    missing = sorted(v for v in used if f"`{v}" not in README)
    assert not missing, f"undocumented in README.md: {missing}"


def test_readme_shows_the_two_setup_commands():
    assert "make run" in README and "make test" in README


def test_every_user_facing_error_class_lives_in_errors_py_and_is_exported():
    import helix_framework
    from helix_framework import errors

    error_names = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    outside = []
    for path in [*ROOT.glob("helix_framework/**/*.py"), *ROOT.glob("plugins/*/helix_*/**/*.py")]:
        if path.name == "errors.py":
            continue
        for name, bases in re.findall(r"^class (\w+)\(([^)]*)\)", path.read_text(), re.M):
            if error_names & {b.strip().split(".")[-1] for b in bases.split(",")}:
                outside.append(f"{path.relative_to(ROOT)}: {name}")
    assert outside == []
    assert error_names <= set(helix_framework.__all__)
