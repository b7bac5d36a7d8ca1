"""`helix allocate`: one candidate per tensor under an average bits budget.

The run, in order (`allocate`):

1. Every candidate file is read and checked before any work: the same
   calibration text settings (one calibration pass serves a mix), the same
   routed tensors of the model, the same plain route rules.
2. Per candidate: fit every routed tensor in memory exactly as ``helix
   calibrate`` does (data-aware candidates block by block), which gives its
   reconstruction and its exact bits; estimate each block's cost with it
   (`helix_framework.allocate.estimate`); measure the candidate itself, whole
   model, with token agreement (the uniform row a mix is compared against).
   With ``--db`` these go to LanceDB as each candidate finishes, and a rerun
   reuses them (same model, candidate, kernel signature and estimation windows).
3. Pick one candidate per tensor minimising the summed estimated cost under
   the budget (`helix_framework.allocate.knapsack`, with its optimality gap).
4. Write MIX.yaml (the candidate covering most weights at the top, one
   ``routes`` rule per tensor that takes another) and measure the mix with
   token agreement, fitted in memory as ``helix calibrate --config MIX.yaml``
   would write it: that is the verdict.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import yaml

from helix_framework import artifacts
from helix_framework.allocate import estimate as est
from helix_framework.allocate.knapsack import Choice, choose
from helix_framework.errors import AllocateError, BudgetError, ConfigError

__all__ = ["AllocateSummary", "allocate"]

SWEEP = "allocate"


@attrs.frozen
class Option:
    """One candidate file, loaded."""

    file: str
    candidate: Any
    mapping: dict[str, Any]


@attrs.frozen
class AllocateSummary:
    """What `allocate` measured and chose (``helix allocate --json``)."""

    model: str
    target_bpw: float
    out: str
    db: str | None
    candidates: list[dict[str, Any]]
    mix: dict[str, Any]
    choice: dict[str, Any]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _load_options(files: list[str], host: Any) -> list[Option]:
    from helix_framework.config import load_candidate, read_config_file

    if len(files) < 2:
        raise AllocateError("give at least two --candidates to choose between")
    options = []
    for f in files:
        cand = load_candidate(f, host)
        if cand.choices:
            raise AllocateError("is already a mix (it has candidate or codec routes); give uniform candidates",
                                candidate=f)
        if "token_agreement" in cand.measure:  # the verdict runs once, on the mix
            cand = attrs.evolve(cand, measure=tuple(m for m in cand.measure if m != "token_agreement"))
        options.append(Option(str(Path(f).resolve()), cand, dict(read_config_file(f).data)))
    names = [o.candidate.name for o in options]
    for o in options:
        if names.count(o.candidate.name) > 1:
            raise AllocateError(f"candidate name {o.candidate.name!r} is given twice", candidate=o.file)
        if o.candidate.calibration != options[0].candidate.calibration:
            raise AllocateError(f"its calibration: section differs from {options[0].file}'s (a mix is calibrated "
                                "in one pass: give every candidate the same one)", candidate=o.file)
        if o.candidate.routes != options[0].candidate.routes:
            raise AllocateError(f"its route rules differ from {options[0].file}'s", candidate=o.file)
    return options


def _routed(source: Any, options: list[Option]) -> list[Any]:
    """The tensor infos the candidates compress (the same for all, or one line)."""
    from helix_framework.routing import route_tensor

    infos = source.tensors()
    first = None
    for o in options:
        names = [i.name for i in infos if route_tensor(i.name, tuple(i.shape), o.candidate.routes).route == "codec"]
        if not names:
            raise AllocateError("compresses no tensor of this model", candidate=o.file)
        if first is None:
            first = names
        elif names != first:
            other = sorted(set(names) ^ set(first))[0]
            raise AllocateError(f"routes other tensors than {options[0].file} (first difference: {other})",
                                candidate=o.file)
    by = {i.name: i for i in infos}
    return [by[n] for n in first]


def _estimate_key(model_hash: str, option: Option, host: Any) -> str:
    from helix_framework.config import canonical_json, kernel_signature

    payload = {"model": model_hash, "config": option.candidate.to_json(),
               "kernel_signature": kernel_signature(option.candidate, host),
               "windows": [est.ESTIMATE_WINDOWS, est.ESTIMATE_TOKENS, est.ESTIMATE_SEED]}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]


def _groups(model: Any, names: list[str]) -> list[tuple[int | None, list[str]]]:
    wanted = set(names)
    groups: list[tuple[int | None, list[str]]] = []
    seen: set[str] = set()
    for layer in range(model.n_layers):
        block = [n for n in model.block_tensors(layer) if n in wanted]
        seen.update(block)
        if block:
            groups.append((layer, block))
    groups += [(None, [n]) for n in names if n not in seen]
    return groups


def allocate(
    model: str | Path, candidate_files: list[str], target_bpw: float, out: str | Path, *,
    db: str | Path | None = None, positions: int | None = None, window: int = 512, progress: bool = False,
    host: Any = None, on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> AllocateSummary:
    """Run `helix allocate` (see the module docstring); returns the summary."""
    from helix_framework.calibrate import weights_from_config
    from helix_framework.host import get_host
    from helix_framework.measure.agreement import MIN_POSITIONS
    from helix_framework.models import resolve_model
    from helix_framework.reference import DecoderModel, load_model, load_tokenizer
    from helix_framework.sources import open_source
    from helix_framework.sweep.run import model_hash_of

    started = time.perf_counter()
    host = host or get_host()
    positions = positions or MIN_POSITIONS
    emit = on_event or (lambda kind, data: None)
    if not np.isfinite(target_bpw) or target_bpw <= 0:
        raise BudgetError(f"--target-bpw must be a positive number, got {target_bpw}", low=0, high=0, budget=target_bpw)
    options = _load_options(candidate_files, host)
    out = Path(out)
    _check_out(out, options)
    path = resolve_model(model)
    results = _Results(db) if db is not None else None
    with open_source(path) as source, (results.lock() if results else _nothing()):
        infos = _routed(source, options)
        names = [i.name for i in infos]
        weights = np.array([int(np.prod(i.shape)) for i in infos], dtype=np.int64)
        mhash = model_hash_of(source.file_hashes())
        model_obj = load_model(source)
        if not isinstance(model_obj, DecoderModel):
            raise AllocateError("allocate estimates costs on decoder models (Llama family) only")
        try:
            groups = _groups(model_obj, names)
        except Exception as exc:
            raise AllocateError(f"this model cannot run block at a time: {exc}") from None
        from helix_framework.calibration_text import load_documents, make_windows
        from helix_framework.prompts import load_prompts

        windows = make_windows(load_tokenizer(source), load_documents("builtin"), sequences=est.ESTIMATE_WINDOWS,
                               tokens=est.ESTIMATE_TOKENS, seed=est.ESTIMATE_SEED, held_out=0.0,
                               evaluation=load_prompts(None))
        t0 = time.perf_counter()
        fit_s = 0.0
        ref = est.reference_pass(model_obj, windows.ids)
        bits = np.zeros((len(names), len(options)), dtype=np.int64)
        kl = np.zeros((len(names), len(options)))
        err = np.zeros((len(names), len(options)))
        uniform: list[dict[str, Any]] = []
        bar = _bar(progress, len(options) * len(groups), "estimating")
        for j, option in enumerate(options):
            key = _estimate_key(mhash, option, host)
            stored = results.estimates(key) if results else None
            if stored is not None and set(stored) == set(names) and results.uniform(key) is not None:
                for i, n in enumerate(names):
                    bits[i, j], kl[i, j], err[i, j] = stored[n]
                uniform.append(results.uniform(key))
                bar.update(len(groups))
                emit("candidate", {"candidate": option.candidate.name, "reused": True})
                continue
            fitted_bits: dict[str, float] = {}
            tf = time.perf_counter()
            recon = weights_from_config(source, option.candidate, host, bits=fitted_bits)
            fit_s += time.perf_counter() - tf
            per = est.estimate_groups(model_obj, ref, groups, recon, on_group=lambda: bar.update(1))
            for i, n in enumerate(names):
                bits[i, j] = int(round(fitted_bits[n]))
                kl[i, j], err[i, j] = per[n]
            verdict = _verdict(path, source, recon, option.candidate.name, positions, window)
            del recon
            row = _summary_row(option, verdict, float(bits[:, j].sum() / weights.sum()), mhash, key, weights)
            uniform.append(row)
            if results:
                results.store(key, option, mhash, names, weights, bits[:, j], kl[:, j], err[:, j], row)
            emit("candidate", {"candidate": option.candidate.name, "reused": False})
        bar.close()
        estimate_s = time.perf_counter() - t0
        block_of = np.array([next(g for g, (layer, ns) in enumerate(groups) if n in ns) for n in names])
        cost = np.stack([est.share_costs(kl[:, j], err[:, j], block_of) for j in range(len(options))], axis=1)
        budget = int(np.floor(target_bpw * weights.sum()))
        try:
            choice = choose(cost, bits, budget)
        except BudgetError as exc:
            low, high = exc.low / weights.sum(), exc.high / weights.sum()
            raise BudgetError(f"--target-bpw {target_bpw} is outside what these candidates reach: "
                              f"{_ceil4(low)} to {_floor4(high)} bits per weight", low=low, high=high,
                              budget=target_bpw) from None
        mix_mapping = _mix_mapping(options, choice, names, weights, out, target_bpw)
        text = "# written by helix allocate\n" + yaml.safe_dump(mix_mapping, sort_keys=False)
        artifacts.atomic_write(out.parent, ".yaml", lambda f: f.write(text.encode("utf-8")), lambda: out, where=out)
        from helix_framework.config import load_candidate

        mix = load_candidate(out, host)
        t1 = time.perf_counter()
        fitted_bits = {}
        recon = weights_from_config(source, mix, host, bits=fitted_bits)
        fit_s += time.perf_counter() - t1
        verdict = _verdict(path, source, recon, mix.name, positions, window)
        del recon
        mix_bits = sum(fitted_bits.values())
        mix_row = _mix_row(mix, verdict, mix_bits / weights.sum(), mhash, target_bpw, choice)
        if results:
            results.store_mix(mix_row, names, weights, choice, options, cost, bits, mhash, mix.name)
    # "fit": fitting candidates and the mix alone (what calibrating them would cost anyway)
    seconds = {"estimate": estimate_s, "verdict": time.perf_counter() - t1, "fit": fit_s,
               "total": time.perf_counter() - started}
    return AllocateSummary(
        model=str(model), target_bpw=target_bpw, out=str(out), db=str(db) if db is not None else None,
        candidates=[_view(r) for r in uniform], mix=_view(mix_row),
        choice=_choice_view(choice, options, names, weights, cost, bits), seconds=seconds,
    )


def _ceil4(x: float) -> str:
    return f"{np.ceil(x * 1e4) / 1e4:.4f}"


def _floor4(x: float) -> str:
    return f"{np.floor(x * 1e4) / 1e4:.4f}"


def _check_out(out: Path, options: list[Option]) -> None:
    from helix_framework.errors import OutputError

    if out.is_dir():
        raise OutputError("is a directory; --out names the YAML file to write", path=str(out))
    if out.suffix not in (".yaml", ".yml"):
        raise OutputError("--out must name a .yaml file", path=str(out))
    if out.exists() and any(out.resolve() == Path(o.file) for o in options):
        raise OutputError("is one of the --candidates; it would be overwritten", path=str(out))
    if out.exists():
        first = out.read_bytes()[:64] if out.is_file() else b""
        if not first.startswith(b"# written by helix allocate"):
            raise OutputError("exists and was not written by helix allocate; not overwriting it", path=str(out))
    artifacts.make_output_dir(out.parent)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="block", leave=False)

    class _Silent:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Silent()


def _verdict(path: Path, source: Any, weights: dict[str, np.ndarray], name: str, positions: int,
             window: int) -> dict[str, Any]:
    from helix_framework.agree import agree

    return agree(path, weights=weights, candidate_name=name, positions=positions, window=window,
                 source=source).to_json()


def _figures(verdict: dict[str, Any]) -> dict[str, Any]:
    lo, hi = verdict["intervals"]["top1"]
    return {"positions": int(verdict["positions"]), "top1": float(verdict["top1"]), "top1_ci_low": float(lo),
            "top1_ci_high": float(hi), "top5": float(verdict["top5"]), "kl_mean": float(verdict["kl"]["mean"]),
            "certified": bool(verdict["certified"])}


def _summary_row(option: Option, verdict: dict[str, Any], bpw: float, mhash: str, key: str,
                 weights: np.ndarray) -> dict[str, Any]:
    cand = option.candidate
    return {"candidate_key": f"allocate-uniform:{key}", "sweep": SWEEP, "candidate": cand.name,
            "model_hash": mhash, "status": "ok", "codec": cand.codec, "rotation": cand.rotation.kind,
            "config": json.dumps(cand.to_json()), "point": json.dumps({"file": option.file}),
            "weights": int(weights.sum()), "tensors": len(weights), "bits_per_weight": bpw, **_figures(verdict)}


def _mix_row(mix: Any, verdict: dict[str, Any], bpw: float, mhash: str, target: float, choice: Choice) -> dict[str, Any]:
    from helix_framework.config import canonical_json

    config = mix.to_json()
    key = hashlib.sha256(canonical_json(config).encode()).hexdigest()[:32]
    return {"candidate_key": f"allocate-mix:{key}", "sweep": SWEEP, "candidate": mix.name, "model_hash": mhash,
            "status": "ok", "codec": "mix", "rotation": mix.rotation.kind, "config": json.dumps(config),
            "point": json.dumps({"target_bpw": target, "estimated_cost": choice.cost,
                                 "cost_lower_bound": choice.lower_bound}),
            "bits_per_weight": bpw, **_figures(verdict)}


def _view(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("candidate", "bits_per_weight", "positions", "top1", "top1_ci_low", "top1_ci_high", "top5", "kl_mean",
            "certified")
    return {k: row[k] for k in keys}


def _mix_mapping(options: list[Option], choice: Choice, names: list[str], weights: np.ndarray, out: Path,
                 target: float) -> dict[str, Any]:
    """The top candidate (most weights) as is, renamed, plus one rule per tensor
    naming its candidate file (so each manifest entry names its candidate)."""
    picks = np.array(choice.picks)
    share = np.bincount(picks, weights=weights, minlength=len(options))
    top = int(np.argmax(share))
    counts = ", ".join(f"{o.candidate.name} {share[j] / weights.sum():.1%}" for j, o in enumerate(options) if share[j])
    mapping = {"name": out.stem, **{k: v for k, v in options[top].mapping.items() if k != "name"}}
    mapping["notes"] = (f"Mixed by helix allocate at {target} bits per weight (of the weights: {counts}); every "
                        f"routed tensor names its candidate below, the rest of this file is "
                        f"{Path(options[top].file).name}.")
    routes = list(mapping.get("routes") or [])
    for n, p in zip(names, picks):
        routes.append({"match": f"^{re.escape(n)}$", "candidate": options[int(p)].file})
    mapping["routes"] = routes
    return mapping


def _choice_view(choice: Choice, options: list[Option], names: list[str], weights: np.ndarray, cost: np.ndarray,
                 bits: np.ndarray) -> dict[str, Any]:
    picks = np.array(choice.picks)
    by_kind: dict[str, dict[str, int]] = {}
    for n, p in zip(names, picks):
        kind = _tensor_kind(n)
        by_kind.setdefault(kind, {})
        by_kind[kind][options[int(p)].candidate.name] = by_kind[kind].get(options[int(p)].candidate.name, 0) + 1
    return {"estimated_cost": choice.cost, "cost_lower_bound": choice.lower_bound, "gap": choice.gap,
            "bits_per_weight": choice.bits / weights.sum(),
            "tensors": {n: options[int(p)].candidate.name for n, p in zip(names, picks)},
            "by_kind": by_kind}


def _tensor_kind(name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``attn_q``: the name without block number and parameter."""
    parts = [p for p in name.split(".") if not p.isdigit() and p not in ("weight", "blk", "model", "layers")]
    return ".".join(parts) or name


class _Results:
    """The allocate rows in a results directory (LanceDB)."""

    def __init__(self, directory: str | Path):
        from helix_framework.results import ResultsDB

        self.directory = Path(directory)
        self.db = ResultsDB(directory)

    def lock(self) -> Any:
        from helix_framework import outlock

        return outlock.hold(self.db.directory, "allocate")

    def estimates(self, key: str) -> dict[str, tuple[int, float, float]] | None:
        from helix_framework.results import ALLOCATIONS

        rows = [r for r in self.db.rows(ALLOCATIONS) if r["estimate_key"] == key]
        if not rows:
            return None
        return {r["tensor"]: (int(r["bits"]), float(r["block_kl"]), float(r["output_error"])) for r in rows}

    def uniform(self, key: str) -> dict[str, Any] | None:
        from helix_framework.results import CANDIDATES

        rows = [r for r in self.db.rows(CANDIDATES) if r["candidate_key"] == f"allocate-uniform:{key}"
                and r["status"] == "ok"]
        return max(rows, key=lambda r: r["time"]) if rows else None

    def store(self, key: str, option: Option, mhash: str, names: list[str], weights: np.ndarray, bits: np.ndarray,
              kl: np.ndarray, err: np.ndarray, row: dict[str, Any]) -> None:
        """The candidate's estimates, then its uniform verdict (each one LanceDB add)."""
        import pyarrow as pa

        from helix_framework.results import ALLOCATIONS, CANDIDATES, _schema

        now = _dt.datetime.now(_dt.timezone.utc)
        rows = [{"estimate_key": key, "model_hash": mhash, "candidate": option.candidate.name,
                 "candidate_file": option.file, "tensor": n, "weights": int(w), "bits": int(b),
                 "block_kl": float(k), "output_error": float(e), "time": now}
                for n, w, b, k, e in zip(names, weights, bits, kl, err)]
        self.db.table(ALLOCATIONS).add(pa.Table.from_pylist(rows, schema=_schema(ALLOCATIONS)))
        row["time"] = now
        self.db.table(CANDIDATES).add(pa.Table.from_pylist([row], schema=_schema(CANDIDATES)))

    def store_mix(self, row: dict[str, Any], names: list[str], weights: np.ndarray, choice: Choice,
                  options: list[Option], cost: np.ndarray, bits: np.ndarray, mhash: str, mix_name: str) -> None:
        """The choice per tensor (tensor rows of the mix), then the mix's verdict row."""
        now = _dt.datetime.now(_dt.timezone.utc)
        row["time"] = now
        tensor_rows = []
        for i, (n, p) in enumerate(zip(names, choice.picks)):
            tensor_rows.append({"candidate_key": row["candidate_key"], "sweep": SWEEP, "candidate": mix_name,
                                "model_hash": mhash, "time": now, "tensor": n,
                                "bits_per_weight": float(bits[i, p] / weights[i]), "total_bits": float(bits[i, p]),
                                "metrics": json.dumps({"chosen": options[p].candidate.name,
                                                       "estimated_cost": float(cost[i, p])})})
        self.db.write_candidate(tensor_rows, row)
