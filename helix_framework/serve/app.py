"""The routes of `helix serve` (Starlette).

Handlers validate on the event loop (cheap: bounded YAML, the attrs/cattrs
config layer) and hand anything that reads a model, a database or a plot to
a thread (`run_in_threadpool`) or to the job pool, so the loop never blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from helix_framework.artifacts import sanitize
from helix_framework.errors import ConfigError
from helix_framework.serve import completions, work
from helix_framework.serve.guard import MAX_BODY_BYTES, RequestError, Roots, describe
from helix_framework.serve.jobs import FINAL, JobStore, json_safe
from helix_framework.serve.warm import WarmState

log = logging.getLogger(__name__)

STATE_DIR = ".helix-serve"
DEFAULT_DB = "helix-results"
DEFAULT_POSITIONS = 2000


@attrs.frozen
class ServeOptions:
    """What `helix serve` was started with."""

    host: str = "127.0.0.1"
    port: int = 8765
    models: tuple[str, ...] = ()
    roots: tuple[Path, ...] = ()
    token: str | None = None
    jobs: int = 1
    memory_mib: int = 4096


class Lab:
    """The server's state: host, roots, jobs, warm models."""

    def __init__(self, options: ServeOptions):
        from helix_framework.host import get_host
        from helix_framework.models import EMBEDDED

        self.options = options
        self.host = get_host()
        self.roots = Roots(list(options.roots))
        self.state_dir = self.roots.roots[0] / STATE_DIR
        self.store = JobStore(self.state_dir / "jobs", options.jobs)
        self.warm = WarmState(options.memory_mib << 20)
        self.model_names = set(EMBEDDED) | set(options.models)
        self.default_model = options.models[0] if options.models else "smollm2"
        self.started = time.monotonic()

    def preload(self) -> None:
        for name in self.options.models:
            self.store.pool.submit(self.warm.model, name)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json_safe(data), status_code=status)


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _object(request: Request) -> dict[str, Any]:
    raw = await _body(request)
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise RequestError(400, f"invalid JSON: {exc}", "$") from None
    if not isinstance(data, dict):
        raise RequestError(400, "expected a JSON object", "$")
    return data


def _config_data(value: Any, key: str) -> tuple[Any, Any]:
    """(loaded data, YamlDocument or None) of a config given as YAML text or a JSON object."""
    from helix_framework.yaml_loading import load_yaml

    if isinstance(value, str):
        doc = load_yaml(value)
        return doc.data, doc
    if isinstance(value, dict):
        return value, None
    raise RequestError(400, "expected YAML text or a JSON object", key)


def _rooted_route_files(lab: Lab, data: Any, key: str) -> Any:
    """``data`` with every ``routes[].candidate`` file name resolved inside the
    server's roots (403 outside): a config in a request reads no other file."""
    if isinstance(data, list):
        return [_rooted_route_files(lab, v, key) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: _rooted_route_files(lab, v, key) for k, v in data.items()}
    routes = out.get("routes")
    for rule in routes if isinstance(routes, list) else []:
        if isinstance(rule, dict) and isinstance(rule.get("candidate"), str):
            rule["candidate"] = str(lab.roots.path(rule["candidate"], key))
    return out


def _candidate(lab: Lab, value: Any, key: str) -> tuple[Any, Any]:
    """(CandidateConfig, plain data) of a request's candidate, errors located at ``key``."""
    from helix_framework.config import candidate_from_mapping

    try:
        data, doc = _config_data(value, key)
        data = _rooted_route_files(lab, data, key)
        try:
            return candidate_from_mapping(data, lab.host), data
        except ConfigError as exc:
            raise (doc.error(exc) if doc else exc) from None
    except ConfigError as exc:
        raise describe(exc, key) from None


def _int(body: dict[str, Any], key: str, default: int | None, low: int = 1, high: int = 1_000_000) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(400, f"expected an integer from {low} to {high}", f"$.{key}")
    return value


def _str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, "expected a string", f"$.{key}")
    return value


def _guard_out(lab: Lab, out: Path, key: str) -> None:
    """409 when another job of this server, or another process, holds ``out``."""
    from helix_framework import outlock

    for job in lab.store.active():
        if job.record["request"].get(key.removeprefix("$.")) == str(out):
            raise RequestError(409, f"{out} is the output of job {job.id}, which is {job.state}", key)
    if out.is_dir():
        try:
            with outlock.hold(out, "serve"):
                pass
        except Exception as exc:  # OutputLocked -> 409, other OutputError -> 422
            raise describe(exc, key) from None


# -- routes --------------------------------------------------------------------


async def health(request: Request) -> JSONResponse:
    lab: Lab = request.app.state.lab
    jobs = lab.store.jobs.values()
    return _json({
        "status": "ok",
        "models": lab.warm.model_names(),
        "queue": sum(j.state == "queued" for j in jobs),
        "running": sum(j.state == "running" for j in jobs),
        "uptime": round(time.monotonic() - lab.started, 3),
        "memory": {"budget_bytes": lab.warm.budget, "used_bytes": lab.warm.used},
    })


async def plugins(request: Request) -> JSONResponse:
    host = request.app.state.lab.host
    rows = [r.as_json() for r in host.registrations()] + [f.as_json() for f in host.failures]
    rows.sort(key=lambda r: (r["kind"], r["name"], r["source"]))
    return _json(rows)


async def check(request: Request) -> JSONResponse:
    """YAML text (any content type but JSON) or a JSON object."""
    from helix_framework.config import candidate_from_document, candidate_from_mapping, is_sweep, kernel_signature
    from helix_framework.sweep import sweep_from_document, sweep_from_mapping
    from helix_framework.yaml_loading import YamlDocument, load_yaml

    lab: Lab = request.app.state.lab
    raw = await _body(request)
    is_json = request.headers.get("content-type", "").startswith("application/json")
    try:
        if is_json:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise RequestError(400, f"invalid JSON: {exc}", "$") from None
            doc = YamlDocument(data, {})
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(400, "the body is not UTF-8 text", "$") from None
            doc = load_yaml(text)
        doc = YamlDocument(_rooted_route_files(lab, doc.data, "$"), doc.lines, doc.file)
        if is_sweep(doc):
            spec = sweep_from_mapping(doc.data, lab.host) if is_json else sweep_from_document(doc, lab.host)
            return _json({"ok": True, "kind": "sweep", "name": spec.name, "points": spec.cardinality,
                          "axes": [axis for axis, _ in spec.axes]})
        candidate = (candidate_from_mapping(doc.data, lab.host) if is_json
                     else candidate_from_document(doc, lab.host))
        return _json({"ok": True, "kind": "candidate", "name": candidate.name, "codec": candidate.codec,
                      "rotation": candidate.rotation.kind, "in_sample": candidate.in_sample,
                      "kernel_signature": kernel_signature(candidate, lab.host)})
    except ConfigError as exc:
        raise describe(exc) from None


async def calibrate(request: Request) -> JSONResponse:
    lab: Lab = request.app.state.lab
    body = await _object(request)
    model = lab.roots.model(body.get("model", lab.default_model), "$.model", lab.model_names)
    candidate, data = _candidate(lab, body.get("candidate"), "$.candidate")
    tensors = _str(body, "tensors")
    if tensors is not None:
        try:
            re.compile(tensors)
        except re.error as exc:
            raise RequestError(400, f"invalid regular expression: {exc}", "$.tensors") from None
    out = lab.roots.path(body.get("out") or str(lab.state_dir / "out" / sanitize(candidate.name)), "$.out")
    _guard_out(lab, out, "$.out")
    record = {"model": model, "candidate": data, "tensors": tensors, "out": str(out)}
    req = {**record, "candidate": candidate}
    job = lab.store.submit("calibrate", record, lambda j: work.run_calibrate(j, req, lab.host, lab.warm), _job_error)
    return _json({"job_id": job.id, "state": job.state}, 202)


async def agree(request: Request) -> JSONResponse:
    lab: Lab = request.app.state.lab
    body = await _object(request)
    model = lab.roots.model(body.get("model", lab.default_model), "$.model", lab.model_names)
    has_candidate, has_artifacts = body.get("candidate") is not None, body.get("artifacts") is not None
    if has_candidate == has_artifacts:
        raise RequestError(400, "give exactly one of candidate and artifacts", "$.candidate")
    record: dict[str, Any] = {"model": model, "positions": _int(body, "positions", DEFAULT_POSITIONS, 2),
                              "tensors": _str(body, "tensors")}
    req: dict[str, Any] = {}
    if has_candidate:
        candidate, data = _candidate(lab, body["candidate"], "$.candidate")
        record["candidate"], req["candidate"] = data, candidate
    else:
        record["artifacts"] = str(lab.roots.path(body["artifacts"], "$.artifacts"))
    if body.get("text") is not None:
        record["text"] = str(lab.roots.path(body["text"], "$.text"))
    req = {**record, **req}
    job = lab.store.submit("agree", record, lambda j: work.run_agree(j, req, lab.host, lab.warm), _job_error)
    return _json({"job_id": job.id, "state": job.state}, 202)


async def sweep(request: Request) -> JSONResponse:
    from helix_framework.sweep import sweep_from_document, sweep_from_mapping

    lab: Lab = request.app.state.lab
    body = await _object(request)
    try:
        data, doc = _config_data(body.get("sweep"), "$.sweep")
        spec = sweep_from_document(doc, lab.host) if doc else sweep_from_mapping(data, lab.host)
    except ConfigError as exc:
        raise describe(exc, "$.sweep") from None
    model = body.get("model") or spec.model or lab.default_model
    model = lab.roots.model(model, "$.model", lab.model_names)
    db = lab.roots.path(body.get("db") or DEFAULT_DB, "$.db")
    _guard_out(lab, db, "$.db")
    record = {"model": model, "sweep": data, "db": str(db), "positions": _int(body, "positions", None, 2)}
    req = {**record, "sweep": spec}
    job = lab.store.submit("sweep", record, lambda j: work.run_sweep_job(j, req, lab.host), _job_error)
    return _json({"job_id": job.id, "state": job.state}, 202)


def _job_error(exc: BaseException) -> dict[str, Any]:
    err = describe(exc)
    return {**err.body(), "status": err.status}


def _job(request: Request) -> Any:
    job = request.app.state.lab.store.get(request.path_params["job_id"])
    if job is None:
        raise RequestError(404, f"no job {request.path_params['job_id']!r}", "job_id")
    return job


async def job_get(request: Request) -> JSONResponse:
    return _json(_job(request).view())


async def job_cancel(request: Request) -> JSONResponse:
    lab: Lab = request.app.state.lab
    job = _job(request)
    if job.state in FINAL:
        raise RequestError(409, f"job {job.id} is already {job.state}", "job_id")
    lab.store.cancel(job)
    return _json(job.view(), 202)


async def job_events(request: Request) -> StreamingResponse:
    """Server-sent events: every progress event so far and to come, then the final state."""
    job = _job(request)

    async def stream() -> Any:
        sent = 0
        while True:
            events = job.events[sent:]
            for e in events:
                yield f"event: {e['event']}\ndata: {json.dumps(json_safe(e['data']))}\n\n"
            sent += len(events)
            if job.state in FINAL and sent >= len(job.events):
                if not job.events or job.events[-1]["event"] not in FINAL:  # a record loaded after a restart
                    yield f"event: {job.state}\ndata: {json.dumps(json_safe(job.view()))}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.1)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _db(lab: Lab, request: Request) -> Path:
    db = lab.roots.path(request.query_params.get("db") or DEFAULT_DB, "db")
    if not db.is_dir():
        raise RequestError(404, f"no results database at {db}", "db")
    return db


async def candidates(request: Request) -> JSONResponse:
    from helix_framework.frontier import load_candidates

    lab: Lab = request.app.state.lab
    db = _db(lab, request)
    q = request.query_params
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise RequestError(400, "expected an integer", "limit") from None
    rows = await run_in_threadpool(load_candidates, db, sweep=q.get("sweep"))
    order = q.get("order")
    if order:
        key, reverse = order.lstrip("-"), order.startswith("-")
        if rows and key not in rows[0]:
            raise RequestError(400, f"no column {key!r}", "order")
        present = [r for r in rows if r.get(key) is not None]
        rows = sorted(present, key=lambda r: r[key], reverse=reverse) + [r for r in rows if r.get(key) is None]
    return _json({"db": str(db), "count": len(rows), "candidates": rows[:max(0, limit)]})


async def _frontier(lab: Lab, request: Request) -> Any:
    from helix_framework.frontier import compute_frontier, load_candidates

    db = _db(lab, request)
    q = request.query_params
    rows = await run_in_threadpool(load_candidates, db, sweep=q.get("sweep"))
    return await run_in_threadpool(compute_frontier, rows, x=q.get("x", "bits"), y=q.get("y", "top1"))


async def frontier(request: Request) -> JSONResponse:
    return _json((await _frontier(request.app.state.lab, request)).to_json())


async def frontier_png(request: Request) -> Response:
    import tempfile

    from helix_framework.frontier import plot_frontier

    lab: Lab = request.app.state.lab
    result = await _frontier(lab, request)
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lab.state_dir) as tmp:
        path = Path(tmp) / "frontier.png"
        await run_in_threadpool(plot_frontier, result, path)
        return Response(path.read_bytes(), media_type="image/png")


async def complete(request: Request) -> JSONResponse:
    lab: Lab = request.app.state.lab
    body = await _object(request)
    req = completions.parse(body)
    name = body.get("model")
    if not isinstance(name, str):
        raise RequestError(400, "expected \"reference\" or a job id", "$.model")

    def run() -> dict[str, Any]:
        if name == "reference":
            warm, _ = lab.warm.model(lab.default_model)
            model, tokenizer = warm.reference(), warm.tokenizer
        else:
            job = lab.store.get(name)
            if job is None or job.record["kind"] not in ("calibrate", "agree"):
                raise RequestError(404, f"no calibrate or agree job {name!r}", "$.model")
            if job.state != "done":
                raise RequestError(409, f"job {name} is {job.state}, not done", "$.model")
            model, tokenizer = work.job_model(lab.warm, job.record, lab.host)
        from helix_framework.reference import DecoderModel

        if not isinstance(model, DecoderModel):
            raise RequestError(422, "this model is an encoder: it has no next-token distribution", "$.model")
        return completions.complete(model, tokenizer, name, req)

    return _json(await run_in_threadpool(run))


# -- the app -------------------------------------------------------------------


def build_app(options: ServeOptions) -> Starlette:
    lab = Lab(options)
    routes = [
        Route("/v1/health", health),
        Route("/v1/plugins", plugins),
        Route("/v1/check", check, methods=["POST"]),
        Route("/v1/calibrate", calibrate, methods=["POST"]),
        Route("/v1/agree", agree, methods=["POST"]),
        Route("/v1/sweep", sweep, methods=["POST"]),
        Route("/v1/jobs/{job_id}", job_get),
        Route("/v1/jobs/{job_id}", job_cancel, methods=["DELETE"]),
        Route("/v1/jobs/{job_id}/events", job_events),
        Route("/v1/candidates", candidates),
        Route("/v1/frontier", frontier),
        Route("/v1/frontier.png", frontier_png),
        Route("/v1/completions", complete, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        RequestError: lambda r, e: _error(e),
        404: lambda r, e: _error(RequestError(404, f"no route {r.url.path}")),
        405: lambda r, e: _error(RequestError(405, f"{r.method} is not allowed on {r.url.path}")),
        Exception: _unexpected,
    })
    app.state.lab = lab
    return BearerToken(app, options.token) if options.token is not None else app


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Every other exception: mapped by `describe`; a traceback only in the server log."""
    err = describe(exc)
    if err.status == 500:
        log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(err)


class BearerToken:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (401 otherwise)."""

    def __init__(self, app: Any, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(RequestError(401, "missing or wrong bearer token", "Authorization"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
