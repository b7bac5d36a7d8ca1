"""`helix serve` driven over HTTP: a real server process on a free loopback port.

Every server a test starts is stopped by the `server` fixture (terminate,
then kill), and binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

RTN = {"name": "rtn4", "codec": "rtn", "params": {"bits": 4, "group_size": 32, "symmetric": True},
       "rotation": {"kind": "identity"}, "rows": {"calibration": 256, "measurement": 128, "seed": 42},
       "measure": ["rel_l2"]}
ONE_MATRIX = r"layer\.0\.attention\.output\.dense\.weight"
# Slow enough to cancel or kill mid-run: residual VQ on every matrix of MiniLM.
SLOW = {"name": "slow", "codec": "campq", "rotation": {"kind": "identity"},
        "params": {"subspace_dim": 8, "centroids": 256, "codebook": "shared", "residual": {"depth": 3, "centroids": 256},
                   "max_iter": 25},
        "rows": {"calibration": 512, "measurement": 256, "seed": 1}, "measure": ["rel_l2"]}
BAD_YAML = "name: x\ncodec: rtn\nparams:\n  bits: 4\n  bogus: 3\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cwd: Path, *args: str):
        self.cwd, self.args = cwd, args
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, headers: dict[str, str] | None = None) -> Server:
        cmd = [sys.executable, "-m", "helix_framework.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *self.args]
        env = {**os.environ, "HELIX_CACHE_DIR": str(self.cwd / "cache")}
        self.log = open(self.cwd / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.cwd / f"server-{self.port}.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/v1/health", headers=headers, timeout=2).status_code in (200, 401):
                    return self
            time.sleep(0.2)
        raise AssertionError("server did not come up")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def server(tmp_path):
    """Start servers in ``tmp_path`` (its working directory and only root); all stopped at the end."""
    started: list[Server] = []

    def start(*args: str, headers: dict[str, str] | None = None) -> Server:
        srv = Server(tmp_path, *args)
        started.append(srv)
        return srv.start(headers)

    try:
        yield start
    finally:
        for srv in started:
            srv.stop(signal.SIGKILL if srv.proc and srv.proc.poll() is None else signal.SIGTERM)


def _wait(client: httpx.Client, job_id: str, until: callable, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached the wanted state: {job}")


def _done(job: dict) -> bool:
    return job["state"] in ("done", "failed", "cancelled", "interrupted")


def _submit(client: httpx.Client, out: str, candidate: dict = RTN, tensors: str | None = ONE_MATRIX) -> str:
    r = client.post("/v1/calibrate", json={"model": "minilm", "candidate": candidate, "tensors": tensors, "out": out})
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_health_check_and_request_errors(server, tmp_path):
    srv = server()
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        health = c.get("/v1/health").json()
        assert health["status"] == "ok" and health["queue"] == 0 and health["uptime"] >= 0
        assert any(p["name"] == "rtn" and p["kind"] == "codec" for p in c.get("/v1/plugins").json())

        ok = c.post("/v1/check", content=Path("configs/codec/default.yaml").read_text()
                    if Path("configs/codec/default.yaml").exists() else "name: a\ncodec: rtn\n")
        assert ok.status_code == 200 and ok.json()["ok"] is True
        assert c.post("/v1/check", json=RTN).json()["kind"] == "candidate"

        bad = c.post("/v1/check", content=BAD_YAML)
        assert bad.status_code == 400
        assert bad.json()["path"] == "$.params.bogus" and bad.json()["line"] == 5
        assert "bogus" in bad.json()["error"]
        bad_json = c.post("/v1/check", json={**RTN, "params": {"bits": "four"}})
        assert bad_json.status_code == 400 and bad_json.json()["path"] == "$.params.bits"
        nested = c.post("/v1/calibrate", json={"model": "minilm", "candidate": BAD_YAML, "out": "o"})
        assert nested.status_code == 400
        assert nested.json()["path"] == "$.candidate.params.bogus" and nested.json()["line"] == 5

        for body, key in (({"model": "minilm", "candidate": RTN, "out": "/etc/helix-out"}, "$.out"),
                          ({"model": "/etc/passwd", "candidate": RTN, "out": "o"}, "$.model"),
                          ({"model": "minilm", "candidate": RTN, "out": "../outside"}, "$.out")):
            r = c.post("/v1/calibrate", json=body)
            assert r.status_code == 403 and r.json()["path"] == key, r.text
        r = c.post("/v1/agree", json={"model": "minilm", "artifacts": "/tmp"})
        assert r.status_code == 403 and r.json()["path"] == "$.artifacts"
        assert not (tmp_path.parent / "outside").exists()

        big = c.post("/v1/check", content="#" * ((1 << 20) + 1))
        assert big.status_code == 413 and "error" in big.json()
        missing = c.get("/v1/jobs/nope")
        assert missing.status_code == 404 and missing.json()["path"] == "job_id"
        assert c.get("/v1/frontier").status_code == 404  # no results database yet
    assert srv.proc.poll() is None


def test_token_required(server, tmp_path):
    srv = server("--token", "s3cret", headers={"Authorization": "Bearer s3cret"})
    assert httpx.get(srv.url + "/v1/health").status_code == 401
    wrong = httpx.get(srv.url + "/v1/health", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["path"] == "Authorization"
    assert httpx.get(srv.url + "/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    # a non-loopback address without a token refuses to start (and so binds nothing)
    r = subprocess.run([sys.executable, "-m", "helix_framework.cli", "serve", "--host", "0.0.0.0", "--port",
                        str(_free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--token" in r.stderr and "Traceback" not in r.stderr


def test_calibrate_job_poll_events_and_concurrency(server, tmp_path):
    srv = server("--jobs", "2")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        a, b = _submit(c, "out/a"), _submit(c, "out/b", {**RTN, "name": "rtn3", "params": {**RTN["params"], "bits": 3}})
        ja, jb = _wait(c, a, _done), _wait(c, b, _done)
        assert ja["state"] == jb["state"] == "done", (ja, jb)
        assert ja["result"]["summary"]["routed"]["codec"] == 1
        assert ja["result"]["summary"]["bits"]["codec_total_bpw"] == 4.5
        assert jb["result"]["summary"]["bits"]["codec_total_bpw"] == 3.5
        assert ja["result"]["seconds"]["load"] >= 0
        manifest = json.loads((tmp_path / "out/a/manifest.json").read_text())
        assert manifest["config"]["name"] == "rtn4"
        # both ran at once: each started before the other finished
        assert ja["started"] < jb["finished"] and jb["started"] < ja["finished"]

        with c.stream("GET", f"/v1/jobs/{a}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            text = "".join(r.iter_text())
        events = [(blk.split("\n")[0][7:], json.loads(blk.split("\n")[1][6:]))
                  for blk in text.strip().split("\n\n")]
        progress = [d for kind, d in events if kind == "progress"]
        assert [p["i"] for p in progress] == list(range(len(progress))) and progress[-1]["n"] == len(progress)
        assert events[-1][0] == "done" and events[-1][1]["result"]["summary"]["candidate"] == "rtn4"


SWEEP = ("name: rtn_bits\ncodec: rtn\ngrid:\n  bits: [2, 4, 8]\nfixed:\n  group_size: 32\n"
         "  rows: {calibration: 256, measurement: 128, seed: 42}\nmeasure: [rel_l2]\ntensors: 'layer\\.0\\.attention'\n")


def test_sweep_candidates_and_frontier(server, tmp_path):
    srv = server()
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/sweep", json={"model": "minilm", "sweep": SWEEP, "db": "results"})
        assert r.status_code == 202, r.text
        job = _wait(c, r.json()["job_id"], _done)
        assert job["state"] == "done" and job["result"]["ok"] == 3
        rows = c.get("/v1/candidates", params={"db": "results", "order": "-bits_per_weight", "limit": 2}).json()
        assert rows["count"] == 3 and [x["bits_per_weight"] for x in rows["candidates"]] == [8.5, 4.5]
        front = c.get("/v1/frontier", params={"db": "results", "y": "rel_l2"}).json()
        assert [p["x"] for p in front["frontier"]] == [2.5, 4.5, 8.5]
        ys = [p["y"] for p in front["frontier"]]
        assert ys == sorted(ys, reverse=True) and 0 < ys[-1] < ys[0] < 1
        png = c.get("/v1/frontier.png", params={"db": "results", "y": "rel_l2"})
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
        assert c.get("/v1/candidates", params={"db": "/etc"}).status_code == 403
    assert not list((tmp_path / ".helix-serve").glob("tmp*"))  # the plot's temporary directory is gone


def test_cancel_running_and_locked_output(server, tmp_path):
    srv = server("--jobs", "2")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        job = _submit(c, "out/slow", SLOW, tensors=None)
        _wait(c, job, lambda j: j["state"] == "running" and (j["progress"] or {}).get("i", 0) >= 10)
        clash = c.post("/v1/calibrate", json={"model": "minilm", "candidate": RTN, "out": "out/slow"})
        assert clash.status_code == 409 and clash.json()["path"] == "$.out"
        r = c.delete(f"/v1/jobs/{job}")
        assert r.status_code == 202
        final = _wait(c, job, _done, timeout=120)
        assert final["state"] == "cancelled" and final["progress"]["i"] < final["progress"]["n"] - 1
        assert not (tmp_path / "out/slow/manifest.json").exists()
        assert c.delete(f"/v1/jobs/{job}").status_code == 409


def test_kill_and_restart_marks_interrupted_and_keeps_old_result(server, tmp_path):
    first = server()
    with httpx.Client(base_url=first.url, timeout=30) as c:
        old = _wait(c, _submit(c, "out/x"), _done)
        assert old["state"] == "done"
        before = (tmp_path / "out/x/manifest.json").read_bytes()
        running = _submit(c, "out/x", SLOW, tensors=None)
        _wait(c, running, lambda j: j["state"] == "running" and (j["progress"] or {}).get("i", 0) >= 10)
    first.stop(signal.SIGKILL)
    second = server()
    with httpx.Client(base_url=second.url, timeout=30) as c:
        job = c.get(f"/v1/jobs/{running}").json()
        assert job["state"] == "interrupted" and job["error"]["error"]
        assert c.get(f"/v1/jobs/{old['id']}").json()["state"] == "done"
        assert (tmp_path / "out/x/manifest.json").read_bytes() == before
        with c.stream("GET", f"/v1/jobs/{running}/events") as r:
            assert "event: interrupted" in "".join(r.iter_text())
        # a second server on the same state directory refuses to start
        r = subprocess.run([sys.executable, "-m", "helix_framework.cli", "serve", "--port", str(_free_port())],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "in use by process" in r.stderr and "Traceback" not in r.stderr
        # the killed run's lock is stale: a new job takes the directory over
        again = _wait(c, _submit(c, "out/x"), _done)
        assert again["state"] == "done"


def _own_logprobs(model, ids):
    logits = model.forward(ids).astype(np.float64)
    lp = logits - logits.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    return [float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0]


@pytest.mark.slow
def test_openai_client_completions_match_reference_and_candidate(server, tmp_path, monkeypatch):
    """The reference and a calibrated candidate (a job id), each against helix's own decoder;
    the candidate's agreement job against `agree` run here."""
    from openai import OpenAI

    from helix_framework.agree import agree
    from helix_framework.calibrate import weights_from_artifacts
    from helix_framework.host import get_host
    from helix_framework.models import resolve_model
    from helix_framework.reference import load_model, load_tokenizer
    from helix_framework.sources import open_source

    srv = server("--model", "smollm2")
    client = OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=600, max_retries=0)
    prompt = "The capital of France is"
    got = client.completions.create(model="reference", prompt=prompt, max_tokens=4, logprobs=3, echo=True)
    choice = got.choices[0]

    source = open_source(resolve_model("smollm2"))
    model, tok = load_model(source), load_tokenizer(source)
    prompt_ids = tok.encode(prompt)
    ids = prompt_ids + model.generate(prompt_ids, 4)
    want = _own_logprobs(model, ids)
    assert choice.text == tok.decode(ids)
    assert len(choice.logprobs.token_logprobs) == len(ids) and choice.logprobs.token_logprobs[0] is None
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], want, atol=1e-4)
    for i in range(len(prompt_ids), len(ids)):  # the greedy token is the most likely one listed
        assert max(choice.logprobs.top_logprobs[i].values()) == pytest.approx(want[i - 1], abs=1e-4)
    assert got.usage.prompt_tokens == len(prompt_ids) and got.usage.completion_tokens == 4
    del model

    with httpx.Client(base_url=srv.url, timeout=60) as c:
        two_bit = {**RTN, "name": "rtn2", "params": {**RTN["params"], "bits": 2}}
        r = c.post("/v1/calibrate", json={"model": "smollm2", "candidate": two_bit, "tensors": r"blk\.0\.ffn_down",
                                           "out": "out/smol"})
        job = _wait(c, r.json()["job_id"], _done, timeout=600)
        assert job["state"] == "done", job
    cand = client.completions.create(model=job["id"], prompt=prompt, max_tokens=0, logprobs=1, echo=True)
    compressed = load_model(source, weights=weights_from_artifacts(tmp_path / "out/smol", source, get_host()))
    got_c = cand.choices[0].logprobs.token_logprobs[1:]
    np.testing.assert_allclose(got_c, _own_logprobs(compressed, prompt_ids), atol=1e-4)
    assert max(abs(a - b) for a, b in zip(got_c, want)) > 1e-3  # the candidate is not the reference

    with httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/agree", json={"model": "smollm2", "artifacts": "out/smol", "positions": 2000})
        served = _wait(c, r.json()["job_id"], _done, timeout=900)
    assert served["state"] == "done", served
    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))  # the server's reference cache
    mine = agree("smollm2", weights=weights_from_artifacts(tmp_path / "out/smol", source, get_host()),
                 candidate_name="mine", source=source).to_json()
    assert served["result"]["positions"] == mine["positions"] == 2000
    assert served["result"]["top1"] == mine["top1"] < 1
    assert served["result"]["seconds"]["load"] < served["result"]["seconds"]["total"]


def test_a_running_agree_job_stops_at_its_next_block(tmp_path, monkeypatch):
    """DELETE /v1/jobs/{id} sets the job's cancel flag; an agree job checks it
    between the blocks of its forward passes, not only between tensors."""
    import helix_framework.reference as reference
    from helix_framework.config import candidate_from_mapping
    from helix_framework.errors import JobCancelled
    from helix_framework.host import get_host
    from helix_framework.serve import work
    from helix_framework.serve.jobs import Job
    from helix_framework.serve.warm import WarmState

    from test_dataaware import WordTokenizer
    from test_reference import _tiny_llama

    monkeypatch.setattr(reference, "load_tokenizer", lambda source: WordTokenizer())
    monkeypatch.setenv("HELIX_CACHE_DIR", str(tmp_path / "cache"))

    class Store:
        def save(self, job):
            pass

    class CancelledDuringTheReferencePass(Job):
        def progress(self, phase, i, n, item=None):
            super().progress(phase, i, n, item)
            if (phase, i) == ("reference", 0):  # the DELETE arrives while block 0 runs
                self.cancel_requested.set()

    host = get_host()
    cand = candidate_from_mapping({**RTN, "params": {"bits": 4, "group_size": 16, "symmetric": True},
                                   "rows": {"calibration": 8, "measurement": 8},
                                   "routes": [{"match": "_proj", "route": "codec"}]}, host)
    job = CancelledDuringTheReferencePass({"id": "j1"}, Store())
    req = {"model": str(_tiny_llama(tmp_path / "tiny")), "candidate": cand, "positions": 40}
    with pytest.raises(JobCancelled, match="cancelled at reference 1 of 2"):
        work.run_agree(job, req, host, WarmState(1 << 30))
    assert job.record["progress"] == {"phase": "reference", "i": 0, "n": 2, "item": "rtn4"}
