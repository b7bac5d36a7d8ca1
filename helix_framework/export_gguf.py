"""``helix export DIR --format gguf``: a calibration output as a GGUF file
llama.cpp loads.

- Metadata: every key-value pair of the GGUF source is copied (architecture,
  hyper-parameters, tokenizer, chat template), plus ``helix.export``: JSON
  saying, per tensor, how it was written.
- Tensors of the ``gguf`` codec (identity rotation, no reshape) are written as
  their GGUF block bytes, exactly as stored in the artifact.
- Tensors of any other codec are decoded (rotation inverted) and written as
  F16, or F32 with ``dtype="f32"``.
- Passthrough and skipped tensors keep their source type and bytes.

The file is written to a temporary beside the target and renamed into place,
so an interrupted export leaves the old file or the new one. Only a GGUF
source is supported; a Hugging Face source is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework import artifacts
from helix_framework.errors import ExportError

__all__ = ["export_gguf", "known_architectures"]

DTYPES = ("f16", "f32")
_F16_MAX = 65504.0


def known_architectures() -> set[str]:
    """Architecture names llama.cpp loads (gguf-py mirrors llama.cpp's list)."""
    import gguf

    return set(gguf.MODEL_ARCH_NAMES.values())


def _source_reader(manifest: dict[str, Any]):
    import gguf

    source = manifest["source"]
    if source["kind"] != "gguf":
        raise ExportError(f"export to GGUF needs a GGUF source; this calibration's source is {source['kind']} "
                          f"({source['path']}); Hugging Face sources are not supported yet", field="source.kind")
    path = Path(source["path"])
    try:
        reader = gguf.GGUFReader(path, "r")
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the source GGUF {path}: {exc}", field="source.path") from None
    arch = reader.fields.get("general.architecture")
    name = arch.contents() if arch is not None else None
    if name not in known_architectures():
        raise ExportError(f"architecture {name!r} is not one llama.cpp knows", field="general.architecture")
    return reader, name


def _copy_metadata(reader, writer) -> int:
    """Every KV of the source except the header counters and the architecture
    (GGUFWriter writes those itself). Returns how many were copied."""
    n = 0
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        n += 1
    return n


def _plan(entry: dict[str, Any], manifest: dict[str, Any]) -> str:
    """How a tensor is written: ``native`` blocks, ``decoded``, or ``source``."""
    if entry["route"] != "codec":
        return "source"
    plugins = artifacts.compressed_by(entry, manifest)
    native = (plugins["codec"]["name"] == "gguf" and plugins["rotation"]["name"] == "identity"
              and not entry.get("reshape") and len(entry["shape"]) == 2)
    return "native" if native else "decoded"


def _tensor(entry: dict[str, Any], plan: str, dtype: str, directory: Path, manifest: dict[str, Any],
            host: Any) -> tuple[np.ndarray, Any, str]:
    """(array for GGUFWriter, raw_dtype or None, GGML type name written)."""
    import gguf

    from helix_framework.calibrate import reconstruct, split_arrays

    name = entry["name"]
    if plan == "decoded":
        rows = reconstruct(entry, directory, host, manifest)
        if dtype == "f16":
            big = float(np.max(np.abs(rows))) if rows.size else 0.0
            if not np.isfinite(big) or big > _F16_MAX:
                raise ExportError(f"its decoded values reach {big:.4g}, beyond float16; use --dtype f32", tensor=name)
            return rows.astype(np.float16), None, "F16"
        return rows.astype(np.float32), None, "F32"
    arrays = artifacts.read_safetensors(directory / entry["files"][0]["file"])
    if plan == "native":
        codes, _, _ = split_arrays(arrays)
        eff = entry["codec_meta"]["state"]["effective_type"]
        blocks = np.ascontiguousarray(codes["blocks"], dtype=np.uint8)
        if eff == "F16":
            return blocks.view(np.float16).reshape(entry["shape"]), None, "F16"
        return blocks, gguf.GGMLQuantizationType[eff], eff
    if "weight" in arrays:
        w = np.asarray(arrays["weight"]).reshape(entry["shape"])
        return w, None, entry["dtype"]
    try:
        qtype = gguf.GGMLQuantizationType[entry["dtype"]]
    except KeyError:
        raise ExportError(f"source type {entry['dtype']} has no GGUF form", tensor=name) from None
    raw = np.asarray(arrays["raw"]).reshape(-1).view(np.uint8)
    n_rows = int(np.prod(entry["shape"][:-1]))
    return raw.reshape(n_rows, -1), qtype, entry["dtype"]


def export_gguf(directory: str | Path, out_file: str | Path, *, dtype: str = "f16", host: Any = None,
                progress: bool = False) -> dict[str, Any]:
    """Write the calibration in ``directory`` as the GGUF ``out_file``.

    Returns ``{"out", "tensors", "metadata", "written": {name: how}}`` where
    ``how`` is ``native Q4_K``, ``decoded F16`` or ``source Q8_0``.
    Everything is checked and every tensor prepared before the file is
    created; nothing is left behind on failure.
    """
    import gguf

    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}", field="dtype")
    if host is None:
        from helix_framework.host import get_host

        host = get_host()
    directory, out_file = Path(directory), Path(out_file)
    manifest = artifacts.read_manifest(directory)
    artifacts.refuse_run_files(directory, out_file, manifest, "export")
    problems = artifacts.verify(directory)
    if problems:
        raise artifacts.ArtifactError(f"{directory}: artifacts do not match the manifest: {problems[0]}")
    reader, arch = _source_reader(manifest)

    tensors, written = [], {}
    entries = manifest["tensors"]
    if progress:
        from tqdm import tqdm

        entries = tqdm(entries, desc="export", unit="tensor", leave=False)
    for entry in entries:
        plan = _plan(entry, manifest)
        array, raw_dtype, written_type = _tensor(entry, plan, dtype, directory, manifest, host)
        tensors.append((entry["name"], array, raw_dtype))
        written[entry["name"]] = f"{plan} {written_type}"
    info = {"candidate": manifest["config"]["name"], "codec": manifest["codec"]["name"],
            "rotation": manifest["rotation"]["name"], "dtype": dtype, "tensors": written}

    artifacts.make_output_dir(out_file.parent)
    artifacts.clean_temporaries(out_file.parent)
    n_kv = 0

    def write(f: Any) -> None:
        nonlocal n_kv
        writer = gguf.GGUFWriter(None, arch)
        n_kv = _copy_metadata(reader, writer)
        writer.add_string("helix.export", json.dumps(info, sort_keys=True))
        for name, array, raw_dtype in tensors:
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        # GGUFWriter opens its own files; hand it the temporary atomic_write made.
        writer.fout, writer.state = [f], gguf.gguf_writer.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()

    artifacts.atomic_write(out_file.parent, ".gguf", write, lambda: out_file, where=out_file)
    return {"out": str(out_file), "tensors": len(tensors), "metadata": n_kv + 1, "written": written}
