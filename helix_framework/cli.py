"""The ``helix`` command. The only module that prints.

Subcommands import what they need when they run, so ``helix --help``
imports no plugin, no numpy and no llvmlite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- helix plugins ---------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from helix_framework.host import get_host

    host = get_host()
    rows = [r.as_json() for r in host.registrations()] + [f.as_json() for f in host.failures]
    rows.sort(key=lambda r: (r["kind"], r["name"], r["source"]))
    if args.json:
        _print_json(rows)
    else:
        print(
            _table(
                [
                    (r["kind"], r["name"], r["distribution"], r["version"], r["source"], ",".join(r["lane_widths"]) or "-",
                     r["status"] + (f": {r['error']}" if r["error"] else ""))
                    for r in rows
                ],
                ("kind", "name", "distribution", "version", "source", "lane widths", "status"),
            )
        )
    failed = bool(host.failures) or any(r["status"] == "failed" for r in rows)
    return EXIT_FAIL if host.strict and failed else EXIT_OK


# -- helix check -----------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Every file is checked and reported; the exit code is 2 if any failed."""
    from helix_framework.config import candidate_from_document, is_sweep, kernel_signature, read_config_file
    from helix_framework.errors import HelixError
    from helix_framework.host import get_host
    from helix_framework.sweep import sweep_from_document

    host = get_host()
    host.check_strict()
    failed = 0
    for path in args.configs:
        try:
            doc = read_config_file(path)
            if is_sweep(doc):
                spec = sweep_from_document(doc, host)
                print(f"ok  {path}: sweep {spec.name}: {spec.cardinality} points over "
                      f"{', '.join(axis for axis, _ in spec.axes)}")
                continue
            candidate = candidate_from_document(doc, host)
            sig = kernel_signature(candidate, host)
            label = " (in-sample)" if candidate.in_sample else ""
            print(f"ok  {path}: candidate {candidate.name}{label} codec={candidate.codec} "
                  f"rotation={candidate.rotation.kind} kernel_signature={sig[:16]}")
            for choice in candidate.choices:
                c = choice.candidate
                where = f" blocks [{', '.join(choice.blocks)}]" if choice.blocks is not None else ""
                print(f"    routes /{choice.match}/{where} -> {c.name} codec={c.codec} rotation={c.rotation.kind}")
        except HelixError as exc:
            failed += 1
            print(f"helix: error: {exc}", file=sys.stderr)
    if failed and len(args.configs) > 1:
        print(f"helix: {failed} of {len(args.configs)} files failed", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


# -- helix calibrate / verify / decode -------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_summary(summary: dict[str, Any]) -> None:
    print(f"candidate  {summary['candidate']}  ->  {summary['out_dir']}")
    print(f"tensors    {summary['tensors']}  ({', '.join(f'{k} {v}' for k, v in sorted(summary['routed'].items()))})")
    rows = [(k, _fmt(v)) for k, v in summary["held_out"].items() if k != "label_in_sample"]
    label = "in-sample" if summary["held_out"].get("label_in_sample") else "held-out"
    rows += [(k, _fmt(v)) for k, v in summary["bits"].items()]
    rows += [("seconds", f"{summary['seconds']:.1f}")]
    rows += [(f"flag {k}", v) for k, v in summary["flags"].items()]
    rows += [(f"not applicable: {k}", f"{v} tensor(s)") for k, v in summary.get("not_applicable", {}).items()]
    rows += [(f"kernels {k}", v) for k, v in summary["kernels"].items()]
    agreement = summary.get("token_agreement")
    if agreement:
        rows += [(f"token agreement {k}", _fmt(v)) for k, v in agreement.items() if k not in ("verdict", "partial")]
    print(_table(rows, (f"figure ({label} rows)", "value")))
    if agreement:
        print(agreement["verdict"])
    elif summary.get("partial"):
        print(summary["partial"]["message"])


def cmd_calibrate(args: argparse.Namespace) -> int:
    from helix_framework.calibrate import calibrate
    from helix_framework.config import load_candidate
    from helix_framework.host import get_host

    host = get_host()
    host.check_strict()
    candidate = load_candidate(args.config, host)
    summary = calibrate(args.model, candidate, args.out, tensors=args.tensors, host=host,
                        progress=not args.json and sys.stderr.isatty())
    if args.json:
        _print_json(summary.to_json())
    else:
        print_summary(summary.to_json())
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from helix_framework.artifacts import artifact_files, read_manifest, unreferenced, verify

    manifest = read_manifest(Path(args.dir))
    problems = verify(Path(args.dir))
    n = sum(1 for _ in artifact_files(manifest))
    for line in problems:
        print(f"BAD  {line}")
    for name in unreferenced(Path(args.dir), manifest):
        print(f"warning: {name} is not referenced by the manifest (not written by this run; left alone)",
              file=sys.stderr)
    print(f"{n - len(problems)} of {n} artifact files match the manifest")
    return EXIT_FAIL if problems else EXIT_OK


def cmd_decode(args: argparse.Namespace) -> int:
    from helix_framework.calibrate import decode
    from helix_framework.host import get_host

    result = decode(args.dir, args.out, host=get_host())
    copied = f"; copied {', '.join(result['copied'])}" if result["copied"] else ""
    print(f"wrote {result['tensors']} tensors to {result['out']}{copied}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from collections import Counter

    from helix_framework.export_gguf import export_gguf
    from helix_framework.host import get_host

    result = export_gguf(args.dir, args.out, dtype=args.dtype, host=get_host(), progress=sys.stderr.isatty())
    kinds = Counter(result["written"].values())
    print(f"wrote {result['tensors']} tensors and {result['metadata']} metadata keys to {result['out']}")
    for how, n in sorted(kinds.items()):
        print(f"  {n:4d}  {how}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from helix_framework.artifacts import read_manifest
    from helix_framework.calibrate import mark_partial, partial_of

    manifests = [read_manifest(Path(d)) for d in args.dirs]
    summaries = []
    for m in manifests:
        # partial is recomputed from the entries: manifests written before the summary said so
        partial = partial_of(m["tensors"])
        s = {**m["summary"], "partial": partial}
        if s.get("token_agreement"):
            s["token_agreement"] = mark_partial(s["token_agreement"], partial)
        summaries.append(s)
    # a column per run: its candidate, the model it compressed and where it lives
    columns = [f"{s['candidate']} on {Path(m['source']['path']).name} ({d})" for s, m, d in zip(summaries, manifests, args.dirs)]
    keys: list[str] = []
    for section in ("held_out", "bits"):
        for s in summaries:
            keys += [f"{section}.{k}" for k in s[section] if f"{section}.{k}" not in keys and k != "label_in_sample"]
    rows = []
    for key in keys:
        section, name = key.split(".", 1)
        rows.append([name] + [_fmt(s[section].get(name, "-")) for s in summaries])
    rows.append(["seconds"] + [f"{s['seconds']:.1f}" for s in summaries])
    rows.append(["tensors (codec/all)"] + [f"{s['routed'].get('codec', 0)}/{s['tensors']}" for s in summaries])
    rows.append(["flags"] + [", ".join(f"{k} {v}" for k, v in s["flags"].items()) or "-" for s in summaries])
    if any(s.get("token_agreement") for s in summaries):
        for key in ("positions", "top1", "top5", "kl_mean"):
            rows.append([f"token agreement {key}"] + [_fmt((s.get("token_agreement") or {}).get(key, "-")) for s in summaries])
    label = "in-sample" if any(s["held_out"].get("label_in_sample") for s in summaries) else "held-out"
    print(_table(rows, [f"figure ({label} means over codec tensors)", *columns]))
    for s, column in zip(summaries, columns):
        if s.get("token_agreement"):
            print(f"{column}: {s['token_agreement']['verdict']}")
        elif s["partial"]:
            print(f"{column}: {s['partial']['message']}")
    return EXIT_OK


def cmd_agree(args: argparse.Namespace) -> int:
    from helix_framework.agree import agree, is_encoder, read_text, tensors_read_by_model, weights_from_gguf
    from helix_framework.artifacts import read_manifest
    from helix_framework.calibrate import mark_partial, partial_of, weights_from_artifacts, weights_from_config
    from helix_framework.config import load_candidate
    from helix_framework.host import get_host
    from helix_framework.measure.agreement import MIN_POSITIONS
    from helix_framework.models import resolve_model
    from helix_framework.sources import open_source

    from helix_framework.agree import adc_linears
    from helix_framework.errors import AgreementError

    host = get_host()
    source = open_source(resolve_model(args.model))
    given = [f"--{k}" for k in ("positions", "window", "text") if getattr(args, k) is not None]
    if given and is_encoder(source):
        raise AgreementError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to decoders only; "
                             f"{args.model} is an encoder, scored on "
                             "every sentence of the prompt set (give --prompts to change them)")
    if args.engine == "adc" and not args.artifacts:
        raise AgreementError("--engine adc runs from codes: give --artifacts DIR (a calibration output)")
    if args.artifacts:
        weights, name = weights_from_artifacts(args.artifacts, source, host), str(args.artifacts)
    elif args.candidate:
        weights = weights_from_gguf(args.candidate, source, tensors_read_by_model(source))
        name = str(args.candidate)
    else:
        candidate = load_candidate(args.config, host)
        weights, name = weights_from_config(source, candidate, host), candidate.name
    linears = adc_linears(args.artifacts, host) if args.engine == "adc" else None
    report = agree(args.model, weights=weights, candidate_name=name, prompts_dir=args.prompts,
                   positions=MIN_POSITIONS if args.positions is None else args.positions,
                   window=512 if args.window is None else args.window, source=source, linears=linears,
                   text=read_text(args.text) if args.text else None)
    data = report.to_json()
    if args.artifacts:
        data = mark_partial(data, partial_of(read_manifest(Path(args.artifacts))["tensors"]))
    if args.json:
        _print_json(data)
    else:
        print_agreement(data)
        if args.llamacpp_report and data.get("llamacpp"):
            print()
            print(llamacpp_report(data["llamacpp"]))
    return EXIT_OK if data["certified"] else EXIT_FAIL


def llamacpp_report(s: dict[str, float]) -> str:
    """The summary of llama.cpp's ``perplexity --kl-divergence``, line for line
    in its layout (its labels, widths and percent scaling)."""
    lines = ["====== Perplexity statistics ======"]
    if "ppl_q" in s:
        lines += [
            f"Mean PPL(Q)                   : {s['ppl_q']:10.6f} ± {s['ppl_q_unc']:10.6f}",
            f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_unc']:10.6f}",
        ]
        if "ln_ppl_correlation" in s:
            lines.append(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * s['ln_ppl_correlation']:6.2f}%")
        lines += [
            f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_unc']:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_unc']:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {s['ppl_diff']:10.6f} ± {s['ppl_diff_unc']:10.6f}",
        ]
    lines += ["", "====== KL divergence statistics ======",
              f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_mean_unc']:10.6f}",
              f"Maximum KLD: {s['kld_max']:10.6f}"]
    lines += [f"{_pct_label(q)}   KLD: {s[f'kld_p{q:g}']:10.6f}" for q in (99.9, 99.0, 95.0, 90.0)]
    lines.append(f"Median  KLD: {s['kld_median']:10.6f}")
    lines += [f"{_pct_label(q)}   KLD: {s[f'kld_p{q:g}']:10.6f}" for q in (10.0, 5.0, 1.0, 0.1)]
    lines += [f"Minimum KLD: {s['kld_min']:10.6f}", "", "====== Token probability statistics ======"]
    if "dp_mean" in s:
        lines += [f"Mean    Δp: {100 * s['dp_mean']:6.3f} ± {100 * s['dp_mean_unc']:5.3f} %",
                  f"Maximum Δp: {100 * s['dp_max']:6.3f}%"]
        lines += [f"{_pct_label(q)}   Δp: {100 * s[f'dp_p{q:g}']:6.3f}%" for q in (99.9, 99.0, 95.0, 90.0, 75.0)]
        lines.append(f"Median  Δp: {100 * s['dp_median']:6.3f}%")
        lines += [f"{_pct_label(q)}   Δp: {100 * s[f'dp_p{q:g}']:6.3f}%" for q in (25.0, 10.0, 5.0, 1.0, 0.1)]
        lines += [f"Minimum Δp: {100 * s['dp_min']:6.3f}%",
                  f"RMS Δp    : {100 * s['rms_dp']:6.3f} ± {100 * s['rms_dp_unc']:5.3f} %"]
    lines.append(f"Same top p: {100 * s['same_top']:6.3f} ± {100 * s['same_top_unc']:5.3f} %")
    return "\n".join(lines)


def _pct_label(q: float) -> str:
    return f"{q:4.1f}%"


def print_agreement(data: dict[str, Any]) -> None:
    if data.get("kind") == "encoder":
        rows = [("sentences", data["sentences"]), ("embedding cosine mean", _fmt(data["cosine_mean"])),
                ("embedding cosine min", _fmt(data["cosine_min"]))]
    else:
        lo1, hi1 = data["intervals"]["top1"]
        lo5, hi5 = data["intervals"]["top5"]
        kl = data["kl"]
        rows = [
            ("positions", data["positions"]),
            ("top-1 agreement", f"{data['top1']:.4f}  [{lo1:.4f}, {hi1:.4f}]"),
            ("top-5 agreement", f"{data['top5']:.4f}  [{lo5:.4f}, {hi5:.4f}]"),
            ("KL mean", f"{kl['mean']:.5f} +- {kl['stderr']:.5f}" if kl["stderr"] is not None else f"{kl['mean']:.5f}"),
            ("KL median / p99 / max", f"{kl['median']:.5f} / {kl['p99']:.5f} / {kl['max']:.5f}"),
            ("RMS delta p", f"{data['rms_dp']:.5f}"),
            ("perplexity reference / candidate", f"{data['perplexity']['reference']:.3f} / {data['perplexity']['candidate']:.3f}"),
            ("divergence positions", len(data["divergence_positions"])),
            ("hidden-state rel. error, last layer", f"{data['per_layer'][-1]:.5f}"),
        ]
    seconds = data.get("seconds", {})
    if "candidate" in seconds:
        rows.append(("candidate forward seconds", f"{seconds['candidate']:.1f} ({data['engine']} engine)"))
    print(f"token agreement of {data['candidate']} on {data['model']}")
    if data.get("scoring"):
        print(f"scored positions (KL, top-1, perplexity): {data['scoring']}")
    print(_table(rows, ("figure", "value")))
    print(data["verdict"])


def cmd_probe(args: argparse.Namespace) -> int:
    import attrs

    from helix_framework.config import load_candidate
    from helix_framework.host import get_host
    from helix_framework.probe import parse_rows, probe

    host = get_host()
    candidate = load_candidate(args.config, host)
    rows = probe(args.model, args.tensor, candidate, parse_rows(args.rows), host=host)
    if args.json:
        _print_json([attrs.asdict(r) for r in rows])
        return EXIT_OK
    metrics = [m for m in ("rel_l2", "icc_3_1", "icc_3_1_pairs", "icc_1_1_pairs", "cosine_mean") if m in rows[0].all]
    header = ["calibration rows"] + [f"{m} {where}" for m in metrics for where in ("train", "held-out", "all")]
    table = []
    for r in rows:
        cells: list[Any] = [r.label + (f" (K capped at {r.centroids_capped_at})" if r.centroids_capped_at else "")]
        for m in metrics:
            held = r.held_out[m] if r.held_out else None
            cells += [_fmt(r.training[m]), "-" if held is None else _fmt(held), _fmt(r.all[m])]
        table.append(cells)
    print(f"probe of {args.tensor} with {candidate.name}")
    print(_table(table, header))
    if any(r.centroids_capped_at for r in rows):
        print("K capped: fewer calibration rows than centroids, so the centroid count was capped at the row count "
              "(as the published probe did); every training row can then be its own centroid.")
    return EXIT_OK


# -- helix tensors ---------------------------------------------------------


def cmd_tensors(args: argparse.Namespace) -> int:
    from helix_framework.models import resolve_model
    from helix_framework.routing import route_tensor
    from helix_framework.sources import open_source

    routes: Any = ()
    if args.config:
        from helix_framework.config import load_candidate
        from helix_framework.host import get_host

        routes = load_candidate(args.config, get_host()).routes
    with open_source(resolve_model(args.model)) as source:
        rows = []
        for info in source.tensors():
            d = route_tensor(info.name, info.shape, routes)
            rows.append({"name": info.name, "dtype": info.dtype, "shape": list(info.shape), "route": d.route,
                         "rule": d.rule, "reason": d.reason})
    if args.json:
        _print_json(rows)
        return EXIT_OK
    print(_table([(r["name"], r["dtype"], "x".join(map(str, r["shape"])), r["route"], r["reason"]) for r in rows],
                 ("name", "dtype", "shape", "route", "reason")))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["route"]] = counts.get(r["route"], 0) + 1
    print(f"{len(rows)} tensors: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return EXIT_OK


# -- helix jit -------------------------------------------------------------


def cmd_jit_stats(args: argparse.Namespace) -> int:
    import dataclasses

    import helix_jit

    data = dataclasses.asdict(helix_jit.cache_stats())
    if args.json:
        _print_json(data)
    else:
        print(_table([(k, v) for k, v in data.items()], ("figure", "value")))
    return EXIT_OK


def cmd_jit_clear(args: argparse.Namespace) -> int:
    import helix_jit

    print(f"cleared the kernel cache ({helix_jit.clear_cache()} entries removed)")
    return EXIT_OK


# -- helix compress / needle ------------------------------------------------


def _default_compressor(host: Any) -> str:
    return "headroom" if "headroom" in host.names("compressor") else "truncate"


def cmd_compress(args: argparse.Namespace) -> int:
    import time

    from helix_framework.compressor import read_text_file
    from helix_framework.errors import HelixError
    from helix_framework.host import get_host

    if args.max_bytes < 1:
        raise HelixError(f"--max-bytes must be >= 1; got {args.max_bytes}")
    text = read_text_file(args.file, args.max_bytes)
    host = get_host()
    name = args.compressor or _default_compressor(host)
    compressor = host.compressor(name)
    target = len(text) // 2 if args.target_chars is None else args.target_chars
    if target < 0:
        raise HelixError(f"--target-chars must be >= 0; got {target}")
    t0 = time.perf_counter()
    try:
        result = compressor.compress(text, target, content_type=args.content_type)
    except ValueError as exc:
        raise HelixError(f"compressor {name!r}: {exc}") from None
    ms = (time.perf_counter() - t0) * 1e3
    if args.json:
        _print_json({"path": result.path, "ratio": result.ratio, "fallback": result.fell_back,
                     "reason": result.reason, "milliseconds": ms, "compressor": name, "file": args.file,
                     "input_chars": len(text), "output_chars": len(result.text), "target_chars": target,
                     "text": result.text})
    else:
        sys.stdout.write(result.text if result.text.endswith("\n") or not result.text else result.text + "\n")
        fell = f"; fell back: {result.reason}" if result.fell_back else ""
        print(f"helix: {name} via {result.path}: {len(text)} -> {len(result.text)} chars "
              f"(ratio {result.ratio:.4f}) in {ms:.1f} ms{fell}", file=sys.stderr)
    return EXIT_OK


def _needle_ratios(values: list[float] | None) -> list[float]:
    import math

    from helix_framework.errors import HelixError

    for r in values or []:
        if not (math.isfinite(r) and 0 < r <= 1):
            raise HelixError(f"--ratio must be a finite number in (0, 1]; got {r}")
    return values or [0.5, 0.25]


def cmd_needle(args: argparse.Namespace) -> int:
    from helix_framework.errors import HelixError
    from helix_framework.host import get_host
    from helix_framework.needle import build_corpus, format_table, load_corpus, run_benchmark

    ratios = _needle_ratios(args.ratio)
    for flag, value in (("--documents", args.documents), ("--needles-per-doc", args.needles_per_doc),
                        ("--window", args.window), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise HelixError(f"{flag} must be >= 1; got {value}")
    host = get_host()
    names = args.compressor or (["truncate", "headroom"] if "headroom" in host.names("compressor") else ["truncate"])
    compressors = {n: host.compressor(n) for n in dict.fromkeys(names)}
    corpus = load_corpus(args.corpus) if args.corpus else build_corpus(seed=args.seed)
    s = corpus.summary()
    kinds = ", ".join(f"{t} {v['needles']} in {v['docs']} docs" for t, v in s["by_type"].items())
    origin = args.corpus or f"seed {s['seed']}"
    corpus_line = f"corpus {origin} sha256 {s['sha256'][:16]} (python {s['python']}): {s['needles']} needles ({kinds})"
    if args.answer:
        return _needle_answers(args, corpus, compressors, ratios, corpus_line)
    rows = run_benchmark(corpus, compressors, ratios)
    if args.json:
        _print_json({"corpus": s, "rows": [r.as_json() for r in rows]})
    else:
        print(corpus_line)
        print(format_table(rows))
    return EXIT_OK


def _needle_answers(args: argparse.Namespace, corpus: Any, compressors: dict[str, Any], ratios: list[float],
                    corpus_line: str) -> int:
    import time

    from tqdm import tqdm

    from helix_framework.needle import answer_table, ask_plan, run_answers
    from helix_framework.needle.answers import UNCOMPRESSED, sample_answers
    from helix_framework.needle.reader import load_chat_reader

    t0 = time.perf_counter()
    reader = load_chat_reader(args.reader, window=args.window, max_new_tokens=args.max_new_tokens)
    plan = ask_plan(corpus, args.documents, args.needles_per_doc, seed=args.seed)
    steps = len(plan) * (1 + len(compressors) * len(ratios))
    with tqdm(total=steps, desc="needle --answer", unit="context", leave=False) as bar:
        run = run_answers(plan, compressors, ratios, reader, progress=lambda _: bar.update())
    wall = time.perf_counter() - t0
    asked = (f"asked {run.needles} needles in {run.documents} documents (at most {args.needles_per_doc} per "
             f"document) in {1 + len(compressors) * len(ratios)} conditions")
    reading = (f"reader {reader.name} ({reader.template} chat template), window {reader.window} document tokens, "
               f"at most {reader.max_new_tokens} answer tokens")
    if args.json:
        _print_json({"corpus": corpus.summary(), "reader": {"model": reader.name, "template": reader.template,
                     "window": reader.window, "max_new_tokens": reader.max_new_tokens},
                     "ratios": ratios, "compressors": list(compressors), "wall_seconds": wall, **run.as_json()})
        return EXIT_OK
    print(corpus_line)
    print(f"{asked}; {reading}")
    print(answer_table(run.rows))
    print(f"\nread {run.tokens_read} tokens in {run.seconds:.1f} s ({run.tokens_read / max(run.seconds, 1e-9):.0f} "
          f"tokens/s); {run.contexts_read} contexts computed, {run.contexts_reused} reused; wall {wall:.1f} s; "
          f"{sum(a.capped for a in run.answers)} of {len(run.answers)} answers stopped at the token limit")
    print("\nsample of graded answers (guess: correct although the value was not in the context):")
    for a in sample_answers(run.answers, 20, seed=args.seed):
        verdict = "guess" if a.guess else "right" if a.correct else "wrong"
        cond = "uncompressed" if a.compressor == UNCOMPRESSED else f"{a.compressor} {a.ratio_target:g}"
        print(f"  {verdict:5}  {cond:14} {a.doc_id}  {a.key} = {a.value}  "
              f"({'in context' if a.survived else 'not in context'}): {a.answer!r}{' [cut]' if a.capped else ''}")
    return EXIT_OK


# -- helix sweep / frontier --------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> int:
    from helix_framework.host import get_host
    from helix_framework.sweep import load_sweep, point_label, run_sweep

    host = get_host()
    host.check_strict()
    spec = load_sweep(args.file, host)
    quiet = args.json

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if quiet:
            return
        if kind == "invalid":
            print(f"invalid point {data['index']} ({point_label(data['point'])}): {data['reason']}", file=sys.stderr)
        elif kind == "start":
            print(f"sweep {spec.name}: {data['points']} points, {data['invalid']} invalid, {data['already_done']} "
                  f"already in the table, {data['to_run']} to run on {data['workers']} {data['executor']} worker(s)",
                  file=sys.stderr)
        elif kind == "candidate":
            figs = " ".join(f"{k}={_fmt(data[k])}" for k in ("bits_per_weight", "rel_l2", "icc_3_1", "top1")
                            if data.get(k) is not None)
            status = figs if data["status"] == "ok" else f"FAILED {data['error']}"
            print(f"[{data['done']}/{data['total']}] {data['candidate']}: {status} ({data['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)

    summary = run_sweep(spec, args.db, model=args.model, executor=args.executor, address=args.address,
                        jobs=args.jobs, strict=args.strict, positions=args.positions, host=host, on_event=on_event)
    data = summary.to_json()
    if args.json:
        _print_json(data)
    else:
        k = data["kernels"]
        print(_table([
            ("points", data["points"]), ("invalid (skipped)", len(data["invalid"])),
            ("already in the table", data["already_done"]), ("ran", data["ran"]), ("ok", data["ok"]),
            ("failed", len(data["failed"])), ("workers", f"{data['workers']} ({data['executor']})"),
            ("seconds", f"{data['seconds']:.1f}"),
            ("kernels distinct / compiled / from cache", f"{k['distinct']} / {k['compiled']} / {k['from_cache']}"),
            ("results", data["db"]),
        ], ("sweep " + data["sweep"], "value")))
    return EXIT_FAIL if data["failed"] else EXIT_OK


def cmd_allocate(args: argparse.Namespace) -> int:
    from helix_framework.allocate import allocate
    from helix_framework.host import get_host

    host = get_host()
    host.check_strict()
    summary = allocate(args.model, args.candidates, args.target_bpw, args.out, db=args.db, positions=args.positions,
                       host=host, progress=not args.json and sys.stderr.isatty())
    data = summary.to_json()
    if args.json:
        _print_json(data)
        return EXIT_OK
    rows = []
    for r in [*data["candidates"], data["mix"]]:
        rows.append((r["candidate"], f"{r['bits_per_weight']:.4f}",
                     f"{r['top1']:.4f} [{r['top1_ci_low']:.4f}, {r['top1_ci_high']:.4f}]", f"{r['kl_mean']:.4f}",
                     "yes" if r["certified"] else "no"))
    print(_table(rows, ("candidate", "bits/weight", "top-1 [95% interval]", "KL mean", "certified")))
    c = data["choice"]
    print(f"mix written to {data['out']}: estimated cost {c['estimated_cost']:.5f} (no choice can go below "
          f"{c['cost_lower_bound']:.5f}); {data['mix']['positions']} positions; "
          f"{data['seconds']['total']:.0f} s")
    for kind, counts in sorted(c["by_kind"].items()):
        print(f"  {kind}: " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())))
    return EXIT_OK


def cmd_frontier(args: argparse.Namespace) -> int:
    from helix_framework.frontier import compute_frontier, load_candidates, plot_frontier

    result = compute_frontier(load_candidates(args.db, sweep=args.sweep), x=args.x, y=args.y)
    if args.plot:
        plot_frontier(result, args.plot)
    data = result.to_json()
    if args.json:
        _print_json({**data, "plot": args.plot})
        return EXIT_OK
    rows = [(f"{p['x']:.4f}", _fmt(p["y"]), "yes" if p.get("certified") else "no" if p.get("certified") is False
             else "-", p["candidate"]) for p in data["frontier"]]
    print(f"Pareto frontier of {data['y_label']} against {data['x_label']}: {len(data['frontier'])} of "
          f"{data['candidates']} candidates ({data['missing_y']} without {args.y})")
    print(_table(rows, (args.x, args.y, "certified", "candidate")))
    if args.plot:
        print(f"plot written to {args.plot}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from helix_framework.serve import ServeOptions, serve
    from helix_framework.serve.guard import default_roots

    if args.jobs < 1 or args.memory < 1:
        print("helix: error: --jobs and --memory must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    for r in args.root:
        if not Path(r).is_dir():
            print(f"helix: error: --root {r}: not a directory", file=sys.stderr)
            return EXIT_ERROR
    roots = tuple(Path(r) for r in args.root) or tuple(default_roots())
    serve(ServeOptions(host=args.host, port=args.port, models=tuple(args.model), roots=roots, token=args.token,
                       jobs=args.jobs, memory_mib=args.memory))
    return EXIT_OK


# -- parser and main -------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helix",
        description="A lab for compression codecs of model weights and context.",
        epilog="exit codes: 0 success (a verdict that passed); 1 a negative verdict (not certified, a failed "
        "check of plugins under HELIX_STRICT_PLUGINS=1); 2 bad input, a usage error or any other error "
        "(one line on stderr); 130 interrupted",
    )
    parser.add_argument("--version", action="version", version="helix-framework 0.1.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list every codec, rotation, compressor and measurement")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("check", help="validate candidate configs without running anything")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="candidate or sweep YAML files; each is reported")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("calibrate", help="compress every routed tensor of a model and measure it")
    p.add_argument("model", metavar="MODEL",
                   help=".safetensors file, Hugging Face directory, .gguf file, or an embedded model: smollm2, minilm")
    p.add_argument("--config", required=True, metavar="FILE", help="candidate YAML")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (manifest.json + tensors/)")
    p.add_argument("--tensors", metavar="REGEX", help="only compress tensors whose name matches")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("verify", help="re-hash every artifact file against the manifest")
    p.add_argument("dir", metavar="DIR", help="a calibration output directory")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("decode", help="rebuild a loadable safetensors model from artifacts")
    p.add_argument("dir", metavar="DIR", help="a calibration output directory")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="the model file to write (side files such as tokenizer.json go beside it)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("export", help="write a calibration output as a GGUF file llama.cpp loads")
    p.add_argument("dir", metavar="DIR", help="a calibration output directory (GGUF source)")
    p.add_argument("--format", required=True, choices=["gguf"], help="the output format")
    p.add_argument("--out", required=True, metavar="FILE.gguf", help="the file to write (atomically)")
    p.add_argument("--dtype", choices=["f16", "f32"], default="f16",
                   help="type of tensors whose codec has no GGUF form (default f16)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="summaries of calibration outputs side by side")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="calibration output directories, one column each")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("agree", help="token agreement of a compressed model against the original")
    p.add_argument("model", metavar="MODEL", help="the uncompressed model: a path or smollm2, minilm")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--artifacts", metavar="DIR", help="a calibration output of MODEL")
    which.add_argument("--config", metavar="FILE", help="a candidate, calibrated in memory")
    which.add_argument("--candidate", metavar="FILE.gguf",
                       help="a quantized GGUF of MODEL's architecture and tensor shapes (e.g. from llama.cpp)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--prompts", metavar="DIR", help="directory of *.txt prompts (default: the built-in set)")
    text.add_argument("--text", metavar="FILE",
                      help="a text file read as llama.cpp's perplexity -f does: consecutive windows, each "
                           "scored on its second half (decoders only)")
    p.add_argument("--positions", type=int, metavar="N",
                   help="teacher-forced positions of a decoder (default 2000); refused for an encoder, which is "
                        "scored on every sentence of the prompt set")
    p.add_argument("--window", type=int, metavar="T",
                   help="tokens per independent window of a decoder (default 512); refused for an encoder")
    p.add_argument("--engine", choices=("dense", "adc"), default="dense",
                   help="adc: compressed layers multiply from their codes (codecs with compressed_matmul)")
    p.add_argument("--llamacpp-report", action="store_true",
                   help="also print the statistics in the layout of llama.cpp's perplexity --kl-divergence")
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    p.set_defaults(func=cmd_agree)

    p = sub.add_parser("tensors", help="every tensor of a model: dtype, shape, route and the reason")
    p.add_argument("model", metavar="MODEL", help="a model path or an embedded model name (smollm2, minilm)")
    p.add_argument("--config", metavar="FILE", help="route with this candidate's routes: rules (default: built-in rules)")
    p.add_argument("--json", action="store_true", help="print a JSON list (name, dtype, shape, route, rule, reason)")
    p.set_defaults(func=cmd_tensors)

    p = sub.add_parser("probe", help="in-sample vs held-out figures as the calibration rows grow")
    p.add_argument("model", metavar="MODEL", help="a model path or smollm2, minilm")
    p.add_argument("--tensor", required=True, metavar="NAME", help="the matrix to probe (see helix tensors)")
    p.add_argument("--config", required=True, metavar="FILE", help="candidate YAML")
    p.add_argument("--rows", default="128,256,512,1024,all", metavar="N,N,...,all",
                   help="calibration row counts to try (default 128,256,512,1024,all)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_probe)

    jit = sub.add_parser("jit", help="the compiled-kernel cache")
    jit_sub = jit.add_subparsers(dest="jit_command", metavar="ACTION")
    q = jit_sub.add_parser("stats", help="entries, bytes, hits, misses, compile time")
    q.add_argument("--json", action="store_true", help="print the figures as JSON")
    q.set_defaults(func=cmd_jit_stats)
    q = jit_sub.add_parser("clear", help="remove every cached kernel")
    q.set_defaults(func=cmd_jit_clear)
    jit.set_defaults(func=lambda a: _usage(jit, "helix jit needs an action: stats or clear"))

    p = sub.add_parser("compress", help="compress a text file with a context compressor")
    p.add_argument("file", metavar="FILE", help="a text file")
    p.add_argument("--compressor", metavar="NAME", help="registered compressor (default: headroom if installed, else truncate)")
    p.add_argument("--target-chars", type=int, metavar="N", help="at most N characters out (default: half the input)")
    p.add_argument("--content-type", choices=["diff", "patch", "log", "code", "json", "prose"], metavar="T",
                   help="diff, patch, log, code, json or prose (default: detected)")
    p.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024, metavar="N",
                   help="refuse a FILE larger than N bytes (default 64 MiB); only regular files are read")
    p.add_argument("--json", action="store_true", help="print JSON with the text, ratio, path, fallback, milliseconds")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("needle", help="needle benchmark: do compressed contexts keep their key=value facts?")
    p.add_argument("--compressor", action="append", metavar="NAME", help="repeatable (default: truncate and headroom)")
    p.add_argument("--ratio", action="append", type=float, metavar="R", help="target ratio in (0, 1], repeatable (default: 0.5 and 0.25)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--corpus", metavar="FILE.json", help="your own documents and needles (JSON manifest) instead "
                   "of the generated corpus")
    p.add_argument("--answer", action="store_true", help="let a reader model answer every needle's question from "
                   "each context (uncompressed and compressed) instead of checking survival only")
    p.add_argument("--reader", default="smollm2", metavar="MODEL", help="--answer: a chat decoder, name or path "
                   "(default smollm2)")
    p.add_argument("--window", type=int, default=1024, metavar="N", help="--answer: document tokens the reader "
                   "reads; longer contexts are cut (default 1024)")
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N", help="--answer: longest answer, in "
                   "tokens (default 16)")
    p.add_argument("--documents", type=int, default=12, metavar="N", help="--answer: documents asked, shortest of "
                   "each type in turn (default 12)")
    p.add_argument("--needles-per-doc", type=int, default=4, metavar="K", help="--answer: needles asked per "
                   "document (default 4)")
    p.add_argument("--json", action="store_true", help="print every figure (and with --answer every answer) as JSON")
    p.set_defaults(func=cmd_needle)

    p = sub.add_parser("sweep", help="run a grid of candidates; results appended to LanceDB tables")
    p.add_argument("file", metavar="FILE", help="sweep YAML (grid, fixed, measure, tensors, model)")
    p.add_argument("--model", metavar="MODEL", help="overrides the sweep file's model")
    p.add_argument("--db", required=True, metavar="DIR", help="LanceDB directory (tables candidates and tensors)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool using every core; ray: Ray tasks (default local)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local instance)")
    p.add_argument("--jobs", type=int, metavar="N", help="workers (default: every core)")
    p.add_argument("--positions", type=int, metavar="N", help="token agreement positions (default: the file's, else 2000)")
    p.add_argument("--strict", action="store_true", help="refuse the whole sweep if any point is invalid")
    p.add_argument("--json", action="store_true", help="print the sweep summary as JSON")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("allocate", help="one candidate per tensor under a bits budget; the mix measured by token agreement")
    p.add_argument("model", metavar="MODEL", help="an embedded model name (smollm2), a directory or a .gguf file")
    p.add_argument("--candidates", nargs="+", required=True, metavar="FILE",
                   help="uniform candidate YAMLs to choose between (the same calibration: section in each)")
    p.add_argument("--target-bpw", type=float, required=True, metavar="X",
                   help="average bits per weight of the mix over the routed tensors (codes, scales, codebooks, rotation)")
    p.add_argument("--out", required=True, metavar="MIX.yaml", help="where the mix config is written (atomically)")
    p.add_argument("--db", metavar="DIR", help="LanceDB directory: estimates, uniform and mix verdicts; a rerun "
                   "reuses the estimates stored there")
    p.add_argument("--positions", type=int, metavar="N", help="token agreement positions of the verdicts (default 2000)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("frontier", help="Pareto frontier of bits per weight against a quality figure")
    p.add_argument("--db", required=True, metavar="DIR", help="the LanceDB directory a sweep wrote")
    p.add_argument("--x", choices=["bits"], default="bits", help="bits per weight (codes + codebooks + rotation)")
    p.add_argument("--y", choices=["top1", "rel_l2", "icc_3_1"], default="top1",
                   help="top1 and icc_3_1 are maximized, held-out rel_l2 minimized (default top1)")
    p.add_argument("--sweep", metavar="NAME", help="only candidates of this sweep")
    p.add_argument("--plot", metavar="FILE.png", help="write a plot of every candidate, the frontier and the gate")
    p.add_argument("--json", action="store_true", help="print the frontier as JSON")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("serve", help="the lab surface: an HTTP API over warm models (loopback by default)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_PATH",
                   help="load at start and keep warm (repeatable); the first is the completions reference")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="request paths must resolve inside a root (repeatable; default: the working directory "
                   "and the helix cache); job records live in the first root's .helix-serve/")
    p.add_argument("--token", help="every request needs the header Authorization: Bearer TOKEN")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="jobs run at the same time (default 1)")
    p.add_argument("--memory", type=int, default=4096, metavar="MIB",
                   help="budget of the warm state in MiB; least recently used models go first (default 4096)")
    p.set_defaults(func=cmd_serve)
    _verbose_everywhere(sub)
    _verbose_everywhere(jit_sub)
    return parser


def _verbose_everywhere(sub: Any) -> None:
    """``-v`` is accepted after any subcommand too (``helix calibrate ... -v``).
    SUPPRESS keeps a subcommand from resetting a ``-v`` given before it."""
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log progress at INFO to stderr")


def _check_environment() -> None:
    """Settings read deep inside a run are checked before any work, so a bad
    value is one line up front rather than a traceback midway."""
    import helix_jit

    from helix_framework.errors import EnvironmentSettingError

    try:
        helix_jit.threads()
    except ValueError as exc:
        raise EnvironmentSettingError(str(exc), variable="HELIX_JIT_THREADS") from None


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    """A usage error: the command's own usage, then one line saying what is missing."""
    parser.print_usage(sys.stderr)
    print(f"helix: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose or os.environ.get("HELIX_TRACE_HOOKS") else logging.WARNING
    logging.basicConfig(level=level, format="helix: %(levelname)s: %(message)s")
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_ERROR
    from helix_framework.errors import HelixError

    try:
        _check_environment()
        return func(args)
    except HelixError as exc:
        print(f"helix: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("helix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
