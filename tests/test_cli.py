"""The command line as a user meets it: check, tensors, help, -v, suggestions."""

import argparse
import json

from helix_test_support import run_helix
from helix_framework.cli import build_parser

CANDIDATE = "name: ok\ncodec: rtn\nparams: {bits: 4, group_size: 32}\n"
SWEEP = "name: s\ncodec: rtn\ngrid:\n  bits: [4, 8]\n  group_size: [32, 64, 128]\n"


def test_check_reports_every_file_and_reads_sweeps(tmp_path):
    good, bad, sweep = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "sweep.yaml"
    good.write_text(CANDIDATE)
    bad.write_text(CANDIDATE.replace("bits: 4", "bits: 11"))
    sweep.write_text(SWEEP)
    proc = run_helix(["check", str(bad), str(good), str(sweep)])
    assert proc.returncode == 2
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"ok  {good}: candidate ok codec=rtn")
    assert out[1] == f"ok  {sweep}: sweep s: 6 points over bits, group_size"
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith(f"helix: error: {bad}:3: $.params.bits:") and err[1] == "helix: 1 of 3 files failed"
    assert "Traceback" not in proc.stderr


def test_tensors_lists_every_tensor_with_its_route():
    proc = run_helix(["tensors", "minilm", "--json"], check=True)
    rows = json.loads(proc.stdout)
    assert len(rows) == 104
    by_name = {r["name"]: r for r in rows}
    q = by_name["encoder.layer.0.attention.self.query.weight"]
    assert (q["dtype"], q["shape"], q["route"], q["rule"]) == ("F32", [384, 384], "codec", "attention")
    assert by_name["embeddings.word_embeddings.weight"]["route"] == "passthrough"
    assert sum(r["route"] == "codec" for r in rows) == 37


def test_unknown_tensor_suggests_close_names(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CANDIDATE)
    proc = run_helix(["probe", "minilm", "--tensor", "encoder.layer.0.attention.self.querry.weight",
                      "--config", str(cfg)])
    assert proc.returncode == 2
    assert "did you mean 'encoder.layer.0.attention.self.query.weight'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_verbose_after_the_subcommand():
    quiet = run_helix(["tensors", "minilm"], check=True)
    loud = run_helix(["tensors", "minilm", "-v"], check=True)
    assert "INFO" not in quiet.stderr and "helix: INFO: opened HF directory" in loud.stderr
    assert build_parser().parse_args(["-v", "tensors", "minilm"]).verbose  # not reset by the subcommand


def test_every_command_and_argument_has_help_and_the_exit_codes_are_stated():
    parser = build_parser()
    assert "exit codes: 0" in parser.epilog and "1 a negative verdict" in parser.epilog
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(path + [name])
                    walk(sub, path + [name])
            elif not action.help:
                missing.append(path + [action.dest])

    walk(parser, ["helix"])
    assert missing == []
