"""The plugin host: built-ins, Python API, entry points, isolation, env."""

import json

import pytest

from helix_test_support import fake_distribution, run_helix
from helix_framework.errors import DuplicateNameError, PluginError, UnknownNameError
from helix_framework.host import Host

BUILTINS = {
    "codec": {"passthrough", "rtn"},
    "rotation": {"identity"},
    "compressor": {"truncate"},
    "measurement": {"rel_l2", "cosine", "icc_3_1", "icc_1_1", "icc_3_1_pairs", "icc_1_1_pairs", "token_agreement"},
}


def test_builtins_are_registered_as_plugins():
    host = Host(autoload=False)
    for kind, names in BUILTINS.items():
        assert set(host.names(kind)) == names
    reg = host.lookup("codec", "rtn")
    assert (reg.source, reg.distribution, reg.status) == ("builtin", "helix-framework", "loaded")
    assert host.failures == []


def test_python_api_register_and_unregister():
    from helix_test_plugins import toy_codec

    host = Host(autoload=False)
    name = host.register(toy_codec)
    reg = host.lookup("codec", "toy")
    assert reg.source == "Python API" and reg.plugin == name
    assert reg.lane_widths == ("F32x16",)
    host.unregister(toy_codec)
    with pytest.raises(UnknownNameError):
        host.codec("toy")


def test_unknown_name_lists_closest_installed_names():
    host = Host(autoload=False)
    with pytest.raises(UnknownNameError) as info:
        host.codec("rtm")
    assert info.value.suggestions == ["rtn"]
    assert "did you mean 'rtn'" in str(info.value) and "passthrough" in str(info.value)


def test_python_api_rejects_hookimpl_with_wrong_argument():
    from helix_test_plugins import bad_hookimpl

    host = Host(autoload=False)
    with pytest.raises(PluginError, match="lane_width"):
        host.register(bad_hookimpl)
    assert set(host.names("codec")) == BUILTINS["codec"]


def test_python_api_rejects_unknown_hook_and_raising_hook():
    from helix_test_plugins import raising_register, unknown_hook

    host = Host(autoload=False)
    with pytest.raises(PluginError, match="unknown hook helix_register_codec"):
        host.register(unknown_hook)
    with pytest.raises(PluginError, match="registry exploded"):
        host.register(raising_register)
    assert set(host.names("measurement")) == BUILTINS["measurement"]


def test_duplicate_name_is_an_error_naming_both():
    from helix_test_plugins import dup_rtn

    host = Host(autoload=False)
    host.register(dup_rtn)
    with pytest.raises(DuplicateNameError) as info:
        host.codec("rtn")
    assert "helix_framework.builtins" in str(info.value) and "dup_rtn" in str(info.value)
    statuses = {r.plugin: r.status for r in host.registrations() if r.name == "rtn"}
    assert set(statuses.values()) == {"failed"}
    assert host.codec("passthrough").name == "passthrough"  # the rest still works


def test_override_replaces_builtin():
    from helix_test_plugins import override_truncate

    host = Host(autoload=False)
    host.register(override_truncate)
    assert host.compressor("truncate").compress("abcdefgh", 4).text == "abgh"
    statuses = sorted(r.status for r in host.registrations() if r.name == "truncate")
    assert statuses == ["loaded", "overridden"]
    host.unregister(override_truncate)
    assert host.compressor("truncate").compress("abcdefgh", 4).text == "abcd"


def test_registering_a_non_component_fails():
    from helix_framework import hookimpl

    class Junk:
        @hookimpl
        def helix_register_rotations(self, register):
            register(object())

    host = Host(autoload=False)
    with pytest.raises(PluginError, match="must be an instance of helix_framework.Rotation"):
        host.register(Junk())


@pytest.fixture
def site(tmp_path):
    """A directory of fake installed distributions with helix entry points."""
    fake_distribution(tmp_path, "helix-toy", {"toy": "helix_test_plugins.toy_codec"})
    fake_distribution(tmp_path, "helix-broken", {"broken": "helix_test_plugins.broken_import"})
    fake_distribution(tmp_path, "helix-badhook", {"badhook": "helix_test_plugins.bad_hookimpl"})
    return tmp_path


def _by_name(rows):
    return {(r["kind"], r["name"]): r for r in rows}


def test_broken_entry_points_are_reported_and_others_load(site):
    proc = run_helix(["plugins", "--json"], pythonpath=[site])
    assert proc.returncode == 0, proc.stderr
    rows = _by_name(json.loads(proc.stdout))
    for row in rows.values():
        assert {"name", "kind", "distribution", "version", "source", "status", "error"} <= set(row)
    toy = rows[("codec", "toy")]
    assert (toy["source"], toy["distribution"], toy["status"]) == ("entry point", "helix-toy", "loaded")
    broken = rows[("plugin", "broken")]
    assert broken["status"] == "failed" and broken["distribution"] == "helix-broken"
    assert "ModuleNotFoundError" in broken["error"] and "helix_framework_this_module_does_not_exist" in broken["error"]
    badhook = rows[("plugin", "badhook")]
    assert badhook["status"] == "failed" and "lane_width" in badhook["error"]
    # every shipped plugin still loaded
    for key in [("codec", "campq"), ("rotation", "hadamard"), ("rotation", "opq"), ("compressor", "headroom")]:
        assert rows[key]["status"] == "loaded" and rows[key]["source"] == "entry point"


def test_strict_mode_exits_non_zero(site):
    proc = run_helix(["plugins", "--json"], pythonpath=[site], env={"HELIX_STRICT_PLUGINS": "1"})
    assert proc.returncode == 1
    assert any(r["status"] == "failed" for r in json.loads(proc.stdout))
    proc = run_helix(["check", "configs/codec/01_pr220_baseline.yaml"], pythonpath=[site],
                     env={"HELIX_STRICT_PLUGINS": "1"})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("helix: error: HELIX_STRICT_PLUGINS=1") and "broken" in last and "badhook" in last


def test_load_only_named_plugins(site):
    proc = run_helix(["plugins", "--json"], pythonpath=[site], env={"HELIX_LOAD_PLUGINS": "toy,helix-codec-opq"})
    rows = _by_name(json.loads(proc.stdout))
    assert ("codec", "toy") in rows and ("rotation", "opq") in rows
    assert ("plugin", "broken") not in rows and ("codec", "campq") not in rows
    assert ("codec", "rtn") in rows  # built-ins always load


def test_disable_autoload(site):
    proc = run_helix(["plugins", "--json"], pythonpath=[site], env={"HELIX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    rows = json.loads(proc.stdout)
    assert {r["source"] for r in rows} == {"builtin"}
    assert {r["name"] for r in rows} == set().union(*BUILTINS.values())


def test_plugins_table_output(site):
    proc = run_helix(["plugins"], pythonpath=[site])
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["kind", "name", "distribution"]
    assert any(line.startswith("plugin") and "failed: ModuleNotFoundError" in line for line in lines)


def test_trace_hooks_logs_each_registration(site):
    proc = run_helix(["plugins", "--json"], pythonpath=[site], env={"HELIX_TRACE_HOOKS": "1"})
    assert "hook helix_register_codecs plugin=toy registered=['toy']" in proc.stderr


def test_help_imports_no_plugin_and_no_numpy():
    import subprocess
    import sys

    code = (
        "import sys, helix_framework.cli as c; c.build_parser().format_help(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'numpy', 'llvmlite', 'scipy', 'helix_codec_campq', 'helix_codec_opq', 'helix_codec_hadamard', "
        "'helix_compressor_headroom', 'yaml', 'cattrs'}]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_params_whose_defaults_fail_validation_fail_at_registration():
    from helix_test_plugins import bad_defaults

    host = Host(autoload=False)
    with pytest.raises(PluginError, match=r"'bad_defaults'.*default params fail validation.*levels.*must be positive"):
        host.register(bad_defaults)
    assert "bad_defaults" not in host.names("codec")


def test_unknown_name_says_which_plugins_failed_to_load(site, tmp_path):
    config = tmp_path / "candidate.yaml"
    config.write_text("name: t\ncodec: broken_codec\n")
    proc = run_helix(["check", str(config)], pythonpath=[site])
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "unknown codec 'broken_codec'" in line
    assert "plugins that failed to load" in line and "broken (helix-broken)" in line and "ModuleNotFoundError" in line
