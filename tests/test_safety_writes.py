"""Hostile and unlucky cases of writing outputs: crafted manifests, side files
and symlinks, decode targets, concurrent writers, user files beside the
artifacts, interrupts, impossible shapes, unusable output paths.

Each case checks the exit code, a one-line message without a traceback, that
nothing outside the output changed (a snapshot of the test's directory), and
that an earlier result is still whole (verify passes) where there was one.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from helix_test_support import ROOT, TESTS
from helix_framework import artifacts
from helix_framework.cli import main

CONFIG = "name: t\ncodec: rtn\nparams: {bits: 8}\nrows: {calibration: 32, measurement: 16, seed: 1}\n"
CONFIG4 = "name: t4\ncodec: rtn\nparams: {bits: 4, group_size: 32}\nrows: {calibration: 32, measurement: 16, seed: 1}\n"


def tensors():
    rng = np.random.default_rng(3)
    return {
        "model.embed_tokens.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(64, np.float32),
    }


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "c4.yaml").write_text(CONFIG4)
    return tmp_path / "c.yaml"


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    return path


@pytest.fixture
def hf_model(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    save_file(tensors(), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    (d / "tokenizer_config.json").write_text("{}")
    return d


def helix(capsys, *args):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_refused(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("helix: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def snapshot(root):
    """Every path under ``root``: a file's SHA-256, a link's target, or 'dir'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def calibrated(capsys, model, cfg, out):
    code, _, err = helix(capsys, "calibrate", model, "--config", cfg, "--out", out)
    assert code == 0, err
    return out


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def edit_manifest(out, change):
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


# -- crafted manifests and side files -----------------------------------------------


def test_side_file_names_with_traversal_are_refused_by_verify_and_decode(tmp_path, capsys, hf_model, cfg):
    out = calibrated(capsys, hf_model, cfg, tmp_path / "out")
    attacker = tmp_path / "att" / "src"
    attacker.mkdir(parents=True)
    (tmp_path / "att" / "victim.txt").write_text("attacker's bytes")
    home = tmp_path / "home"
    (home / "dec").mkdir(parents=True)
    (home / "victim.txt").write_text("the user's file")

    def craft(m):
        m["source"]["path"] = str(attacker)
        m["source"]["tokenizer_files"] = ["tokenizer.json", "../victim.txt"]

    edit_manifest(out, craft)
    before = snapshot(tmp_path)
    assert_refused(*helix(capsys, "verify", out)[::2], "tokenizer_files[1]", "'../victim.txt'")
    assert_refused(*helix(capsys, "decode", out, "--out", home / "dec" / "m.safetensors")[::2], "tokenizer_files[1]")
    assert snapshot(tmp_path) == before
    assert (home / "victim.txt").read_text() == "the user's file"


@pytest.mark.parametrize("field, value, fragment", [
    ("kind", "../../etc", "$.source.kind"),
    ("kind", None, "$.source.kind"),
    ("path", "relative/dir", "$.source.path"),
    ("path", ["/"], "$.source.path"),
])
def test_verify_rejects_a_malformed_source(tmp_path, capsys, model, cfg, field, value, fragment):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    edit_manifest(out, lambda m: m["source"].__setitem__(field, value))
    before = snapshot(tmp_path)
    assert_refused(*helix(capsys, "verify", out)[::2], fragment)
    assert_refused(*helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")[::2], fragment)
    assert snapshot(tmp_path) == before


def test_side_file_symlinks_must_stay_inside_the_source(tmp_path, capsys, hf_model, cfg):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (hf_model / "tokenizer.json").unlink()
    (hf_model / "tokenizer.json").symlink_to(secret)
    out = calibrated(capsys, hf_model, cfg, tmp_path / "out")
    dec = tmp_path / "dec"
    before = snapshot(tmp_path)
    code, _, err = helix(capsys, "decode", out, "--out", dec / "m.safetensors")
    assert_refused(code, err, "tokenizer.json", "outside the source directory")
    assert snapshot(tmp_path) == before and not dec.exists()

    # A link that stays inside the directory is fine; its bytes are copied.
    (hf_model / "tok").mkdir()
    (hf_model / "tok" / "t.json").write_text('{"inside": true}')
    (hf_model / "tokenizer.json").unlink()
    (hf_model / "tokenizer.json").symlink_to("tok/t.json")
    out2 = calibrated(capsys, hf_model, cfg, tmp_path / "out2")
    code, stdout, err = helix(capsys, "decode", out2, "--out", dec / "m.safetensors")
    assert code == 0, err
    assert (dec / "tokenizer.json").read_text() == '{"inside": true}' and not (dec / "tokenizer.json").is_symlink()
    assert "copied config.json, tokenizer.json, tokenizer_config.json" in stdout

    # A Hugging Face hub cache links every file of snapshots/<rev>/ to ../../blobs/: inside too.
    repo = tmp_path / "models--org--m"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    save_file(tensors(), str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (blobs / "f00d").write_text('{"blob": 1}')
    (snap / "tokenizer.json").symlink_to("../../blobs/f00d")
    out3 = calibrated(capsys, snap, cfg, tmp_path / "out3")
    code, _, err = helix(capsys, "decode", out3, "--out", tmp_path / "dec3" / "m.safetensors")
    assert code == 0, err
    assert (tmp_path / "dec3" / "tokenizer.json").read_text() == '{"blob": 1}'


def test_side_files_are_written_by_rename_and_stale_temporaries_cleaned(tmp_path, capsys, hf_model, cfg, monkeypatch):
    out = calibrated(capsys, hf_model, cfg, tmp_path / "out")
    dec = tmp_path / "dec"
    dec.mkdir()
    (dec / "tokenizer.json").write_text("old tokenizer")
    stale = dec / f".helix-tmp-{dead_pid()}-abc.side"
    stale.write_bytes(b"half a file")
    users = [dec / ".tmp-notes.json", dec / f".helix-tmp-{os.getpid()}-live.side"]
    for p in users:
        p.write_text("not stale")

    real = shutil.copyfileobj
    calls = {"n": 0}

    def interrupted(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second side file: write some bytes, then Ctrl-C
            dst.write(src.read(3))
            raise KeyboardInterrupt
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfileobj", interrupted)
    code, _, err = helix(capsys, "decode", out, "--out", dec / "m.safetensors")
    assert code == 130 and "interrupted" in err
    assert not stale.exists() and all(p.read_text() == "not stale" for p in users)
    assert (dec / "tokenizer.json").read_text() == "old tokenizer"  # the old one whole, not 3 bytes
    assert sorted(p.name for p in dec.iterdir()) == sorted(
        ["config.json", "m.safetensors", "tokenizer.json", *(p.name for p in users)])


# -- decode targets ----------------------------------------------------------------


@pytest.mark.parametrize("target, fragment", [
    ("out/manifest.json", "calibration output"),
    ("ARTIFACT", "calibration output"),
    ("out/tensors/new.safetensors", "calibration output"),
    ("model.safetensors", "source model"),
    ("LINK", "source model"),
    ("existing_dir", "is a directory"),
    ("m.bin", ".bin/.pt"),
    ("m.PT", ".bin/.pt"),
])
def test_decode_refuses_targets_it_must_not_write(tmp_path, capsys, model, cfg, target, fragment):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    (tmp_path / "existing_dir").mkdir()
    if target == "ARTIFACT":
        target = str(out / next(artifacts.artifact_files(artifacts.read_manifest(out)))["file"])
    if target == "LINK":
        os.link(model, tmp_path / "hardlink.safetensors")
        target = "hardlink.safetensors"
    before = snapshot(tmp_path)
    assert_refused(*helix(capsys, "decode", out, "--out", tmp_path / target)[::2], fragment)
    assert snapshot(tmp_path) == before
    assert helix(capsys, "verify", out)[0] == 0


def test_decode_refuses_writing_into_a_hugging_face_source(tmp_path, capsys, hf_model, cfg):
    out = calibrated(capsys, hf_model, cfg, tmp_path / "out")
    before = snapshot(tmp_path)
    for target in (hf_model / "model.safetensors", hf_model / "decoded.safetensors", tmp_path / "d" / "config.json"):
        code, _, err = helix(capsys, "decode", out, "--out", target)
        assert_refused(code, err, str(target))
    assert snapshot(tmp_path) == before


# -- concurrent writers ------------------------------------------------------------


def hold_lock(directory):
    """A live process holding the output lock of ``directory`` (like a running calibrate)."""
    code = ("import sys, time\nfrom helix_framework.outlock import hold\n"
            "with hold(sys.argv[1], 'calibrate'):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_calibrate_on_one_out_refuses_naming_the_holder(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    manifest = (out / "manifest.json").read_bytes()
    holder = hold_lock(out)
    try:
        before = snapshot(tmp_path)
        code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
        assert_refused(code, err, f"in use by process {holder.pid} (calibrate)")
        assert snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file stays behind with a dead pid: taken over.
    assert (out / ".helix-lock").read_text().split()[0] == str(holder.pid)
    assert (out / "manifest.json").read_bytes() == manifest and helix(capsys, "verify", out)[0] == 0
    code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
    assert code == 0, err
    assert not (out / ".helix-lock").exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["name"] == "t4"


def test_second_sweep_on_one_db_refuses_naming_the_holder(tmp_path, capsys, model):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\ncodec: rtn\ngrid: {bits: [4, 8]}\n"
                     "fixed: {rows: {calibration: 32, measurement: 16, seed: 1}}\nmeasure: [rel_l2]\n")
    db = tmp_path / "db"
    db.mkdir()
    holder = hold_lock(db)
    try:
        before = snapshot(tmp_path)
        code, _, err = helix(capsys, "sweep", sweep, "--model", model, "--db", db, "--jobs", 1)
        assert_refused(code, err, f"in use by process {holder.pid}")
        assert snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, _, err = helix(capsys, "sweep", sweep, "--model", model, "--db", db, "--jobs", 1)
    assert code == 0, err
    from helix_framework.results import CANDIDATES, ResultsDB
    assert len(ResultsDB(db).rows(CANDIDATES)) == 2


# -- the user's files and interrupts -------------------------------------------------


def test_calibrate_deletes_only_files_it_wrote(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    old = {r["file"] for r in artifacts.artifact_files(artifacts.read_manifest(out))}
    mine = out / "tensors" / "mine.safetensors"
    save_file({"x": np.arange(4, dtype=np.float32)}, str(mine))
    (out / "tensors" / "notes.txt").write_text("keep")
    mine_bytes = mine.read_bytes()
    code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
    assert code == 0, err
    new = {r["file"] for r in artifacts.artifact_files(artifacts.read_manifest(out))}
    assert mine.read_bytes() == mine_bytes and (out / "tensors" / "notes.txt").read_text() == "keep"
    left = {f"tensors/{p.name}" for p in (out / "tensors").iterdir()}
    assert left == new | {"tensors/mine.safetensors", "tensors/notes.txt"} and not (old - new) & left
    code, stdout, err = helix(capsys, "verify", out)
    assert code == 0 and stdout.endswith(f"{len(new)} of {len(new)} artifact files match the manifest\n")
    assert err.splitlines() == [
        "warning: tensors/mine.safetensors is not referenced by the manifest (not written by this run; left alone)",
        "warning: tensors/notes.txt is not referenced by the manifest (not written by this run; left alone)"]


def test_ctrl_c_during_calibrate_removes_its_orphans_and_keeps_the_old_result(tmp_path, capsys, model, cfg,
                                                                             monkeypatch):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    before = snapshot(tmp_path)
    import helix_framework.calibrate as cal

    real = cal.calibrate_matrix
    calls = {"n": 0}

    def interrupted(x, name, comp, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first new artifact file is on disk
            raise KeyboardInterrupt
        return real(x, name, comp, **kwargs)

    monkeypatch.setattr(cal, "calibrate_matrix", interrupted)
    code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
    assert code == 130 and err == "helix: interrupted\n"
    assert calls["n"] == 2
    assert snapshot(tmp_path) == before
    assert helix(capsys, "verify", out)[0] == 0


def test_stale_temporaries_of_dead_runs_are_cleaned_at_the_next_run(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    pid = dead_pid()
    stale = [out / f".helix-tmp-{pid}-x1.json", out / "tensors" / f".helix-tmp-{pid}-x2.safetensors"]
    kept = [out / ".tmp-users-own.json", out / f".helix-tmp-{os.getpid()}-busy.json", out / "tensors" / "readme"]
    for p in stale + kept:
        p.write_text("{")
    code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
    assert code == 0, err
    assert not any(p.exists() for p in stale) and all(p.read_text() == "{" for p in kept)
    assert not [p for p in out.rglob(".helix-tmp-*") if p not in kept]


# -- shapes decode cannot rebuild and manifest structure ---------------------------------


def raw_safetensors(path, entries, data=b""):
    head = json.dumps(entries).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


@pytest.mark.parametrize("dtype, shape, nbytes", [("F32", [0, 2**64], 0), ("F32", [1] * 70, 4), ("XYZ", [4], 4)])
def test_tensors_decode_cannot_rebuild_are_refused_at_calibrate(tmp_path, capsys, cfg, dtype, shape, nbytes):
    q = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32).tobytes()
    path = raw_safetensors(tmp_path / "m.safetensors", {
        "a.q_proj.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, len(q)]},
        "odd.weight": {"dtype": dtype, "shape": shape, "data_offsets": [len(q), len(q) + nbytes]},
    }, q + bytes(nbytes))
    before = snapshot(tmp_path)
    code, _, err = helix(capsys, "calibrate", path, "--config", cfg, "--out", tmp_path / "out")
    assert_refused(code, err, "'odd.weight'")
    assert snapshot(tmp_path) == before  # no output directory either


def test_rebuild_problem_names_the_reason():
    assert artifacts.rebuild_problem("F32", [0, 2**64]) == "shape [0, 18446744073709551616] has more elements than " \
        "an array can address"
    assert artifacts.rebuild_problem("F16", [2**31, 2**31, 2]) is not None
    assert artifacts.rebuild_problem("F32", [1] * 70) == "70 dimensions (at most 64)"
    assert "'XYZ'" in artifacts.rebuild_problem("XYZ", [4])
    assert "'Q8_K'" in artifacts.rebuild_problem("Q8_K", [256])  # a GGML type gguf cannot dequantize
    for dtype, shape in (("F32", [1] * 64), ("Q4_0", [32, 64]), ("F8_E4M3", [3]), ("BF16", [0, 2**40]), ("U8", [])):
        assert artifacts.rebuild_problem(dtype, shape) is None, dtype


def test_f8_passthrough_is_rebuilt_bit_exactly(tmp_path, capsys, cfg):
    q = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32).tobytes()
    f8 = bytes(range(7, 7 + 24))
    path = raw_safetensors(tmp_path / "m.safetensors", {
        "a.q_proj.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, len(q)]},
        "scale.weight": {"dtype": "F8_E4M3", "shape": [4, 6], "data_offsets": [len(q), len(q) + 24]},
    }, q + f8)
    out = calibrated(capsys, path, cfg, tmp_path / "out")
    code, _, err = helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")
    assert code == 0, err
    from helix_framework.sources.safetensors_file import SafetensorsFile

    rebuilt = SafetensorsFile(tmp_path / "d.safetensors")
    assert rebuilt.entries["scale.weight"].dtype == "F8_E4M3" and rebuilt.entries["scale.weight"].shape == (4, 6)
    assert bytes(rebuilt.raw("scale.weight")) == f8


def _entry(m, route="codec"):
    return next(e for e in m["tensors"] if e["route"] == route)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda m: m.clear() or m.update({"schema_version": 1, "tensors": []}), "$.source"),
    (lambda m: m.__setitem__("tensors", {"a": 1}), "$.tensors: expected a list"),
    (lambda m: _entry(m).pop("files"), ".files: expected a non-empty list"),
    (lambda m: _entry(m).__setitem__("files", []), ".files: expected a non-empty list"),
    (lambda m: _entry(m)["files"][0].__setitem__("file", "../../outside.safetensors"), ".files[0].file"),
    (lambda m: _entry(m)["files"][0].__setitem__("file", "/etc/passwd"), ".files[0].file"),
    (lambda m: _entry(m)["files"][0].__setitem__("sha256", 7), ".files[0].sha256"),
    (lambda m: _entry(m).__setitem__("shape", ["64", 64]), ".shape[0]"),
    (lambda m: _entry(m).__setitem__("shape", [1] * 70), "70 dimensions (at most 64); decode cannot rebuild it"),
    (lambda m: _entry(m, "passthrough").__setitem__("dtype", "Q9_Z"), "dtype 'Q9_Z'"),
    (lambda m: _entry(m).pop("codec_meta"), ".codec_meta"),
    (lambda m: _entry(m).__setitem__("route", "exec"), ".route"),
    (lambda m: m["tensors"].append(dict(_entry(m))), "listed twice"),
    (lambda m: m["codec"].__setitem__("name", None), "$.codec.name"),
])
def test_verify_and_decode_check_the_manifest_shape_first(tmp_path, capsys, model, cfg, mutate, fragment):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    edit_manifest(out, mutate)
    before = snapshot(tmp_path)
    assert_refused(*helix(capsys, "verify", out)[::2], "manifest.json", fragment)
    assert_refused(*helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")[::2], fragment)
    assert snapshot(tmp_path) == before


def test_artifacts_that_disagree_with_their_entry_are_one_line(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    good = (out / "manifest.json").read_text()
    raw = raw_safetensors(tmp_path / "x", {"weight": {"dtype": "F32", "shape": [2]}})  # no data_offsets
    name, sha = f"tensors/evil-{hashlib.sha256(raw.read_bytes()).hexdigest()[:16]}.safetensors", \
        hashlib.sha256(raw.read_bytes()).hexdigest()
    shutil.move(raw, out / name)
    evil = [{"file": name, "sha256": sha, "bytes": 40}]
    for change in (lambda m: _entry(m, "passthrough").__setitem__("shape", [3, 5]),
                   lambda m: _entry(m, "passthrough").__setitem__("files", evil)):
        (out / "manifest.json").write_text(good)
        edit_manifest(out, change)
        assert helix(capsys, "verify", out)[0] == 0  # the hashes match: only decode finds out
        before = snapshot(tmp_path)
        code, _, err = helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")
        assert_refused(code, err, "model.embed_tokens.weight")
        assert snapshot(tmp_path) == before


def test_a_linked_tensors_directory_is_refused(tmp_path, capsys, model, cfg):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tensors").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    code, _, err = helix(capsys, "calibrate", model, "--config", cfg, "--out", tmp_path / "out")
    assert_refused(code, err, "tensors is a link")
    assert snapshot(tmp_path) == before


def test_a_manifest_that_is_not_an_object_is_one_line(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    for text in ("[1, 2]", '"x"', "[" * 100000):
        (out / "manifest.json").write_text(text)
        assert_refused(*helix(capsys, "verify", out)[::2], "manifest.json")
        assert_refused(*helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")[::2], "manifest.json")
    assert not (tmp_path / "d.safetensors").exists()


# -- output paths ----------------------------------------------------------------


def test_calibrate_out_that_is_a_file_or_under_one(tmp_path, capsys, model, cfg):
    (tmp_path / "afile").write_text("user data")
    before = snapshot(tmp_path)
    for out, fragment in ((tmp_path / "afile", "not a directory"), (tmp_path / "afile" / "sub", "not a directory")):
        assert_refused(*helix(capsys, "calibrate", model, "--config", cfg, "--out", out)[::2], str(out), fragment)
    assert snapshot(tmp_path) == before


def test_bad_model_leaves_no_output_directory(tmp_path, capsys, cfg):
    before = snapshot(tmp_path)
    code, _, err = helix(capsys, "calibrate", tmp_path / "nope.safetensors", "--config", cfg, "--out",
                         tmp_path / "new" / "out")
    assert code == 2 and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_a_full_disk_is_one_line_and_keeps_the_old_result(tmp_path, capsys, model, cfg, monkeypatch):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    before = snapshot(tmp_path)
    real = os.fsync

    def full(fd):
        if ".helix-tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = helix(capsys, "calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out)
    assert_refused(code, err, str(out / "tensors"), "no space left on the device")
    code, _, err = helix(capsys, "decode", out, "--out", tmp_path / "d.safetensors")
    assert_refused(code, err, str(tmp_path / "d.safetensors"), "no space left on the device")
    assert snapshot(tmp_path) == before
    monkeypatch.setattr(os, "fsync", real)
    assert helix(capsys, "verify", out)[0] == 0


def test_sweep_db_that_is_a_file(tmp_path, capsys, model):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\ncodec: rtn\ngrid: {bits: [8]}\nfixed: {rows: {calibration: 32, measurement: 16}}\n"
                     "measure: [rel_l2]\n")
    (tmp_path / "db").write_text("user data")
    before = snapshot(tmp_path)
    for db in (tmp_path / "db", tmp_path / "db" / "sub"):
        code, _, err = helix(capsys, "sweep", sweep, "--model", model, "--db", db, "--jobs", 1)
        assert_refused(code, err, str(db), "not a directory")
    assert snapshot(tmp_path) == before


# Real read-only and full file systems, mounted in a private mount namespace.

def _can_unshare():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_mounts = pytest.mark.skipif(not _can_unshare(), reason="needs unshare -rm (user and mount namespaces)")


def helix_in_namespace(setup, args):
    """Run ``setup`` (shell) then the helix CLI inside a private mount namespace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELIX_") or k == "HELIX_JIT_CACHE_DIR"}
    env["PYTHONPATH"] = str(TESTS)
    script = f'{setup} && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "helix_framework.cli",
                           *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@needs_mounts
def test_read_only_out_and_db_are_one_line(tmp_path, capsys, model, cfg):
    out = calibrated(capsys, model, cfg, tmp_path / "out")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: s\ncodec: rtn\ngrid: {bits: [8]}\nfixed: {rows: {calibration: 32, measurement: 16}}\n"
                     "measure: [rel_l2]\n")
    (tmp_path / "db").mkdir()
    before = snapshot(tmp_path)
    ro = f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path}"
    for args, where in (
        (["calibrate", model, "--config", tmp_path / "c4.yaml", "--out", out], out),
        (["calibrate", model, "--config", cfg, "--out", tmp_path / "fresh"], tmp_path / "fresh"),
        (["sweep", sweep, "--model", model, "--db", tmp_path / "db", "--jobs", "1"], tmp_path / "db"),
        (["decode", out, "--out", tmp_path / "d.safetensors"], tmp_path),
    ):
        proc = helix_in_namespace(ro, args)
        assert_refused(proc.returncode, proc.stderr, str(where), "read-only file system")
    assert snapshot(tmp_path) == before
    assert helix(capsys, "verify", out)[0] == 0


@needs_mounts
def test_a_really_full_disk_is_one_line(tmp_path, model, cfg):
    small = tmp_path / "small"
    small.mkdir()
    proc = helix_in_namespace(f"mount -t tmpfs -o size=16k tmpfs {small}",
                              ["calibrate", model, "--config", cfg, "--out", small / "out"])
    assert_refused(proc.returncode, proc.stderr, "no space left on the device")
    assert not (small / "out").exists()
