"""A 1.1 B-parameter model, calibrated data-aware and token-agreed, one block at a time.

    .venv/bin/python benchmarks/scale.py [--layers 22] [--hidden 2048] [--sequences N]

Writes a synthetic Llama-shaped model (random float16 weights, TinyLlama's
shape by default: 22 blocks, hidden 2048, MLP 5632, 32 query and 4 KV
heads, SmolLM2's 49,152-token vocabulary with tied embeddings, 1.07 B
parameters, 4.3 GB as float32) as sharded safetensors with config.json and
SmolLM2's tokenizer.json into a temporary directory, then, each in a child
process:

1. `calibrate` with a data-aware candidate (default
   configs/codec/40_dataaware_4bit.yaml; ``--sequences`` writes a copy with
   fewer calibration windows);
2. `agree` of those artifacts on ``--positions`` positions (256): the
   reference and the candidate both run block by block.

Prints each phase's wall seconds, seconds per block (median) and peak
resident memory (the child's ru_maxrss). The temporary directory (model,
artifacts, reference cache) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: blocks per safetensors shard (about 0.35 GB of float16 each at the default shape)
BLOCKS_PER_SHARD = 4


def write_model(directory: Path, *, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                seed: int = 0) -> int:
    """Write the synthetic model; returns its parameter count."""
    from safetensors.numpy import save_file

    from helix_framework.models import resolve_model
    from helix_framework.reference import load_tokenizer

    directory.mkdir(parents=True)
    tokenizer = load_tokenizer(resolve_model("smollm2"))
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.vocab_size
    head_dim = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "torch_dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)

    def block(i: int) -> dict[str, np.ndarray]:
        p = f"model.layers.{i}."
        ones = np.ones(hidden, np.float16)
        return {
            p + "input_layernorm.weight": ones, p + "post_attention_layernorm.weight": ones,
            p + "self_attn.q_proj.weight": normal(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": normal(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": normal(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": normal(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": normal(intermediate, hidden),
            p + "mlp.up_proj.weight": normal(intermediate, hidden),
            p + "mlp.down_proj.weight": normal(hidden, intermediate),
        }

    groups = [range(i, min(i + BLOCKS_PER_SHARD, layers)) for i in range(0, layers, BLOCKS_PER_SHARD)]
    weight_map: dict[str, str] = {}
    n_params = 0
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors: dict[str, np.ndarray] = {}
        if k == 0:
            tensors["model.embed_tokens.weight"] = normal(vocab, hidden)
            tensors["model.norm.weight"] = np.ones(hidden, np.float16)
        for i in group:
            tensors.update(block(i))
        save_file(tensors, str(directory / shard))
        weight_map.update(dict.fromkeys(tensors, shard))
        n_params += sum(t.size for t in tensors.values())
        del tensors
    index = {"metadata": {"total_size": 2 * n_params}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return n_params


def run_child(phase: str, **kwargs: str) -> dict:
    """One phase in a fresh process (its own peak RSS); returns its JSON line."""
    cmd = [sys.executable, __file__, "--phase", phase]
    for key, value in kwargs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{phase} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _block_seconds(marks: list[tuple[str, int, float]], end: float) -> dict[str, float]:
    """Median seconds per block of each phase, from the times its blocks began."""
    out = {}
    for phase in dict.fromkeys(m[0] for m in marks):
        times = [t for p, _, t in marks if p == phase]
        later = [t for p, _, t in marks if t > times[-1] and p != phase]
        times.append(later[0] if later else end)
        out[phase] = statistics.median(np.diff(times))
    return out


def phase_calibrate(model: str, config: str, out: str) -> dict:
    from helix_framework.calibrate import calibrate
    from helix_framework.config import load_candidate
    from helix_framework.host import get_host

    host = get_host()
    candidate = load_candidate(config, host)
    marks: list[tuple[str, int, float]] = []
    seen: set[int] = set()

    def on_tensor(i: int, n: int, name: str) -> None:
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            if layer not in seen:  # a block's first tensor: its statistics are collected
                seen.add(layer)
                marks.append(("calibrate", layer, time.perf_counter()))

    t0 = time.perf_counter()
    summary = calibrate(model, candidate, out, host=host, progress=True, on_tensor=on_tensor)
    end = time.perf_counter()
    return {"seconds": end - t0, "per_block": _block_seconds(marks, end)["calibrate"], "peak_mb": _peak_mb(),
            "bits": summary.bits["codec_total_bpw"], "output_rel_l2": summary.held_out.get("mean_output_rel_l2")}


def phase_agree(model: str, out: str, positions: int) -> dict:
    from helix_framework.agree import agree
    from helix_framework.calibrate import weights_from_artifacts
    from helix_framework.host import get_host
    from helix_framework.sources import open_source

    marks: list[tuple[str, int, float]] = []
    t0 = time.perf_counter()
    with open_source(model) as source:
        report = agree(model, weights=weights_from_artifacts(out, source, get_host()), candidate_name=out,
                       positions=positions, source=source,
                       on_step=lambda phase, i, n: marks.append((phase, i, time.perf_counter())))
    end = time.perf_counter()
    r = report.result
    return {"seconds": end - t0, "per_block": _block_seconds(marks, end), "peak_mb": _peak_mb(),
            "positions": r["positions"], "top1": r["top1"], "kl_mean": r["kl"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "codec" / "40_dataaware_4bit.yaml")
    parser.add_argument("--sequences", type=int, help="calibration windows (default: the config's)")
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--phase", choices=["calibrate", "agree"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "calibrate":
        print(json.dumps(phase_calibrate(args.model, str(args.config), args.out)))
        return
    if args.phase == "agree":
        print(json.dumps(phase_agree(args.model, args.out, args.positions)))
        return

    import yaml

    with tempfile.TemporaryDirectory(prefix="helix-scale-") as tmp:
        tmp_path = Path(tmp)
        os.environ["HELIX_CACHE_DIR"] = str(tmp_path / "cache")  # the reference cache goes away with the rest
        config = args.config
        if args.sequences is not None:
            data = yaml.safe_load(args.config.read_text())
            data["calibration"]["sequences"] = args.sequences
            data["name"] = f"{data['name']}_{args.sequences}windows"
            config = tmp_path / "candidate.yaml"
            config.write_text(yaml.safe_dump(data))
        t0 = time.perf_counter()
        n = write_model(tmp_path / "model", layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                        heads=args.heads, kv_heads=args.kv_heads)
        print(f"model: {n / 1e9:.3f} B parameters ({4 * n / 1e9:.1f} GB as float32), {args.layers} blocks, "
              f"written in {time.perf_counter() - t0:.0f} s")
        model, out = str(tmp_path / "model"), str(tmp_path / "out")
        cal = run_child("calibrate", model=model, config=config, out=out)
        print(f"calibrate ({Path(config).name}): {cal['seconds']:.0f} s, {cal['per_block']:.1f} s per block, "
              f"peak RSS {cal['peak_mb']:.0f} MB; {cal['bits']:.2f} bits/weight, "
              f"output_rel_l2 {cal['output_rel_l2']:.4f}")
        agr = run_child("agree", model=model, out=out, positions=args.positions)
        blocks = ", ".join(f"{p} {s:.2f} s" for p, s in agr["per_block"].items())
        print(f"agree ({agr['positions']} positions): {agr['seconds']:.0f} s, per block {blocks}, "
              f"peak RSS {agr['peak_mb']:.0f} MB; top-1 {agr['top1']:.3f}, KL mean {agr['kl_mean']:.4f}")


if __name__ == "__main__":
    main()
