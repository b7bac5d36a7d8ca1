"""llama.cpp's quantizer against helix's codecs on SmolLM2-135M, all measured
by `helix agree` on the same positions.

    nice .venv/bin/python benchmarks/llamacpp.py --out /tmp/llamacpp-bench [--positions 2000]

Rows:

- ``llama.cpp <TYPE>``: llama_model_quantize (no importance matrix) of the
  model written as F32 (its own values, dequantized), token embedding kept
  at its source type Q8_0, measured with ``helix agree --candidate``;
- ``gguf <TYPE>``: helix's ``gguf`` codec (byte-identical to llama.cpp's
  quantizer without statistics); ``gguf <TYPE> imatrix``: the same with the
  mean square input of each column from calibration text as importance
  (llama.cpp's imatrix; statistics of the uncompressed model, as llama.cpp
  collects them);
- ``configs/codec/4x_*``: helix's data-aware candidates.

helix rows are calibrated with ``helix calibrate`` and measured with ``helix
agree --artifacts``. Bits per weight are over the 210 linear matrices for
every row (llama.cpp: the bytes of their GGUF blocks; helix: the manifest's
codec_total_bpw). Intervals: Wilson 95% for top-1, mean +- 1.96 standard
errors for KL. Results go to OUT/results.jsonl (a rerun skips finished rows);
the table is printed ordered by bits per weight.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_NL", "Q4_0"]
GGUF_TYPES = ["Q4_K", "IQ4_NL", "Q4_0"]
DATA_AWARE = ["40_dataaware_4bit", "43_dataaware_5bit", "45_dataaware_8bit", "44_dataaware_6bit", "46_dataaware_7bit",
              "41_dataaware_3bit", "42_dataaware_2bit"]
#: llama.cpp's imatrix is collected on the uncompressed model
IMATRIX_CALIBRATION = "{text: builtin, sequences: 16, tokens: 256, seed: 0, held_out: 0.125, propagate: reference}"


def helix(*args: str) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "helix"), *args, "--json"], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode not in (0, 1):  # 1: a negative verdict, still measured
        raise RuntimeError(f"helix {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def linear_bpw(path: Path) -> float:
    import gguf

    bits = n = 0
    for t in gguf.GGUFReader(path, "r").tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            bits += int(t.n_bytes) * 8
            n += int(t.n_elements)
    return bits / n


def f32_model(out: Path) -> Path:
    """SmolLM2 with every tensor dequantized to float32 (the values helix measures against)."""
    from helix_framework.export_gguf import write_f32_copy
    from helix_framework.models import resolve_model

    path = out / "smollm2-f32.gguf"
    return path if path.is_file() else write_f32_copy(resolve_model("smollm2"), path)


def llama_quantize(src: Path, qtype: str, out: Path) -> Path:
    import llama_cpp

    dst = out / f"llama-{qtype}.gguf"
    if not dst.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
        params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0  # the source's own type: embedding unchanged
        params.output_tensor_type = llama_cpp.GGML_TYPE_Q8_0
        params.nthread = 2
        tmp = dst.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama_model_quantize {qtype} failed")
        tmp.rename(dst)
    return dst


def helix_row(label: str, config: Path, out: Path, positions: int) -> dict:
    run = out / "runs" / config.stem
    t = time.perf_counter()
    if not (run / "manifest.json").is_file():
        helix("calibrate", "smollm2", "--config", str(config), "--out", str(run))
    manifest = json.loads((run / "manifest.json").read_text())
    bpw = manifest["summary"]["bits"]["codec_total_bpw"]
    data = helix("agree", "smollm2", "--artifacts", str(run), "--positions", str(positions))
    return {"label": label, "bpw": bpw, "agree": data, "seconds": time.perf_counter() - t}


def gguf_config(out: Path, qtype: str, imatrix: bool) -> Path:
    name = f"gguf_{qtype}{'_imatrix' if imatrix else ''}"
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"name: {name}\ncodec: gguf\nparams: {{type: {qtype}}}\nrotation: {{kind: identity}}\n"
            "rows: {calibration: 448, measurement: 128, seed: 42}\nmeasure: [rel_l2]\n")
    if imatrix:
        text += f"calibration: {IMATRIX_CALIBRATION}\n"
    path.write_text(text)
    return path


def plan(out: Path) -> list[tuple[str, object]]:
    """(label, (kind, what)) in the order they are run: the issue's comparisons
    first. ``gguf <TYPE>`` without importance comes last: for Q4_0 and IQ4_NL
    its bytes are llama.cpp's (the codec's tests check it)."""
    rows: list[tuple[str, object]] = []
    for q in ["Q8_0", "Q4_K_M", "IQ4_NL", "Q4_0"]:
        rows.append((f"llama.cpp {q}", ("llama", q)))
    for q in GGUF_TYPES:
        rows.append((f"gguf {q} imatrix", ("helix", gguf_config(out, q, True))))
    rows.append(("gguf Q4_K", ("helix", gguf_config(out, "Q4_K", False))))  # llama.cpp's Q4_K, pure
    for name in DATA_AWARE:
        path = ROOT / "configs" / "codec" / f"{name}.yaml"
        if path.is_file():
            rows.append((name, ("helix", path)))
    for q in ["Q6_K", "Q5_K_M"]:
        rows.append((f"llama.cpp {q}", ("llama", q)))
    for q in ["IQ4_NL", "Q4_0"]:
        rows.append((f"gguf {q}", ("helix", gguf_config(out, q, False))))
    return rows


def table(results: list[dict]) -> str:
    lines = ["| candidate | bpw | top-1 [95% CI] | mean KL [95% CI] | positions |",
             "|---|---:|---|---|---:|"]
    for r in sorted(results, key=lambda r: (r["bpw"] is None, r["bpw"] or 0)):
        a = r["agree"]
        lo, hi = a["intervals"]["top1"]
        kl, se = a["kl"]["mean"], a["kl"]["stderr"]
        bpw = "?" if r["bpw"] is None else f"{r['bpw']:.2f}"
        lines.append(f"| {r['label']} | {bpw} | {a['top1']:.4f} [{lo:.4f}, {hi:.4f}] | "
                     f"{kl:.4f} [{kl - 1.96 * se:.4f}, {kl + 1.96 * se:.4f}] | {a['positions']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="working directory (models, runs, results.jsonl)")
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--only", help="run only rows whose label contains this text")
    args = parser.parse_args()
    from tqdm import tqdm

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = {}
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[r["label"]] = r
    todo = [(label, how) for label, how in plan(args.out) if label not in done
            and (args.only is None or args.only in label)]
    src = None
    for label, (kind, what) in tqdm(todo, desc="llamacpp bench", unit="row"):
        t = time.perf_counter()
        if kind == "llama":
            src = src or f32_model(args.out)
            path = llama_quantize(src, what, args.out)
            data = helix("agree", "smollm2", "--candidate", str(path), "--positions", str(args.positions))
            row = {"label": label, "bpw": linear_bpw(path), "agree": data, "seconds": time.perf_counter() - t}
        else:
            row = helix_row(label, what, args.out, args.positions)
        done[label] = row
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        tqdm.write(f"{label}: bpw {row['bpw']} top1 {row['agree']['top1']:.4f} "
                   f"KL {row['agree']['kl']['mean']:.4f} ({row['seconds']:.0f} s)")
    print(table(list(done.values())))


if __name__ == "__main__":
    main()
