"""What one worker does for one candidate: calibrate (and token-agree) it, return plain rows."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from helix_framework.config import candidate_from_mapping
from helix_framework.errors import SweepError
from helix_framework.summary import aggregate_figures
from helix_framework.routing import NOT_SELECTED, tensor_selector

log = logging.getLogger(__name__)


# -- one candidate (runs in a worker) --------------------------------------------

# The reference's outputs of the last (model, prompt set) this worker process
# scored against, kept in memory for the next candidate: a worker runs many
# candidates of one sweep against one reference. One entry: about 1 GB for
# SmolLM2 at 2,000 positions.
_warm_reference: dict[str, Any] = {}


def _reference_store(key: str, compute: Any) -> Any:
    from helix_framework.agree import WarmReference

    if key not in _warm_reference:
        _warm_reference.clear()
        _warm_reference[key] = WarmReference(*compute())
    return _warm_reference[key]



def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_candidate(task: dict[str, Any]) -> dict[str, Any]:
    """Calibrate (and, when asked, token-agree) one candidate.

    ``task``: mapping (the candidate mapping), model (a path the worker can
    read), tensors (regex or None), positions, window, env. Returns plain
    rows (no Arrow, no LanceDB): ``tensor_rows``, ``summary``, ``kernels``.
    Errors become ``status: failed`` with the message, never an exception.
    """
    for key, value in (task.get("env") or {}).items():
        os.environ.setdefault(key, value)
    import helix_jit
    from threadpoolctl import threadpool_limits

    from helix_framework.calibrate import (calibrate_matrix, mark_partial, partial_result, resolve, route_and_read,
                                           wants_stats)
    from helix_framework.engine import each_tensor
    from helix_framework.host import get_host
    from helix_framework.sources import open_source

    started = time.perf_counter()
    host = get_host()
    tensor_rows: list[dict[str, Any]] = []
    kernels: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"status": "ok", "error": None}
    try:
        cand = candidate_from_mapping(task["mapping"], host)
        comp = resolve(cand, host)
        want_agree = "token_agreement" in cand.measure
        selector = tensor_selector(task.get("tensors"))
        weights: dict[str, Any] = {}
        left_out = 0

        def handle(info: Any, stats: Any) -> Any:
            nonlocal left_out
            routed = route_and_read(source, info, cand, selector)
            if routed.route != "codec":
                left_out += routed.reason == NOT_SELECTED
                return None
            result = calibrate_matrix(routed.rows, info.name, comp, stats=stats, n_blocks=source.n_blocks)
            tensor_rows.append(_tensor_row(info, routed.rows, result))
            recon = result.reconstruction.reshape(info.shape)
            if want_agree:
                weights[info.name] = recon
            return recon  # what a data-aware candidate's windows pass through

        with open_source(task["model"]) as source, helix_jit.record_kernels() as rec, \
                threadpool_limits(1, "blas"):
            each_tensor(source, source.tensors(), cand.calibration, handle, wants_stats=wants_stats(cand, selector))
            kernels = [{"signature": u.signature, "name": u.name, "lane_width": u.lane_width, "source": u.source}
                       for u in rec.kernels]
            calibrate_s = time.perf_counter() - started
            agreement = None
            agree_s = None
            if want_agree:
                if not weights:
                    raise SweepError("token_agreement: no tensor was routed to the codec")
                from helix_framework.agree import agree

                t0 = time.perf_counter()
                report = agree(task["model"], weights=weights, candidate_name=cand.name,
                               positions=task["positions"], window=task["window"], source=source,
                               reference_store=_reference_store)
                agree_s = time.perf_counter() - t0
                agreement = report.to_json()
                del weights
        summary.update(_summary_figures(tensor_rows, cand.in_sample))
        summary.update({"calibrate_s": calibrate_s, "agree_s": agree_s})
        if agreement is not None:
            agreement = mark_partial(agreement, partial_result(len(tensor_rows), left_out))
            lo, hi = agreement["intervals"]["top1"]
            summary.update({
                "positions": int(agreement["positions"]), "top1": float(agreement["top1"]),
                "top1_ci_low": float(lo), "top1_ci_high": float(hi), "top5": float(agreement["top5"]),
                "kl_mean": float(agreement["kl"]["mean"]), "certified": bool(agreement["certified"]),
                "agreement": json.dumps({k: v for k, v in agreement.items()
                                         if k not in ("divergence_positions", "prompts")}, default=str),
            })
    except Exception as exc:  # one bad candidate must not stop a sweep
        log.warning("candidate failed: %s", exc)
        summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        tensor_rows = []
    summary["seconds"] = time.perf_counter() - started
    summary["pid"] = os.getpid()
    return {"tensor_rows": tensor_rows, "summary": summary, "kernels": kernels}


def _tensor_row(info: Any, x: Any, result: Any) -> dict[str, Any]:
    label = result.split.held_out_label
    held, cal = result.metrics[label], result.metrics["calibration"]
    return {
        "tensor": info.name, "shape": json.dumps(list(info.shape)), "n_rows": int(x.shape[0]),
        "row_dim": int(x.shape[1]), "n_calibration": int(result.split.calibration.size),
        "n_held_out": int(result.split.held_out.size), "rows": json.dumps(result.split.to_json()),
        "rel_l2": _nan_to_none(held.get("rel_l2")), "icc_3_1": _nan_to_none(held.get("icc_3_1")),
        "calibration_rel_l2": _nan_to_none(cal.get("rel_l2")),
        "calibration_icc_3_1": _nan_to_none(cal.get("icc_3_1")),
        "in_sample": label == "in_sample", "metrics": json.dumps(result.metrics),
        "bits_per_weight": float(result.bits["total_bpw"]), "code_bpw": float(result.bits["code_bpw"]),
        "overhead_bpw": float(result.bits["overhead_bpw"]), "rotation_bpw": float(result.bits["rotation_bpw"]),
        "total_bits": float(result.bits["total_bits"]),
        "fit_s": result.timing["fit_s"], "encode_s": result.timing["encode_s"],
        "decode_s": result.timing["decode_s"], "measure_s": result.timing["measure_s"],
        "flags": json.dumps(list(result.flags)),
    }


def _summary_figures(rows: list[dict[str, Any]], in_sample: bool) -> dict[str, Any]:
    """Figures over tensors combined as `helix calibrate` combines them, and weighted bits."""
    if not rows:
        raise SweepError("no tensor was routed to the codec (check the tensors regex)")
    weights = [r["n_rows"] * r["row_dim"] for r in rows]
    label = "in_sample" if in_sample else "held_out"
    per = [json.loads(r["metrics"]) for r in rows]
    means = {split: {k: v for k, (_, v) in aggregate_figures(per, weights, split).items()}
             for split in (label, "calibration", "all")}
    flags: dict[str, int] = {}
    for r in rows:
        for f in json.loads(r["flags"]):
            flags[f] = flags.get(f, 0) + 1
    total_bits = sum(r["total_bits"] for r in rows)
    return {
        "tensors": len(rows), "weights": int(sum(weights)),
        "bits_per_weight": total_bits / sum(weights),
        "code_bpw": sum(r["code_bpw"] * w for r, w in zip(rows, weights)) / sum(weights),
        "rel_l2": _nan_to_none(means[label].get("rel_l2")), "icc_3_1": _nan_to_none(means[label].get("icc_3_1")),
        "calibration_rel_l2": _nan_to_none(means["calibration"].get("rel_l2")),
        "calibration_icc_3_1": _nan_to_none(means["calibration"].get("icc_3_1")),
        "in_sample": in_sample, "metrics": json.dumps(means), "flags": json.dumps(flags),
        **{k: sum(r[k] for r in rows) for k in ("fit_s", "encode_s", "decode_s", "measure_s")},
    }
