"""The driver: expand a sweep, skip what is recorded, run the rest, record rows in LanceDB."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from helix_framework.config import canonical_json
from helix_framework.errors import SweepError
from helix_framework.sweep.spec import AgreementSettings, SweepSpec, WORKER_ENV, expand, flatten, point_label
from helix_framework.sweep.executors import run_local, run_ray

log = logging.getLogger(__name__)


# -- the sweep -----------------------------------------------------------------


@attrs.frozen
class SweepSummary:
    """What a sweep did (what ``helix sweep --json`` prints)."""

    sweep: str
    db: str
    model: str
    model_hash: str
    run_id: str
    executor: str
    workers: int
    points: int
    valid: int
    invalid: list[dict[str, Any]]
    already_done: int
    ran: int
    ok: int
    failed: list[dict[str, Any]]
    orphan_rows_removed: int
    seconds: float
    kernels: dict[str, int]
    candidates: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def model_hash_of(file_hashes: Mapping[str, str]) -> str:
    return hashlib.sha256(canonical_json(dict(file_hashes)).encode()).hexdigest()


def _plugin_meta(host: Any, kind: str, name: str) -> dict[str, Any]:
    reg = host.lookup(kind, name)
    return {"name": reg.name, "version": str(getattr(reg.obj, "version", "") or ""),
            "distribution": reg.distribution, "distribution_version": reg.version}


def run_sweep(
    spec: SweepSpec,
    db_dir: str | Path,
    *,
    model: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    jobs: int | None = None,
    strict: bool = False,
    positions: int | None = None,
    window: int | None = None,
    host: Any = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> SweepSummary:
    """Run every valid, not yet stored point of ``spec`` and append its rows.

    ``on_event(kind, data)`` is called with ``("invalid", point)``,
    ``("start", {...})`` and ``("candidate", row)`` as the sweep goes.
    """
    from helix_framework.config import kernel_signature
    from helix_framework.models import resolve_model
    from helix_framework.results import ResultsDB
    from helix_framework.sources import open_source

    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    emit = on_event or (lambda kind, data: None)
    if executor not in ("local", "ray"):
        raise SweepError(f"unknown executor {executor!r}; expected local or ray")
    if positions is not None or window is not None:
        spec = attrs.evolve(spec, agreement=AgreementSettings(positions or spec.agreement.positions,
                                                              window or spec.agreement.window))
    model_arg = model or spec.model
    if not model_arg:
        raise SweepError("no model: give model: in the sweep file or --model")
    started = time.perf_counter()
    points = expand(spec, host)
    invalid = [{"index": p.index, "point": p.values, "reason": p.error} for p in points if p.error]
    for item in invalid:
        emit("invalid", item)
    if invalid and strict:
        first = invalid[0]
        raise SweepError(f"{len(invalid)} of {len(points)} points are invalid (--strict); first: point "
                         f"{first['index']} ({point_label(first['point'])}): {first['reason']}")
    valid = [p for p in points if not p.error]
    path = resolve_model(model_arg).resolve()
    with open_source(path) as source:
        file_hashes = source.file_hashes()
    mhash = model_hash_of(file_hashes)
    with ResultsDB.locked(db_dir) as db:
        removed = db.drop_orphans(mhash)
        done = db.done_keys(mhash)
        seen: set[str] = set()
        todo = []
        for p in valid:
            if p.key in done or p.key in seen:
                continue
            seen.add(p.key)
            todo.append(p)
        n_jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
        run_id = uuid.uuid4().hex
        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        if n_jobs > 1:  # the workers already use every core
            env.setdefault("HELIX_JIT_THREADS", "1")
            env.setdefault("HELIX_THREADS", "1")
        # a point with route choices travels resolved (inline candidates): a worker's
        # directory is not the sweep file's, where candidate files are looked up
        tasks = [{"mapping": p.candidate.to_json() if p.candidate.choices else p.mapping, "model": str(path), "tensors": spec.tensors,
                  "positions": spec.agreement.positions, "window": spec.agreement.window, "env": env} for p in todo]
        emit("start", {"points": len(points), "valid": len(valid), "invalid": len(invalid),
                       "already_done": len(valid) - len(todo), "to_run": len(todo), "workers": n_jobs,
                       "executor": executor, "orphan_rows_removed": removed})
        if any("token_agreement" in p.candidate.measure for p in todo):
            _warm_reference(path, spec.agreement)

        kernel_sources: dict[str, set[str]] = {}
        compile_events = 0
        ok = 0
        failed: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []
        plugin_cache: dict[tuple[str, str], dict[str, Any]] = {}

        def plugin(kind: str, name: str) -> dict[str, Any]:
            if (kind, name) not in plugin_cache:
                plugin_cache[kind, name] = _plugin_meta(host, kind, name)
            return plugin_cache[kind, name]

        def on_result(i: int, result: dict[str, Any]) -> None:
            nonlocal compile_events, ok
            p = todo[i]
            cand = p.candidate
            now = _dt.datetime.now(_dt.timezone.utc)
            sig = kernel_signature(cand, host)
            common = {"candidate_key": p.key, "sweep": spec.name, "candidate": cand.name, "run_id": run_id,
                      "time": now, "model_id": str(model_arg), "model_hash": mhash, "kernel_signature": sig}
            compiled_here = 0
            for k in result["kernels"]:
                kernel_sources.setdefault(k["signature"], set()).add(k["source"])
                compiled_here += k["source"] == "compiled"
            compile_events += compiled_here
            codec, rotation = plugin("codec", cand.codec), plugin("rotation", cand.rotation.kind)
            config = cand.to_json()
            summary = {
                **common, **result["summary"],
                "codec": codec["name"], "codec_version": codec["version"],
                "codec_distribution": codec["distribution"],
                "codec_distribution_version": codec["distribution_version"],
                "rotation": rotation["name"], "rotation_version": rotation["version"],
                "rotation_distribution": rotation["distribution"],
                "rotation_distribution_version": rotation["distribution_version"],
                "point": json.dumps(p.values, sort_keys=True), "params": json.dumps(flatten(config["params"])),
                "config": json.dumps(config), "kernels": json.dumps(result["kernels"]),
                "kernels_compiled": compiled_here, "kernels_from_cache": len(result["kernels"]) - compiled_here,
            }
            worker_pid = summary.pop("pid", None)
            db.write_candidate([{**common, **row} for row in result["tensor_rows"]], summary)
            if summary["status"] == "ok":
                ok += 1
            else:
                failed.append({"index": p.index, "candidate": cand.name, "error": summary["error"]})
            view = {k: summary.get(k) for k in ("candidate", "status", "error", "bits_per_weight", "rel_l2", "icc_3_1",
                                                 "top1", "top5", "kl_mean", "certified", "seconds", "kernels_compiled")}
            view["worker_pid"] = worker_pid
            view["done"] = ok + len(failed)
            view["total"] = len(todo)
            written.append(view)
            emit("candidate", view)

        if todo:
            if executor == "local":
                run_local(tasks, n_jobs, on_result)
            else:
                run_ray(tasks, n_jobs, address, on_result)
        distinct = len(kernel_sources)
        compiled = sum("compiled" in s for s in kernel_sources.values())
        return SweepSummary(
            sweep=spec.name, db=str(db_dir), model=str(model_arg), model_hash=mhash, run_id=run_id, executor=executor,
            workers=n_jobs, points=len(points), valid=len(valid), invalid=invalid, already_done=len(valid) - len(todo),
            ran=len(todo), ok=ok, failed=failed, orphan_rows_removed=removed, seconds=time.perf_counter() - started,
            kernels={"distinct": distinct, "compiled": compiled, "from_cache": distinct - compiled,
                     "compile_events": compile_events},
            candidates=written,
        )


def _warm_reference(model: Path, settings: AgreementSettings) -> None:
    """Compute (or find) the reference logits once in the driver, so workers
    only ever read the cache instead of computing it concurrently."""
    from helix_framework import agree as agree_mod
    from helix_framework.prompts import load_prompts
    from helix_framework.reference import load_model, load_tokenizer
    from helix_framework.reference.loader import supports_lazy
    from helix_framework.sources import open_source

    with open_source(model) as source:
        if agree_mod.is_encoder(source):
            return
        prompts = load_prompts(None)
        windows = agree_mod.token_windows(load_tokenizer(source), prompts, settings.positions, settings.window)
        key = agree_mod._cache_key(source, prompts, settings.positions, settings.window)
        t0 = time.perf_counter()
        try:
            agree_mod.reference_outputs(lambda: load_model(source, lazy=supports_lazy(source)), source, windows, key)
        except Exception as exc:  # the workers then compute it themselves; say why
            log.warning("reference logits not cached in advance (%s); each worker computes them", exc)
            return
        log.info("reference logits ready in %.1f s", time.perf_counter() - t0)
