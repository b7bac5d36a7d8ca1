"""Token agreement of a compressed model against its uncompressed reference.

The candidate is the reference architecture with every codec-routed matrix
replaced by its reconstruction, built from calibration artifacts or by
calibrating in memory from a candidate config (`calibrate.weights_from_artifacts`,
`calibrate.weights_from_config`; this module fits nothing). Both models read
the same token stream (teacher forcing, independent windows of ``window``
tokens), block by block through `helix_framework.engine`; the figures are
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

import functools
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import attrs
import numpy as np

from helix_framework import artifacts
from helix_framework.config import canonical_json
from helix_framework.engine import StepCallback
from helix_framework.errors import AgreementError
from helix_framework.measure.agreement import CHUNK, MIN_POSITIONS, AgreementAccumulator, ReferenceChunk
from helix_framework.prompts import Prompt, load_prompts
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


def weights_from_gguf(path: str | Path, source: ModelSource, reference: set[str]) -> dict[str, np.ndarray]:
    """The tensors of a GGUF (dequantized to float32 by its type) that differ
    from ``source``'s, for every tensor in ``reference`` (the names the
    reference model reads). The GGUF must have ``source``'s architecture and,
    for each of those tensors, its name and shape; the first mismatch raises
    `AgreementError` naming the field or tensor."""
    from tqdm import tqdm

    from helix_framework.sources import open_source

    with open_source(path) as gguf:
        if gguf.kind != "gguf":
            raise AgreementError(f"{path}: --candidate takes a .gguf file; this is a {gguf.kind} source")
        if gguf.architecture != source.architecture:
            raise AgreementError(f"{path}: general.architecture is {gguf.architecture!r}; "
                                 f"{source.path} is {source.architecture!r}")
        used = [info for info in source.tensors() if info.name in reference]
        for info in used:
            if info.name not in gguf:
                raise AgreementError(f"{path}: tensor {info.name} is missing (the reference model has it, "
                                     f"shape {list(info.shape)})")
            shape = gguf.tensor(info.name).shape
            if shape != info.shape:
                raise AgreementError(f"{path}: tensor {info.name} has shape {list(shape)}; "
                                     f"the reference model's is {list(info.shape)}")
        out = {}
        for info in tqdm(used, desc="reading candidate", unit="tensor", leave=False):
            w = gguf.read(info.name)
            if not np.array_equal(w, source.read(info.name)):
                out[info.name] = w
        return out


def tensors_read_by_model(source: ModelSource) -> set[str]:
    """Names of the tensors the reference model of ``source`` reads, found by
    building it from zero-stride placeholders (no tensor is read)."""
    from helix_framework.reference import load_model

    used: set[str] = set()

    def placeholder(name: str) -> np.ndarray:
        used.add(name)
        return np.broadcast_to(np.float32(0), source.tensor(name).shape)

    load_model(source, weight_provider=placeholder)
    return used


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
    from helix_framework.artifacts import split_arrays
    from helix_framework.codec import CodecState, Codes
    from helix_framework.config import structure
    from helix_framework.rotation import RotationState

    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    out = {}
    for e in manifest["tensors"]:
        if e["route"] != "codec" or e.get("reshape"):
            continue
        plugins = artifacts.compressed_by(e, manifest)
        name = plugins["codec"]["name"]
        codec = host.codec(name)
        if not codec.compressed_matmul:
            raise AgreementError(f"--engine adc needs a codec that multiplies from its codes (compressed_matmul); "
                                 f"{name!r} (tensor {e['name']}) does not")
        rotation = host.rotation(plugins["rotation"]["name"])
        params = structure(plugins["config"]["params"], codec.Params, path="$.config.params")
        code_arrays, state_arrays, rot_arrays = split_arrays(artifacts.read_safetensors(directory / e["files"][0]["file"]))
        meta = e["codec_meta"]
        state, codes = CodecState(state_arrays, meta["state"]), Codes(code_arrays, meta["codes"])
        rot_state = RotationState(rot_arrays, e["rotation_meta"])

        def fn(x: np.ndarray, _state: Any = state, _codes: Any = codes, _rot: Any = rot_state,
               _codec: Any = codec, _rotation: Any = rotation, _params: Any = params) -> np.ndarray:
            xr = np.ascontiguousarray(_rotation.apply(_rot, np.asarray(x, np.float32)).T)
            return np.ascontiguousarray(_codec.matmul(_state, _codes, xr, _params).T)

        out[e["name"]] = fn
    return out


# -- the token stream ----------------------------------------------------------


@attrs.frozen
class Window:
    """Tokens read by both models in one forward pass; positions
    ``first:last`` (``last`` None: to the end) are scored."""

    prompt: str
    ids: np.ndarray = attrs.field(repr=False, eq=False)
    next_ids: np.ndarray = attrs.field(repr=False, eq=False)  # -1 where the prompt ends
    first: int = 0
    last: int | None = None

    @property
    def scored(self) -> slice:
        return slice(self.first, self.ids.size if self.last is None else self.last)


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


#: largest --text file read (it is tokenized whole)
TEXT_MAX_BYTES = 64 * 1024 * 1024
#: what `text_windows` scores, in the output of `helix agree --text`
TEXT_SCORING = ("second half of each window (positions T/2 .. T-2 of T, predicting tokens T/2+1 .. T-1), "
                "as llama.cpp's perplexity -f")


def read_text(path: str | Path) -> Prompt:
    """A user's text file (regular file, at most `TEXT_MAX_BYTES`) as a prompt."""
    from helix_framework.bounded_read import read_regular_file

    data = read_regular_file(path, TEXT_MAX_BYTES, limit_name="size limit of --text")
    return Prompt(f"text:{Path(path).name}", "user", str(path), data.decode("utf-8", errors="replace"))


def text_windows(tokenizer: Any, text: Prompt, positions: int, window: int) -> list[Window]:
    """llama.cpp's ``perplexity -f`` windows: the text tokenized whole, cut into
    consecutive windows of ``window`` tokens (a partial last one is dropped),
    the first token of each replaced by BOS when the tokenizer adds one; in
    each, positions ``window//2 .. window-2`` are scored (every prediction
    there has at least ``window//2`` tokens of context). Windows are taken in
    order until ``positions`` positions are scored."""
    first = window // 2
    per = window - 1 - first
    if per < 1:
        raise AgreementError(f"--window {window} scores no position with --text; give at least 3")
    ids = np.asarray(tokenizer.encode(text.text), dtype=np.int64)
    n = ids.size // window
    if n == 0:
        raise AgreementError(f"{text.source}: {ids.size} tokens, fewer than one window of {window}")
    bos = tokenizer.bos_id if tokenizer.encode("")[:1] == [tokenizer.bos_id] else None
    out = []
    for i in range(min(n, -(-positions // per))):
        chunk = ids[i * window:(i + 1) * window].copy()
        next_ids = np.append(chunk[1:], -1)
        if bos is not None:
            chunk[0] = bos
        out.append(Window(text.name, chunk, next_ids, first, window - 1))
    return out


# -- the reference cache -------------------------------------------------------


def _cache_key(source: ModelSource, prompts: list[Prompt], positions: int, window: int, text: bool = False) -> str:
    payload = {"v": CACHE_VERSION, "files": source.file_hashes(), "prompts": [p.sha256 for p in prompts],
               "positions": positions, "window": window}
    if text:  # other windows than the prompts' from the same text
        payload["text"] = True
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


class ArrayRows:
    """`NpySlices`'s ``rows`` over an array in memory (views, no copies)."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape = array, array.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


class WarmReference:
    """A reference's outputs held in memory across `agree` calls (``helix
    serve``'s warm state): its logits and hidden states, and the statistics
    of each scored chunk of logits (`ReferenceChunk`), computed once."""

    def __init__(self, logits: NpySlices, hidden: NpySlices):
        self.logits = ArrayRows(logits.rows(0, logits.shape[0]))
        self.hidden = ArrayRows(hidden.rows(0, hidden.shape[0]))
        self._chunks: dict[tuple[int, int], ReferenceChunk] = {}

    def chunk(self, start: int, stop: int) -> ReferenceChunk:
        """Statistics of logits rows ``[start, stop)`` (concurrent callers may both compute them once)."""
        got = self._chunks.get((start, stop))
        if got is None:
            got = self._chunks[(start, stop)] = ReferenceChunk.from_logits(self.logits.rows(start, stop))
        return got

    @property
    def nbytes(self) -> int:
        return (self.logits.array.nbytes + self.hidden.array.nbytes
                + sum(c.p.nbytes + c.offset.nbytes + c.top1.nbytes for c in list(self._chunks.values())))


#: ``(cache key, compute) -> WarmReference``: how `agree` asks a warm store for
#: the reference's outputs; ``compute()`` gives them from the disk cache (or computes them).
ReferenceStore = Callable[[str, Callable[[], "tuple[NpySlices, NpySlices]"]], WarmReference]


def reference_outputs(
    build_model: Callable[[], Any], source: ModelSource, windows: list[Window], key: str,
    on_step: StepCallback | None = None,
) -> tuple[NpySlices, NpySlices]:
    """Reference logits [N, vocab] and hidden states [layers+1, N, hidden], cached
    on disk; ``build_model`` is only called on a cache miss, and the model it
    returns is run block by block (`engine.forward_steps`: a lazily loaded
    one holds one block's weights at a time)."""
    from helix_framework.engine import forward_steps, head_logits

    directory = cache_root() / "reference" / key
    logits_path, hidden_path = directory / "logits.npy", directory / "hidden.npy"
    if logits_path.is_file() and hidden_path.is_file():
        try:
            return NpySlices(logits_path), NpySlices(hidden_path)
        except (ValueError, OSError) as exc:
            log.warning("reference cache %s unreadable (%s); recomputing", directory, exc)
    model = build_model()
    n = sum(w.ids.size for w in windows)
    for step, h in enumerate(forward_steps(model, [w.ids for w in windows], on_step=on_step, phase="reference")):
        if step == 0:
            all_hidden = np.empty((model.n_layers + 1, n, h[0].shape[1]), np.float32)
        np.concatenate(h, out=all_hidden[step])
    # Filled window by window on the threads that compute them: no second
    # copy of the [N, vocab] array, and no window's logits waiting in a queue.
    all_logits = np.empty((n, model.vocab_size), np.float32)
    starts = np.cumsum([0] + [w.ids.size for w in windows])

    def keep(i: int, logits: np.ndarray) -> None:
        all_logits[starts[i]:starts[i + 1]] = logits

    for _ in head_logits(model, h, then=keep):
        pass
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
    scoring: str | None = None  # which positions of a window are scored, when not all

    def to_json(self) -> dict[str, Any]:
        out = {**self.result, "model": self.model, "candidate": self.candidate, "engine": self.engine,
               "prompts": self.prompts, "window": self.window, "seconds": self.seconds}
        if self.scoring is not None:
            out["scoring"] = self.scoring
        return out


def agree(
    model_path: str | Path,
    *,
    weights: Mapping[str, np.ndarray],
    candidate_name: str,
    prompts_dir: str | Path | None = None,
    positions: int = MIN_POSITIONS,
    window: int = 512,
    source: ModelSource | None = None,
    linears: dict[str, Any] | None = None,
    text: Prompt | None = None,
    on_step: StepCallback | None = None,
    reference_store: ReferenceStore | None = None,
) -> AgreeReport:
    """Compare the reference model with the same model carrying ``weights``;
    ``linears`` (from `adc_linears`) replace those layers' matrix products.
    ``text`` (from `read_text`) replaces the prompt set and is read in
    `text_windows` (scored on each window's second half, as llama.cpp).
    An encoder is scored on every sentence of the prompt set: ``positions``
    and ``window`` apply to decoders only (`helix agree` refuses them for an
    encoder, see `is_encoder`).

    A decoder runs block by block over all windows, the reference first
    (unless cached) and then the candidate, both loaded lazily where the
    family allows it: only one block's weights are in memory at a time
    (``weights`` may be a lazy mapping such as `calibrate.weights_from_artifacts`
    gives). ``on_step(phase, i, n)`` is called before every block of either
    pass (see `engine.forward_steps`); an exception it raises stops the run.
    ``reference_store`` keeps the reference's outputs in memory between
    calls (see `WarmReference`); without it they are read from the disk
    cache in slices."""
    from helix_framework.engine import forward_steps, head_logits
    from helix_framework.models import resolve_model
    from helix_framework.reference import load_model, load_tokenizer
    from helix_framework.reference.loader import supports_lazy
    from helix_framework.sources import open_source

    t0 = time.perf_counter()
    source = source or open_source(resolve_model(model_path))
    prompts = [text] if text is not None else load_prompts(prompts_dir)
    engine = "adc" if linears else "dense"
    lazy = supports_lazy(source)
    if is_encoder(source):
        candidate = _with_linears(load_model(source, weights=weights), linears)
        t1 = time.perf_counter()
        result = _embedding_agreement(load_model(source), candidate, load_tokenizer(source), prompts)
        return AgreeReport(result, str(model_path), candidate_name, engine, [p.to_json() for p in prompts], 0,
                           {"load": t1 - t0, "run": time.perf_counter() - t1})
    candidate = _with_linears(load_model(source, weights=weights, lazy=lazy), linears)
    tokenizer = load_tokenizer(source)
    t1 = time.perf_counter()
    if text is not None:
        windows = text_windows(tokenizer, text, positions, window)
    else:
        windows = token_windows(tokenizer, prompts, positions, window)
    key = _cache_key(source, prompts, positions, window, text=text is not None)
    compute = functools.partial(reference_outputs, lambda: load_model(source, lazy=lazy), source, windows, key, on_step)
    warm = reference_store(key, compute) if reference_store is not None else None
    ref_logits, ref_hidden = (warm.logits, warm.hidden) if warm is not None else compute()
    t2 = time.perf_counter()
    err = np.zeros(ref_hidden.shape[0])
    norm = np.zeros(ref_hidden.shape[0])
    for step, h in enumerate(forward_steps(candidate, [w.ids for w in windows], on_step=on_step, phase="candidate")):
        ref_h = ref_hidden.rows(step, step + 1)[0].astype(np.float64)
        err[step] = ((np.concatenate(h).astype(np.float64) - ref_h) ** 2).sum()
        norm[step] = (ref_h**2).sum()
    starts = np.cumsum([0] + [w.ids.size for w in windows])

    def score(i: int, logits: np.ndarray) -> AgreementAccumulator:  # on the thread that made the logits
        sc, at = windows[i].scored, int(starts[i])
        part = AgreementAccumulator()
        for lo in range(sc.start, sc.stop, CHUNK):  # the chunks `add` would cut, so warm or not the sums are equal
            hi = min(lo + CHUNK, sc.stop)
            ref = warm.chunk(at + lo, at + hi) if warm is not None else ref_logits.rows(at + lo, at + hi)
            part.add(ref, logits[lo:hi], windows[i].next_ids[lo:hi], np.arange(at + lo, at + hi))
        return part

    acc = AgreementAccumulator()
    for part in head_logits(candidate, h, then=score):
        acc.extend(part)  # in window order, whichever thread finished first
    result = acc.result().to_json()
    result["per_layer"] = [float(np.sqrt(e / n)) if n > 0 else 0.0 for e, n in zip(err, norm)]
    used = sorted({w.prompt for w in windows})
    return AgreeReport(
        result, str(model_path), candidate_name, engine,
        [p.to_json() for p in prompts if p.name in used], window,
        {"load": t1 - t0, "reference": t2 - t1, "candidate": time.perf_counter() - t2},
        TEXT_SCORING if text is not None else None,
    )


def _with_linears(model: Any, linears: dict[str, Any] | None) -> Any:
    for name, fn in (linears or {}).items():
        model.set_linear(name, fn)
    return model


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
