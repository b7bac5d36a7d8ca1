"""What each job kind runs on a worker thread: calibrate, agree, sweep.

Each function takes the validated request and the `Job` (progress and
cancellation go through ``job.progress``) and returns the JSON result, which
records how many of its seconds were spent loading (warm-state misses).
"""

from __future__ import annotations

import time
from typing import Any

from helix_framework.serve.jobs import Job, JobCancelled
from helix_framework.serve.warm import WarmState


def run_calibrate(job: Job, req: dict[str, Any], host: Any, warm: WarmState) -> dict[str, Any]:
    from helix_framework.calibrate import calibrate

    t0 = time.perf_counter()
    summary = calibrate(req["model"], req["candidate"], req["out"], tensors=req.get("tensors"), host=host,
                        on_tensor=lambda i, n, name: job.progress("tensor", i, n, name),
                        block_store=warm.reference_blocks)
    total = time.perf_counter() - t0
    return {"summary": summary.to_json(), "out": str(req["out"]), "seconds": {"total": total, "load": 0.0}}


def candidate_weights(warm: WarmState, model_name: str, req: dict[str, Any], host: Any,
                      job: Job | None = None) -> tuple[dict[str, Any], str, float]:
    """The reconstructed matrices of a request's ``candidate`` or ``artifacts``,
    its name, and the seconds spent loading the model."""
    from helix_framework.calibrate import weights_from_artifacts, weights_from_config

    model, load = warm.model(model_name)
    if req.get("artifacts"):
        return weights_from_artifacts(req["artifacts"], model.source, host), str(req["artifacts"]), load
    on_tensor = (lambda i, n, name: job.progress("tensor", i, n, name)) if job else None
    weights = weights_from_config(model.source, req["candidate"], host, req.get("tensors"), on_tensor=on_tensor,
                                  block_store=warm.reference_blocks)
    return weights, req["candidate"].name, load


def run_agree(job: Job, req: dict[str, Any], host: Any, warm: WarmState) -> dict[str, Any]:
    from helix_framework.agree import WarmReference, agree

    t0 = time.perf_counter()
    weights, name, load = candidate_weights(warm, req["model"], req, host, job)
    model, _ = warm.model(req["model"])
    job.progress("agreement", 0, 1, name)
    # The warm float32 tensors stand in for every matrix the candidate keeps,
    # so agree builds its model without dequantizing the source again.
    # A cancelled job stops at the next block of the reference or candidate pass.
    loaded = [load]

    def reference_store(key: str, compute: Any) -> WarmReference:
        ref, seconds = warm.get(f"reference:{key}", lambda: WarmReference(*compute()), lambda r: r.nbytes)
        loaded.append(seconds)
        return ref

    report = agree(req["model"], weights={**model.weights, **weights}, candidate_name=name,
                   prompts_dir=req.get("text"), positions=req["positions"], source=model.source,
                   on_step=lambda phase, i, n: job.progress(phase, i, n, name), reference_store=reference_store)
    data = report.to_json()
    total = time.perf_counter() - t0
    return {**data, "seconds": {**data["seconds"], "total": total,
                                "load": sum(loaded) + data["seconds"].get("load", 0.0)}}


def run_sweep_job(job: Job, req: dict[str, Any], host: Any) -> dict[str, Any]:
    from helix_framework.sweep import run_sweep

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            job.progress("candidate", 0, data["to_run"])
        elif kind == "candidate":
            job.progress("candidate", data["done"], data["total"], data["candidate"])
        elif job.cancel_requested.is_set():
            raise JobCancelled(f"job {job.id} cancelled")

    t0 = time.perf_counter()
    summary = run_sweep(req["sweep"], req["db"], model=req.get("model"), jobs=1, positions=req.get("positions"),
                        host=host, on_event=on_event)
    return {**summary.to_json(), "seconds": {"total": time.perf_counter() - t0, "load": 0.0}}


def job_model(warm: WarmState, record: dict[str, Any], host: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished calibrate or agree job, for completions."""
    req = record["request"]
    model, _ = warm.model(req["model"])
    if record["kind"] == "calibrate":
        spec = {"artifacts": record["result"]["out"]}
    elif req.get("artifacts"):
        spec = {"artifacts": req["artifacts"]}
    else:
        from helix_framework.config import candidate_from_mapping

        spec = {"candidate": candidate_from_mapping(req["candidate"], host), "tensors": req.get("tensors")}

    def load() -> Any:
        weights, _, _ = candidate_weights(warm, req["model"], spec, host)
        return model.candidate(weights)

    candidate, _ = warm.get(f"job:{record['id']}", load, lambda m: 4 * m.n_parameters)
    return candidate, model.tokenizer
