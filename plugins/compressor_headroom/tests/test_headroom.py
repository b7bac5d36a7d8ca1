import ast
import difflib
import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from helix_compressor_headroom.compressor import DISABLE_ENV, HeadroomCompressor
from helix_compressor_headroom.detect import detect_content_type, normalize_content_type
from helix_compressor_headroom.engines import Engine, Engines
from helix_framework import testing

headroom = pytest.importorskip("headroom")

# -- real content, built from the standard library -----------------------------

CODE = Path(inspect.getsourcefile(json.decoder)).read_text()
PROSE = "\n\n".join(
    inspect.getdoc(obj) for obj in (json, json.dumps, json.loads, json.JSONDecoder, json.JSONEncoder, difflib)
)
RECORDS = json.dumps(
    [{"id": i, "name": f"item{i}", "status": "error" if i % 7 == 0 else "ok", "value": i * 3.5} for i in range(80)],
    indent=2,
)
LOG = "\n".join(
    [f"2026-01-0{1 + i % 9}T10:{i % 60:02d}:00 INFO worker-{i % 4} processed batch={i} items=40" for i in range(150)]
    + ["2026-01-09T11:00:00 ERROR worker-2 batch failed", "Traceback (most recent call last):",
       '  File "svc.py", line 12, in run', "ValueError: bad record 17"]
    + [f"2026-01-09T11:0{i % 10}:00 WARNING worker-1 slow batch={200 + i}" for i in range(20)]
)


def _diff() -> str:
    old = Path(inspect.getsourcefile(json.encoder)).read_text().splitlines(keepends=True)
    new = [line.replace("indent", "indentation").replace("True", "False") for line in old]
    return "".join(difflib.unified_diff(old, new, "a/json/encoder.py", "b/json/encoder.py", n=6))


DIFF = _diff()
GIT_DIFF = "diff --git a/json/encoder.py b/json/encoder.py\n" + DIFF


@pytest.fixture(scope="module")
def compressor():
    return HeadroomCompressor(engines=Engines())


@pytest.mark.parametrize(
    ("text", "content_type", "path"),
    [
        (DIFF, "diff", "headroom.DiffCompressor"),
        (GIT_DIFF, "diff", "headroom.DiffCompressor"),
        (LOG, "log", "headroom.LogCompressor"),
        (CODE, "code", "headroom.CodeAwareCompressor"),
        (RECORDS, "json", "headroom.SmartCrusher"),
    ],
)
def test_each_dispatch_path_with_real_headroom(compressor, text, content_type, path):
    assert detect_content_type(text) == content_type
    for given in (content_type, None):  # given, and detected
        target = len(text) * 3 // 4
        result = testing.check_compressor(compressor, text, target, content_type=given)
        assert (result.path, result.fell_back) == (path, False), result.reason
        assert 0 < result.ratio < 0.75 + 1e-9
        assert "Retrieve more" not in result.text and "hash=" not in result.text  # CCR is off


def test_prose_goes_to_kompress_if_on_disk_else_textcrusher(compressor):
    assert detect_content_type(PROSE) == "prose"
    result = testing.check_compressor(compressor, PROSE, len(PROSE) // 2)
    assert result.path in {"headroom.TextCrusher", "headroom.KompressCompressor"} and not result.fell_back
    assert result.ratio <= 0.5


def test_compressed_python_still_parses(compressor):
    result = compressor.compress(CODE, len(CODE))  # fits: passthrough, nothing to check
    assert result.path == "passthrough" and result.text == CODE
    result = compressor.compress(CODE, len(CODE) - 1, content_type="code")
    assert result.path == "headroom.CodeAwareCompressor"
    ast.parse(result.text)  # short of the target, so nothing was cut


def test_output_is_cut_to_the_target(compressor):
    result = testing.check_compressor(compressor, LOG, 300, content_type="log")
    assert result.path == "headroom.LogCompressor" and len(result.text) == 300 and not result.fell_back


# -- fallback triggers -----------------------------------------------------------


def fake(run, python_check=False, kind="prose"):
    return HeadroomCompressor(engines=Engines({kind: lambda: Engine("headroom.Fake", run, python_check)}))


TEXT = "alpha beta gamma delta epsilon zeta eta theta iota kappa " * 20


def test_headroom_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "headroom", None)
    monkeypatch.setitem(sys.modules, "headroom.transforms", None)
    result = testing.check_compressor(HeadroomCompressor(engines=Engines()), TEXT, 100, content_type="prose")
    assert (result.path, result.fell_back, result.text) == ("truncate", True, TEXT[:100])
    assert "headroom-ai is not installed" in result.reason


class Blocked(BaseException):
    """Like headroom's OfflineEgressBlocked: a BaseException, not an Exception."""


@pytest.mark.parametrize("exc", [RuntimeError("boom"), Blocked("egress refused"), headroom.offline.OfflineEgressBlocked("x")])
def test_compressor_raises(exc):
    def run(text, target, question):
        raise exc

    result = fake(run).compress(TEXT, 100, content_type="prose")
    assert (result.path, result.fell_back, result.text) == ("truncate", True, TEXT[:100])
    assert type(exc).__name__ in result.reason


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupts_are_not_swallowed(exc):
    def run(text, target, question):
        raise exc()

    with pytest.raises(exc):
        fake(run).compress(TEXT, 100, content_type="prose")


def test_engine_creation_raises_a_base_exception():
    def build():
        raise Blocked("no network")

    result = HeadroomCompressor(engines=Engines({"prose": build})).compress(TEXT, 50, content_type="prose")
    assert result.fell_back and "Blocked" in result.reason


@pytest.mark.parametrize(("out", "why"), [("", "empty"), ("   \n", "empty"), (TEXT, "unchanged"), (TEXT + "x", "unchanged")])
def test_empty_or_unchanged_output(out, why):
    result = fake(lambda text, target, q: out).compress(TEXT, 100, content_type="prose")
    assert result.fell_back and result.path == "truncate" and why in result.reason


def test_time_limit():
    def slow(text, target, question):
        time.sleep(3)
        return "short"

    t0 = time.perf_counter()
    result = HeadroomCompressor(engines=Engines({"prose": lambda: Engine("headroom.Slow", slow)}), time_limit=0.2).compress(
        TEXT, 100, content_type="prose"
    )
    assert time.perf_counter() - t0 < 1.5
    assert result.fell_back and "time limit" in result.reason


def test_python_that_no_longer_parses_falls_back():
    source = "def f(x):\n    return x + 1\n\n" * 40
    result = fake(lambda text, target, q: "def f(x:\n", python_check=True, kind="code").compress(source, 200, content_type="code")
    assert result.fell_back and "does not parse" in result.reason and result.text == source[:200]


def test_env_toggle_forces_truncation(monkeypatch):
    engines = Engines({"prose": lambda: Engine("headroom.Fake", lambda text, target, q: "kept")})
    monkeypatch.setenv(DISABLE_ENV, "1")
    result = HeadroomCompressor(engines=engines).compress(TEXT, 100, content_type="prose")
    assert (result.path, result.fell_back, result.reason) == ("truncate", True, f"{DISABLE_ENV}=1")
    assert engines.created == {}  # headroom was not even touched
    monkeypatch.setenv(DISABLE_ENV, "0")
    result = HeadroomCompressor(engines=engines).compress(TEXT, 100, content_type="prose")
    assert (result.path, result.text, result.fell_back) == ("headroom.Fake", "kept", False)


def test_unknown_content_type_and_bad_target():
    with pytest.raises(ValueError, match="unknown content type"):
        HeadroomCompressor().compress(TEXT, 10, content_type="spreadsheet")
    with pytest.raises(ValueError, match="target"):
        HeadroomCompressor().compress(TEXT, -1)
    assert normalize_content_type("patch") == "diff" and normalize_content_type("text") == "prose"


# -- threads -----------------------------------------------------------------------


def test_engines_are_built_once_under_contention():
    def build():
        time.sleep(0.05)  # widen the race window
        return Engine("headroom.Fake", lambda text, target, q: text[: target // 2])

    engines = Engines({"prose": build})
    comp = HeadroomCompressor(engines=engines)
    barrier = threading.Barrier(24)
    results = []

    def worker():
        barrier.wait()
        results.append(comp.compress(TEXT, 100, content_type="prose"))

    threads = [threading.Thread(target=worker) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engines.created == {"prose": 1}
    assert len(results) == 24 and all(r.text == TEXT[:50] and not r.fell_back for r in results)


def test_many_threads_one_instance_real_headroom():
    engines = Engines()
    comp = HeadroomCompressor(engines=engines)
    cases = [(DIFF, "diff"), (LOG, "log"), (CODE, "code"), (RECORDS, "json"), (PROSE, "prose")]
    expected = {ct: comp.compress(text, len(text) * 3 // 4, content_type=ct) for text, ct in cases}
    errors, results = [], []

    def worker(i):
        try:
            for j in range(6):
                text, ct = cases[(i + j) % len(cases)]
                results.append((ct, comp.compress(text, len(text) * 3 // 4, content_type=ct)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 96  # nothing escaped compress()
    for ct, result in results:
        assert len(result.text) <= len(cases[0][0]) and result.path
        if ct == "code":
            # CodeAwareCompressor's output varies under concurrency, and it can
            # emit invalid Python (headroom logs "invalid syntax ... returning
            # original"): the bridge must then fall back; else the text parses
            if result.fell_back:
                assert result.path == "truncate" and result.reason
            else:
                assert result.path == "headroom.CodeAwareCompressor"
                ast.parse(result.text)
            continue
        assert result == expected[ct], result.reason  # deterministic under concurrency
    assert set(engines.created.values()) == {1}


def test_offline_switches_are_set_before_import():
    HeadroomCompressor(engines=Engines()).compress(TEXT, 100, content_type="prose")
    for key, value in {"HF_HUB_OFFLINE": "1", "HEADROOM_BEACON": "off", "HEADROOM_STATELESS": "1",
                       "HEADROOM_OFFLINE": "1", "HEADROOM_TELEMETRY": "off"}.items():
        assert os.environ[key] == value
