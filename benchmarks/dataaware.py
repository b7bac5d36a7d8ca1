"""Data-aware candidates, their ablations and data-free anchors on SmolLM2-135M, in one run.

    nice .venv/bin/python benchmarks/dataaware.py [--positions 2000] [--only TEXT]

Every row is calibrated in memory (a data-aware row block by block over its
calibration windows, exactly as `helix calibrate` does) and compared with
the uncompressed model over the same teacher-forced positions of the
built-in prompt set. Rows:

- the three shipped candidates, configs/codec/40, 41 and 42;
- one ablation per part of 40: Lloyd-Max (gaussian) levels replaced by
  even ones, its 5-bit tensors (attn_v, some ffn_down) at 4 bits like the
  rest, error feedback off, rotation off, AWQ-style scaling instead of the
  Hadamard rotation, propagation through the reference blocks instead of
  the compressed ones; 48, the GPTQ-style int4 g128 recipe 40 was before; and
  50, the int2 recipe 42 was; and a codebook (campq residual VQ 2x256 with
  error feedback, GPTVQ-style) in place of 50's int2 codes;
- data-free anchors: RTN int4 g128 symmetric, llama.cpp types through the
  ``gguf`` codec (without statistics its bytes equal llama.cpp's quantizer:
  Q4_0, IQ4_NL, Q4_K, which falls back to Q5_0 on SmolLM2's 576-wide rows,
  and Q8_0), and RTN int4 g32 asymmetric, the cheapest row that certifies.

Bits per weight are the mean over the compressed matrices of codes, scales
and zeros, codebooks and rotation state (``--only`` selects rows by label, repeatable).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CODEC_DIR = ROOT / "configs" / "codec"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # agreement.py's bits helper

from agreement import _bits  # noqa: E402

ROWS_SPLIT = {"calibration": 448, "measurement": 128, "seed": 42}
VQ = {"subspace_dim": 8, "centroids": 256, "codebook": "shared", "row_scale": True, "max_iter": 12}


def _file(name: str) -> dict:
    with open(CODEC_DIR / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _changed(base: dict, **parts: object) -> dict:
    """``base`` with top-level keys replaced (None removes the key)."""
    out = copy.deepcopy(base)
    for key, value in parts.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _with_params(base: dict, **params: object) -> dict:
    """``base`` with ``params`` changed in the candidate and in every codec route rule."""
    out = copy.deepcopy(base)
    for place in [out] + [rule for rule in out.get("routes", []) if "codec" in rule]:
        place["params"] = {**place.get("params", {}), **params}
    return out


def rows() -> list[tuple[str, dict]]:
    """(label, candidate mapping) of every row, in table order."""
    c40, c41, c42 = (_file(n) for n in ("40_dataaware_4bit.yaml", "41_dataaware_3bit.yaml", "42_dataaware_2bit.yaml"))
    c50 = _file("50_gptq_int2_g128.yaml")
    cal = c40["calibration"]
    ef = {**c40["error_feedback"], "cd_passes": 0}  # GPTQ's error feedback alone
    plain = {"rows": ROWS_SPLIT}
    return [
        ("40_dataaware_4bit", c40),
        ("41_dataaware_3bit", c41),
        ("42_dataaware_2bit", c42),
        ("40 with uniform levels", _with_params(c40, levels="uniform")),
        ("40 without its 5-bit tensors", _changed(c40, routes=None)),
        ("40 without error feedback", _changed(c40, error_feedback=None)),
        ("40 without coordinate descent", _changed(c40, error_feedback=ef)),
        ("41 without coordinate descent", _changed(c41, error_feedback=ef)),
        ("42 without coordinate descent", _changed(c42, error_feedback=ef)),
        ("40 without rotation", _changed(c40, rotation=None)),
        ("40 with awq scaling instead of hadamard", _changed(c40, rotation={"kind": "awq"})),
        ("40 with target: layer (each layer fitted to its own output)",
         _changed(c40, calibration={**cal, "target": "layer"})),
        ("40 with propagate: reference", _changed(c40, calibration={**cal, "propagate": "reference", "target": "layer"})),
        ("48_gptq_int4_g128 (40 until Lloyd-Max levels)", _file("48_gptq_int4_g128.yaml")),
        ("50_gptq_int2_g128 (42 until its 3-bit tensors)", c50),
        ("codebook: campq 2x256 of 8 + hadamard, error feedback", _changed(
            c50, codec="campq", params={**VQ, "residual": {"depth": 1, "centroids": 256}}, error_feedback=ef)),
        ("rtn int4 g128 symmetric (data-free)", {**plain, "codec": "rtn", "params": {"bits": 4, "group_size": 128}}),
        ("gguf Q4_0 (llama.cpp quantizer)", {**plain, "codec": "gguf", "params": {"type": "Q4_0"}}),
        ("gguf IQ4_NL (llama.cpp quantizer)", {**plain, "codec": "gguf", "params": {"type": "IQ4_NL"}}),
        ("gguf Q4_K (falls back to Q5_0 on 576-wide rows)", {**plain, "codec": "gguf", "params": {"type": "Q4_K"}}),
        ("gguf Q8_0 (llama.cpp quantizer)", {**plain, "codec": "gguf", "params": {"type": "Q8_0"}}),
        ("rtn int4 g32 asymmetric (data-free)", {**plain, "codec": "rtn",
                                                 "params": {"bits": 4, "group_size": 32, "symmetric": False}}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--only", action="append", help="run only rows whose label contains this text (repeatable)")
    args = parser.parse_args()

    from helix_framework.agree import agree
    from helix_framework.calibrate import weights_from_config
    from helix_framework.config import candidate_from_mapping
    from helix_framework.host import get_host
    from helix_framework.models import resolve_model
    from helix_framework.sources import open_source

    host = get_host()
    source = open_source(resolve_model("smollm2"))
    done = []
    for label, spec in rows():
        if args.only and not any(text in label for text in args.only):
            continue
        cand = candidate_from_mapping({**spec, "name": spec.get("name", label)}, host)
        t = time.perf_counter()
        cpu = time.process_time()
        weights = weights_from_config(source, cand, host)
        fit_s, fit_cpu = time.perf_counter() - t, time.process_time() - cpu
        report = agree("smollm2", weights=weights, candidate_name=label, positions=args.positions, source=source)
        done.append((label, _bits(source, cand, host), report.result, fit_s, fit_cpu))
        print(f"done: {label}: top-1 {report.result['top1']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    if not done:
        return
    first = done[0][2]
    print()
    print(f"SmolLM2-135M, {first['positions']} teacher-forced positions, reference perplexity "
          f"{first['perplexity']['reference']:.2f}")
    print()
    print("| row | bits/weight | top-1 [95% CI] | top-5 | KL mean [95% CI] | perplexity | certified | fit wall s (CPU s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, bits, r, fit_s, fit_cpu in done:
        lo, hi = r["intervals"]["top1"]
        kl = r["kl"]["mean"]
        kl_ci = r["intervals"].get("kl_mean")
        kl_txt = f"{kl:.3f} [{kl_ci[0]:.3f}, {kl_ci[1]:.3f}]" if kl_ci else f"{kl:.3f}"
        print(f"| {label} | {bits:.2f} | {r['top1']:.4f} [{lo:.3f}, {hi:.3f}] | {r['top5']:.4f} | {kl_txt} | "
              f"{r['perplexity']['candidate']:.2f} | {'yes' if r['certified'] else 'no'} | {fit_s:.0f} ({fit_cpu:.0f}) |")
    certified = [(bits, label) for label, bits, r, _, _ in done if r["certified"]]
    if certified:
        bits, label = min(certified)
        print(f"\nlowest bits/weight that certifies: {bits:.2f} ({label})")
    else:
        print("\nno row certifies (top-1 >= 0.99 and top-5 >= 0.999)")


if __name__ == "__main__":
    main()
