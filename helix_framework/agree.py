"""Token agreement of a compressed model against its uncompressed reference.

The candidate is the reference architecture with every codec-routed matrix
replaced by its reconstruction, built either from calibration artifacts
(`weights_from_artifacts`) or by calibrating in memory from a candidate
config (`weights_from_config`). Both models read the same token stream
(teacher forcing, independent windows of ``window`` tokens); the figures are
those of `helix_framework.measure.agreement`.

The reference's logits and hidden states for a (model, prompt set,
positions, window) are computed once and cached on disk under
``$HELIX_CACHE_DIR/reference`` (default: the user cache directory), keyed by
the SHA-256 of the source files and the prompt texts.

Encoders (BERT/MiniLM) have no next-token distribution; for them the gate is
the cosine between original and compressed sentence embeddings (mean >= 0.99,
minimum reported).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from helix_framework import artifacts
from helix_framework.calibrate import (
    data_aware_pass, fit_reconstruct, reconstruct, resolve, route_and_read, split_rows, tensor_rng,
)
from helix_framework.config import CandidateConfig, canonical_json
from helix_framework.errors import AgreementError
from helix_framework.measure.agreement import MIN_POSITIONS, AgreementAccumulator
from helix_framework.prompts import Prompt, load_prompts
from helix_framework.routing import require_selection, tensor_selector
from helix_framework.sources import ModelSource

log = logging.getLogger(__name__)

EMBEDDING_GATE = 0.99
MIN_SENTENCES = 100
CACHE_VERSION = 1



def cache_root() -> Path:
    env = os.environ.get("HELIX_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("helix-framework"))


# -- candidate weights ---------------------------------------------------------


def weights_from_artifacts(directory: str | Path, source: ModelSource, host: Any) -> dict[str, np.ndarray]:
    """Reconstructed matrices of a calibration output, in the source's shapes."""
    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    if manifest["source"]["files"] != source.file_hashes():
        raise AgreementError(
            f"{directory}: the artifacts were calibrated from a different model "
            f"({manifest['source']['path']}); pass that model"
        )
    problems = artifacts.verify(directory)
    if problems:
        raise AgreementError(f"{directory}: artifacts do not match the manifest: {problems[0]}")
    return {
        e["name"]: reconstruct(e, directory, host, manifest)
        for e in manifest["tensors"]
        if e["route"] == "codec"
    }


def weights_from_config(source: ModelSource, candidate: CandidateConfig, host: Any,
                        tensors: str | None = None,
                        on_tensor: Callable[[int, int, str], None] | None = None) -> dict[str, np.ndarray]:
    """Fit every routed matrix in memory (on its calibration rows, and for a
    data-aware candidate block by block with its layer statistics, exactly as
    `helix calibrate` does) and keep the reconstructions. ``on_tensor(i, n,
    name)`` is called before each tensor; an exception it raises stops the fit."""
    comp = resolve(candidate, host)
    selector = tensor_selector(tensors)
    require_selection(selector, source.tensors(), candidate.routes)
    seed = candidate.rows.seed
    out = {}

    def fit_one(info: Any, stats: Any = None) -> np.ndarray | None:
        routed = route_and_read(source, info, candidate, selector)
        if routed.route != "codec":
            return None
        split = split_rows(routed.rows.shape[0], candidate.rows, candidate.in_sample, info.name)
        fitted = fit_reconstruct(routed.rows, split.calibration, comp, candidate.params, info.name,
                                 tensor_rng(seed, info.name), stats=stats.fit if stats is not None else None)
        out[info.name] = fitted.reconstruction.reshape(info.shape)
        return out[info.name]

    infos = source.tensors()
    if candidate.calibration is not None:
        data_aware_pass(source, infos, comp, fit_one, on_tensor=on_tensor)
    else:
        for i, info in enumerate(infos):
            if on_tensor is not None:
                on_tensor(i, len(infos), info.name)
            fit_one(info)
    return out


def is_encoder(source: ModelSource) -> bool:
    """Whether ``source`` is scored on sentence embeddings (BERT family) rather
    than on teacher-forced tokens; decided from its config, without loading it."""
    from helix_framework.reference.loader import _model_type

    return source.kind == "hf_directory" and _model_type(source) == "bert"


def adc_linears(directory: str | Path, host: Any) -> dict[str, Any]:
    """Per compressed matrix, ``fn(x [T, in]) -> y [T, out]`` computed by the
    codec's ``matmul`` straight from the codes (a codec declares it with
    ``compressed_matmul = True``), with the candidate's own params.

    A row rotation Q (rows stored as w Q) is applied to x instead:
    (w Q) . (x Q) = w . x for orthonormal Q.
    """
    from helix_framework.calibrate import split_arrays
    from helix_framework.codec import CodecState, Codes
    from helix_framework.config import structure
    from helix_framework.rotation import RotationState

    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    name = manifest["codec"]["name"]
    codec = host.codec(name)
    if not codec.compressed_matmul:
        raise AgreementError(f"--engine adc needs a codec that multiplies from its codes (compressed_matmul); {name!r} does not")
    rotation = host.rotation(manifest["rotation"]["name"])
    params = structure(manifest["config"]["params"], codec.Params, path="$.config.params")
    out = {}
    for e in manifest["tensors"]:
        if e["route"] != "codec" or e.get("reshape"):
            continue
        code_arrays, state_arrays, rot_arrays = split_arrays(artifacts.read_safetensors(directory / e["files"][0]["file"]))
        meta = e["codec_meta"]
        state, codes = CodecState(state_arrays, meta["state"]), Codes(code_arrays, meta["codes"])
        rot_state = RotationState(rot_arrays, e["rotation_meta"])

        def fn(x: np.ndarray, _state: Any = state, _codes: Any = codes, _rot: Any = rot_state) -> np.ndarray:
            xr = np.ascontiguousarray(rotation.apply(_rot, np.asarray(x, np.float32)).T)
            return np.ascontiguousarray(codec.matmul(_state, _codes, xr, params).T)

        out[e["name"]] = fn
    return out


# -- the token stream ----------------------------------------------------------


@attrs.frozen
class Window:
    prompt: str
    ids: np.ndarray = attrs.field(repr=False, eq=False)
    next_ids: np.ndarray = attrs.field(repr=False, eq=False)  # -1 where the prompt ends


def token_windows(tokenizer: Any, prompts: list[Prompt], positions: int, window: int) -> list[Window]:
    """The first ``window`` tokens of each prompt in turn, until ``positions``
    are covered (one window per prompt keeps every kind of text in the set)."""
    out, total = [], 0
    for prompt in prompts:
        ids = np.asarray(tokenizer.encode(prompt.text), dtype=np.int64)
        take = min(window, ids.size, positions - total)
        if take > 1:
            nxt = np.append(ids[1:], -1)
            out.append(Window(prompt.name, ids[:take], nxt[:take]))
            total += take
        if total >= positions:
            break
    return out


# -- the reference cache -------------------------------------------------------


def _cache_key(source: ModelSource, prompts: list[Prompt], positions: int, window: int) -> str:
    payload = {"v": CACHE_VERSION, "files": source.file_hashes(), "prompts": [p.sha256 for p in prompts],
               "positions": positions, "window": window}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class NpySlices:
    """Slices of a cached .npy array along one axis, read with plain file reads.

    A memory map would do, but every page it touches stays in the process's
    resident set: reading the 400 MB of SmolLM2's reference logits through one
    made ``helix agree`` peak 0.5 GB higher than the slices it needs at a time.
    """

    def __init__(self, path: Path):
        mm = np.load(path, mmap_mode="r")
        if not mm.flags.c_contiguous:
            raise ValueError(f"{path}: not a C-ordered array")
        self.path, self.shape, self.dtype, self._offset = path, mm.shape, mm.dtype, mm.offset
        del mm

    def rows(self, start: int, stop: int, axis: int = 0) -> np.ndarray:
        """``array[start:stop]`` (axis 0) or ``array[:, start:stop]`` (axis 1)."""
        inner = int(np.prod(self.shape[axis + 1:], dtype=np.int64))
        outer = int(np.prod(self.shape[:axis], dtype=np.int64))
        n = stop - start
        out = np.empty((outer, n * inner), self.dtype)
        with open(self.path, "rb") as f:
            for o in range(outer):
                f.seek(self._offset + (o * self.shape[axis] + start) * inner * self.dtype.itemsize)
                f.readinto(memoryview(out[o]).cast("B"))
        return out.reshape(*self.shape[:axis], n, *self.shape[axis + 1:])


def reference_outputs(
    build_model: Callable[[], Any], source: ModelSource, windows: list[Window], key: str
) -> tuple[NpySlices, NpySlices]:
    """Reference logits [N, vocab] and hidden states [layers+1, N, hidden], cached
    on disk; ``build_model`` is only called on a cache miss (the reference model
    costs as much memory as the candidate)."""
    directory = cache_root() / "reference" / key
    logits_path, hidden_path = directory / "logits.npy", directory / "hidden.npy"
    if logits_path.is_file() and hidden_path.is_file():
        try:
            return NpySlices(logits_path), NpySlices(hidden_path)
        except (ValueError, OSError) as exc:
            log.warning("reference cache %s unreadable (%s); recomputing", directory, exc)
    logits, hidden = [], []
    model = build_model()
    for w in windows:
        lg, hd = model.forward(w.ids, return_hidden=True)
        logits.append(lg)
        hidden.append(np.stack(hd))
    all_logits = np.concatenate(logits)
    all_hidden = np.concatenate(hidden, axis=1)
    directory.mkdir(parents=True, exist_ok=True)
    for path, array in ((logits_path, all_logits), (hidden_path, all_hidden)):
        artifacts.atomic_write(directory, ".npy", lambda f, a=array: np.save(f, a), lambda p=path: p)
    artifacts.write_json_atomic(directory / "meta.json", {"source": str(source.path), "windows": len(windows)})
    del all_logits, all_hidden
    return NpySlices(logits_path), NpySlices(hidden_path)


# -- agreement -----------------------------------------------------------------


@attrs.frozen
class AgreeReport:
    """The figures plus what they were measured on."""

    result: dict[str, Any]
    model: str
    candidate: str
    engine: str
    prompts: list[dict[str, Any]]
    window: int
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {**self.result, "model": self.model, "candidate": self.candidate, "engine": self.engine,
                "prompts": self.prompts, "window": self.window, "seconds": self.seconds}


def agree(
    model_path: str | Path,
    *,
    weights: dict[str, np.ndarray],
    candidate_name: str,
    prompts_dir: str | Path | None = None,
    positions: int = MIN_POSITIONS,
    window: int = 512,
    source: ModelSource | None = None,
    linears: dict[str, Any] | None = None,
) -> AgreeReport:
    """Compare the reference model with the same model carrying ``weights``;
    ``linears`` (from `adc_linears`) replace those layers' matrix products.
    An encoder is scored on every sentence of the prompt set: ``positions``
    and ``window`` apply to decoders only (`helix agree` refuses them for an
    encoder, see `is_encoder`)."""
    from helix_framework.models import resolve_model
    from helix_framework.reference import DecoderModel, load_model, load_tokenizer
    from helix_framework.sources import open_source

    t0 = time.perf_counter()
    source = source or open_source(resolve_model(model_path))
    prompts = load_prompts(prompts_dir)
    candidate = load_model(source, weights=weights)
    for name, fn in (linears or {}).items():
        candidate.set_linear(name, fn)
    engine = "adc" if linears else "dense"
    tokenizer = load_tokenizer(source)
    t1 = time.perf_counter()
    if not isinstance(candidate, DecoderModel):
        result = _embedding_agreement(load_model(source), candidate, tokenizer, prompts)
        return AgreeReport(result, str(model_path), candidate_name, engine, [p.to_json() for p in prompts], 0,
                           {"load": t1 - t0, "run": time.perf_counter() - t1})
    windows = token_windows(tokenizer, prompts, positions, window)
    ref_logits, ref_hidden = reference_outputs(lambda: load_model(source), source, windows, _cache_key(source, prompts, positions, window))
    t2 = time.perf_counter()
    acc = AgreementAccumulator()
    err = np.zeros(ref_hidden.shape[0])
    norm = np.zeros(ref_hidden.shape[0])
    offset = 0
    for w in windows:
        logits, hidden = candidate.forward(w.ids, return_hidden=True)
        span = slice(offset, offset + w.ids.size)
        acc.add(ref_logits.rows(span.start, span.stop), logits, w.next_ids, np.arange(span.start, span.stop))
        ref_h = ref_hidden.rows(span.start, span.stop, axis=1).astype(np.float64)
        err += ((np.stack(hidden).astype(np.float64) - ref_h) ** 2).sum(axis=(1, 2))
        norm += (ref_h**2).sum(axis=(1, 2))
        offset += w.ids.size
    result = acc.result().to_json()
    result["per_layer"] = [float(np.sqrt(e / n)) if n > 0 else 0.0 for e, n in zip(err, norm)]
    used = sorted({w.prompt for w in windows})
    return AgreeReport(
        result, str(model_path), candidate_name, engine,
        [p.to_json() for p in prompts if p.name in used], window,
        {"load": t1 - t0, "reference": t2 - t1, "candidate": time.perf_counter() - t2},
    )


def _sentences(prompts: list[Prompt]) -> Iterator[str]:
    for p in prompts:
        if p.kind in ("prose", "dialogue", "user"):
            for s in re.split(r"(?<=[.!?])\s+", p.text):
                s = " ".join(s.split())
                if 20 <= len(s) <= 400:
                    yield s


def _embedding_agreement(reference: Any, candidate: Any, tokenizer: Any, prompts: list[Prompt]) -> dict[str, Any]:
    cos = []
    for sentence in _sentences(prompts):
        ids = tokenizer.encode(sentence)
        a, b = reference.sentence_embedding(ids), candidate.sentence_embedding(ids)
        cos.append(float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)))
    if not cos:
        raise AgreementError("the prompt set has no sentences to embed")
    c = np.array(cos)
    n = c.size
    if n < MIN_SENTENCES:
        certified, verdict = False, f"insufficient evidence: {n} sentences, the gate needs at least {MIN_SENTENCES}"
    elif c.mean() >= EMBEDDING_GATE:
        certified, verdict = True, f"certified: mean embedding cosine {c.mean():.4f} >= {EMBEDDING_GATE}"
    else:
        certified, verdict = False, f"not certified: mean embedding cosine {c.mean():.4f} (gate {EMBEDDING_GATE})"
    return {"kind": "encoder", "sentences": n, "cosine_mean": float(c.mean()), "cosine_min": float(c.min()),
            "certified": certified, "verdict": verdict}
