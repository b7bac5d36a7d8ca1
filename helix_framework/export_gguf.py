"""``helix export DIR --format gguf``: a calibration output as a GGUF file
llama.cpp loads.

- Metadata: every key-value pair of a GGUF source is copied (architecture,
  hyper-parameters, tokenizer, chat template); for a Hugging Face
  Llama-family directory it is built from config.json and the tokenizer
  files, tensors get llama.cpp's names and q/k rows its order
  (`helix_framework.export_gguf_hf`). Either way ``helix.export`` is added:
  JSON saying, per tensor, how it was written.
- Tensors of the ``gguf`` codec (identity rotation, no reshape) are written as
  their GGUF block bytes, exactly as stored in the artifact.
- Tensors of any other codec are decoded (rotation inverted) and written as
  F16, or F32 with ``dtype="f32"``.
- Passthrough and skipped tensors keep their source type and bytes (1-D
  tensors of a Hugging Face source become F32, as llama.cpp's converter
  writes them).

The file is written to a temporary beside the target and renamed into place,
so an interrupted export leaves the old file or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from helix_framework import artifacts
from helix_framework.errors import ExportError

__all__ = ["export_gguf", "known_architectures", "source_layout", "write_f32_copy"]

DTYPES = ("f16", "f32")
_F16_MAX = 65504.0


def known_architectures() -> set[str]:
    """Architecture names llama.cpp loads (gguf-py mirrors llama.cpp's list)."""
    import gguf

    return set(gguf.MODEL_ARCH_NAMES.values())


class GGUFLayout:
    """A GGUF source: names, row order and metadata stay as they are."""

    def __init__(self, reader: Any, arch: str):
        self.reader, self.arch = reader, arch

    def name(self, source_name: str) -> str:
        return source_name

    def row_order(self, source_name: str, rows: int) -> None:
        return None

    def write_metadata(self, writer: Any) -> None:
        """Every KV of the source except the header counters and the
        architecture (GGUFWriter writes those itself)."""
        for key, field in self.reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            sub = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)


def source_layout(manifest: dict[str, Any]) -> Any:
    """How the calibration's source maps onto a GGUF: `GGUFLayout` or
    `export_gguf_hf.HFLayout`; a source llama.cpp cannot take is refused
    naming the field."""
    import gguf

    source = manifest["source"]
    path = Path(source["path"])
    if source["kind"] == "hf_directory":
        from helix_framework.export_gguf_hf import hf_layout

        return hf_layout(path)
    if source["kind"] != "gguf":
        raise ExportError(f"export to GGUF needs a GGUF file or a Hugging Face directory; this calibration's "
                          f"source is {source['kind']} ({path})", field="source.kind")
    try:
        reader = gguf.GGUFReader(path, "r")
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the source GGUF {path}: {exc}", field="source.path") from None
    arch = reader.fields.get("general.architecture")
    name = arch.contents() if arch is not None else None
    if name not in known_architectures():
        raise ExportError(f"architecture {name!r} is not one llama.cpp knows", field="general.architecture")
    return GGUFLayout(reader, name)


def _plan(entry: dict[str, Any], manifest: dict[str, Any]) -> str:
    """How a tensor is written: ``native`` blocks, ``decoded``, or ``source``."""
    if entry["route"] != "codec":
        return "source"
    plugins = artifacts.compressed_by(entry, manifest)
    native = (plugins["codec"]["name"] == "gguf" and plugins["rotation"]["name"] == "identity"
              and not entry.get("reshape") and len(entry["shape"]) == 2)
    return "native" if native else "decoded"


def _tensor(entry: dict[str, Any], plan: str, dtype: str, directory: Path, manifest: dict[str, Any],
            host: Any, layout: Any) -> tuple[np.ndarray, Any, str]:
    """(array for GGUFWriter, raw_dtype or None, GGML type name written), rows
    in the layout's order."""
    import gguf

    from helix_framework.calibrate import reconstruct, split_arrays

    name = entry["name"]
    order = layout.row_order(name, entry["shape"][0]) if len(entry["shape"]) == 2 else None

    def rows(a: np.ndarray) -> np.ndarray:
        return a if order is None else np.ascontiguousarray(a.reshape(entry["shape"][0], -1)[order])

    if plan == "decoded":
        x = rows(reconstruct(entry, directory, host, manifest))
        if dtype == "f16":
            big = float(np.max(np.abs(x))) if x.size else 0.0
            if not np.isfinite(big) or big > _F16_MAX:
                raise ExportError(f"its decoded values reach {big:.4g}, beyond float16; use --dtype f32", tensor=name)
            return x.astype(np.float16), None, "F16"
        return x.astype(np.float32), None, "F32"
    arrays = artifacts.read_safetensors(directory / entry["files"][0]["file"])
    if plan == "native":
        codes, _, _ = split_arrays(arrays)
        eff = entry["codec_meta"]["state"]["effective_type"]
        blocks = rows(np.ascontiguousarray(codes["blocks"], dtype=np.uint8))
        if eff == "F16":
            return blocks.view(np.float16).reshape(entry["shape"]), None, "F16"
        return blocks, gguf.GGMLQuantizationType[eff], eff
    if "weight" in arrays:
        w = np.asarray(arrays["weight"]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            from helix_framework.sources.base import bf16_to_float32

            bits = w.view(np.uint16)
            if w.ndim == 1:  # llama.cpp's converter writes 1-D tensors as F32
                return bf16_to_float32(bits).reshape(w.shape), None, "F32"
            return rows(bits), gguf.GGMLQuantizationType.BF16, "BF16"
        if w.ndim == 1 and not isinstance(layout, GGUFLayout) and w.dtype != np.float32:
            return w.astype(np.float32), None, "F32"
        return rows(w).reshape(w.shape), None, entry["dtype"]
    try:
        qtype = gguf.GGMLQuantizationType[entry["dtype"]]
    except KeyError:
        raise ExportError(f"source type {entry['dtype']} has no GGUF form", tensor=name) from None
    raw = np.asarray(arrays["raw"]).reshape(-1).view(np.uint8)
    n_rows = int(np.prod(entry["shape"][:-1]))
    return rows(raw.reshape(n_rows, -1)), qtype, entry["dtype"]


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
    layout = source_layout(manifest)
    writer = gguf.GGUFWriter(None, layout.arch)
    layout.write_metadata(writer)

    tensors, written = [], {}
    entries = manifest["tensors"]
    if progress:
        from tqdm import tqdm

        entries = tqdm(entries, desc="export", unit="tensor", leave=False)
    for entry in entries:
        gguf_name = layout.name(entry["name"])
        if gguf_name is None:
            written[entry["name"]] = "dropped"
            continue
        plan = _plan(entry, manifest)
        array, raw_dtype, written_type = _tensor(entry, plan, dtype, directory, manifest, host, layout)
        tensors.append((gguf_name, array, raw_dtype))
        written[entry["name"]] = f"{plan} {written_type}"
    info = {"candidate": manifest["config"]["name"], "codec": manifest["codec"]["name"],
            "rotation": manifest["rotation"]["name"], "dtype": dtype, "tensors": written}

    artifacts.make_output_dir(out_file.parent)
    artifacts.clean_temporaries(out_file.parent)
    writer.add_string("helix.export", json.dumps(info, sort_keys=True))
    for name, array, raw_dtype in tensors:
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    _write(writer, out_file)
    return {"out": str(out_file), "tensors": len(tensors), "metadata": len(writer.kv_data[0]), "written": written}


def _write(writer: Any, out_file: Path) -> None:
    """Write a GGUFWriter's header, metadata and tensors to ``out_file`` atomically."""
    import gguf

    def write(f: Any) -> None:
        # GGUFWriter opens its own files; hand it the temporary atomic_write made.
        writer.fout, writer.state = [f], gguf.gguf_writer.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()

    artifacts.atomic_write(out_file.parent, ".gguf", write, lambda: out_file, where=out_file)


def write_f32_copy(path: str | Path, out_file: str | Path) -> Path:
    """``path`` with every tensor dequantized to float32, metadata unchanged:
    llama.cpp multiplies such a file in float32, without the 8-bit rounding
    of activations it applies next to quantized weights."""
    import gguf

    reader = gguf.GGUFReader(path, "r")
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(None, arch)
    GGUFLayout(reader, arch).write_metadata(writer)
    for t in reader.tensors:
        x = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        writer.add_tensor(t.name, x)
    out_file = Path(out_file)
    _write(writer, out_file)
    return out_file
