"""The one loop over a model's tensors, and block-at-a-time execution over windows.

`each_tensor` is how calibration, in-memory fitting (``helix agree
--config``, ``helix serve``) and sweeps visit tensors: in source order for a
data-free candidate; for a data-aware one, the tensors outside the decoder
blocks first, then block by block with the statistics of each linear
layer's inputs (`run_blocks`).

A data-aware calibration moves a batch of token windows through the model one
decoder block at a time: embed, then for each block collect every linear
layer's inputs into `LayerStats` (``H = sum x^T x`` in float64, one Hessian
per distinct input, so q/k/v share one and gate/up share one), let the caller
fit and encode that block's tensors, and move the windows on through the
compressed block (``propagate: quantized``) or the reference one
(``propagate: reference``). With ``quantized`` the block's layers are also
fitted in the order they read their inputs (GPTQ's "true sequential"): the
o, gate/up and down statistics are collected again once the layers before
them are replaced, so each layer fits the inputs it will really see. With
``target: reference`` the fit windows also run through the uncompressed
blocks, and each layer's statistics add ``sum x^T (x_ref - x)`` (its inputs
against the uncompressed model's, token by token), so it can be fitted to
reproduce the uncompressed model's output. The model is loaded lazily and each block's
weights are released before the next is read, so only one block's matrices
are in memory at a time.

`forward_steps` is the same walk without statistics, for token agreement:
the hidden states of every window after the embedding and after each block,
one step at a time, so a reference or candidate larger than memory is scored
with one block's weights loaded. Between steps it calls ``on_step(phase, i,
n)``; an exception raised there stops the walk (`helix serve` cancels jobs
that way).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Callable, Container, Iterator, Mapping, Sequence

import attrs
import numpy as np

from helix_framework.config import canonical_json
from helix_framework.errors import ConfigError, LayerInputError
from helix_framework.layer_stats import LayerStats
from helix_framework.reference.base import StopWindow, current_window

#: Inputs whose magnitudes stay below this are kept in float16 (largest finite: 65,504).
F16_SAFE = 60000.0

#: ``on_step(phase, i, n)``: called before step ``i`` of ``n``; raise to stop.
StepCallback = Callable[[str, int, int], None]

__all__ = ["BlockStats", "BlockStore", "ReferenceBlocks", "StatsCollector", "StepCallback", "each_tensor",
           "forward_steps", "head_logits", "run_blocks"]


@attrs.frozen
class BlockStats:
    """One linear layer's statistics: from the fit windows and the held-out ones (None if none)."""

    fit: LayerStats
    held_out: LayerStats | None
    shared_with: tuple[str, ...] = ()


class StatsCollector:
    """A `ReferenceModel.linear_observer` that sums ``x^T x`` per distinct input
    (it is called once per window, so each call is one window's tokens).

    Layers that are called with the very same input array (q, k and v after
    one norm) share one Hessian, computed once. Inputs with NaN or infinity
    raise `LayerInputError` naming the layer. Windows may run on several
    threads (``window_ordered``): each computes its own product, and the
    products are added in window order, so the sums are the same bits
    whatever the thread count.
    """

    window_ordered = True

    def __init__(self, reference: Mapping[str, Sequence[np.ndarray]] | None = None) -> None:
        self.group = "fit"
        # ``target: reference``: each layer's inputs in the uncompressed model,
        # per fit window, so ``sum x^T (x_ref - x)`` is summed beside the Hessian.
        self._reference = reference or {}
        self._sums: dict[tuple[str, str], np.ndarray] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._key_of: dict[str, str] = {}
        self._thread = threading.local()  # the last input seen on this thread, for sharing
        self._turn = threading.Condition()
        self._added: dict[tuple[str, str], int] = {}  # windows added per slot in this group's threaded pass
        self._failed: int | None = None  # the first window that failed, in this group's threaded pass

    def __call__(self, name: str, x: np.ndarray) -> None:
        last_x, last_key = getattr(self._thread, "last", (None, ""))
        if x is last_x:
            self._key_of[name] = last_key
            return
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise LayerInputError(f"calibration inputs contain {bad} NaN or infinite value(s)", layer=name)
        self._key_of[name] = name  # first set in the order the block reads its inputs, on any thread
        self._thread.last = (x, name)
        # One window's products in float32 (twice as fast as float64 here, and
        # exact enough over a few hundred tokens), summed over windows in float64.
        x32 = np.asarray(x, dtype=np.float32)
        slot = (self.group, name)
        window = current_window()
        # on one thread the windows come in order: the count so far is this one's index
        index = window if window is not None else self._added.get(slot, 0)
        # widened to float64 as it is added: a waiting thread holds half the bytes
        self._add_in_order(slot, x32.T @ x32, x.shape[0], window, index)
        ref = self._reference.get(name) if self.group == "fit" else None
        if ref is not None:  # after the Hessian's product is added: one [in, in] product per thread at a time
            self._add_in_order(("drift", name), x32.T @ (np.asarray(ref[index], dtype=np.float32) - x32), 0,
                               window, index)

    def _add_in_order(self, slot: tuple[str, str], product: np.ndarray, tokens: int, window: int | None,
                      index: int) -> None:
        """Add window ``index``'s ``product`` to ``slot``'s float64 sum once
        every earlier window's is in (``window``: None on one thread)."""
        with self._turn:
            if window is not None:
                self._turn.wait_for(lambda: self._behind_failure(window) or self._added.get(slot, 0) == window)
                if self._behind_failure(window):
                    raise LayerInputError(f"window {self._failed} of this block failed first", layer=slot[1])
            if slot in self._sums:
                self._sums[slot] += product
                self._tokens[slot] += tokens
            else:
                self._sums[slot] = product.astype(np.float64)
                self._tokens[slot] = tokens
            self._added[slot] = index + 1
            if window is not None:
                self._turn.notify_all()

    def start_group(self, group: str) -> None:
        """Sum the next windows into ``group`` ("fit" or "held_out"), counted from window 0."""
        self.group = group
        self._added.clear()
        self._failed = None

    def abort(self) -> None:
        """The calling thread's window failed: later windows, which would wait
        for its turn for ever, stop; earlier ones finish (their error, if
        any, is the one raised first)."""
        window = current_window()
        with self._turn:
            if window is not None and (self._failed is None or window < self._failed):
                self._failed = window
            self._turn.notify_all()

    def _behind_failure(self, window: int) -> bool:
        return self._failed is not None and self._failed < window

    def result(self) -> dict[str, BlockStats]:
        """Statistics of every observed layer."""
        out = {}
        for name, key in self._key_of.items():
            shared = tuple(sorted(n for n, k in self._key_of.items() if k == key and n != name))
            held = None
            if ("held_out", key) in self._sums:
                held = LayerStats(self._sums["held_out", key], self._tokens["held_out", key])
            drift = self._sums.get(("drift", key))
            # summed in float64, kept in float32: it lives through the layer's fit
            drift = None if drift is None else drift.astype(np.float32)
            fit = LayerStats(self._sums["fit", key], self._tokens["fit", key], drift=drift)
            out[name] = BlockStats(fit, held, shared)
        return out


class ReferenceBlocks:
    """What each block gives on reference inputs, for one model and one set of
    calibration windows: the `StatsCollector` of its layers' inputs and its
    outputs (fit and held-out windows). `run_blocks` reads and fills it for
    every block whose inputs are still the reference's (all of them with
    ``propagate: reference``, those before the first compressed block with
    ``quantized``), so ``helix serve`` collects them once per calibration
    text. Kept arrays are made read-only: a codec that wrote into a Hessian
    would otherwise change the next candidate's statistics."""

    def __init__(self) -> None:
        self._blocks: dict[int, tuple[StatsCollector, np.ndarray, np.ndarray | None]] = {}

    def get(self, layer: int) -> tuple[StatsCollector, np.ndarray, np.ndarray | None] | None:
        return self._blocks.get(layer)

    def put(self, layer: int, collector: StatsCollector, fit_out: np.ndarray, held_out: np.ndarray | None) -> None:
        for a in (*collector._sums.values(), fit_out, held_out):
            if a is not None:
                a.setflags(write=False)
        self._blocks[layer] = (collector, fit_out, held_out)

    @property
    def nbytes(self) -> int:
        return sum(sum(a.nbytes for a in c._sums.values()) + f.nbytes + (0 if h is None else h.nbytes)
                   for c, f, h in list(self._blocks.values()))


#: ``key -> ReferenceBlocks`` for a model and its calibration windows (``key``
#: hashes both); ``helix serve`` answers from its warm state.
BlockStore = Callable[[str], ReferenceBlocks]

#: ``handle(info, stats) -> reconstruction or None`` for one tensor (see `each_tensor`).
HandleTensor = Callable[[Any, "BlockStats | None"], "np.ndarray | None"]


def each_tensor(
    source: Any, infos: Sequence[Any], calibration: Any, handle: HandleTensor, *, progress: bool = False,
    on_tensor: Callable[[int, int, str], None] | None = None, block_store: BlockStore | None = None,
    wants_stats: Callable[[Any], bool] | None = None,
) -> dict[str, Any] | None:
    """Call ``handle(info, stats)`` once for every tensor of ``infos``;
    ``on_tensor(i, n, name)`` before each (an exception it raises stops the
    loop: `helix serve` cancels jobs that way).

    Without ``calibration`` (a candidate's `CalibrationConfig`) the tensors
    come in order with ``stats`` None. With it, the calibration windows run
    through ``source``'s model block by block: first the tensors outside the
    decoder blocks (``stats`` None), then each block's, with the `BlockStats`
    of a linear layer's inputs; ``handle`` returns the tensor's
    reconstruction (what the windows pass through with ``propagate:
    quantized``) or None to keep the tensor as it is. Returns what the
    manifest records about the calibration text (None without it).
    ``block_store`` keeps the reference's blocks on these windows for the
    next call (see `ReferenceBlocks`). ``wants_stats(info)`` says which
    tensors may use statistics (None: all): blocks after the last of them are
    not run, and groups of layers without one are not observed.
    """
    done = 0

    def step(info: Any, stats: BlockStats | None) -> np.ndarray | None:
        nonlocal done
        if on_tensor is not None:
            on_tensor(done, len(infos), info.name)
        done += 1
        return handle(info, stats)

    if calibration is None:
        for info in _progress_tensors(infos, progress):
            step(info, None)
        return None

    from helix_framework.calibration_text import load_documents, make_windows
    from helix_framework.prompts import load_prompts
    from helix_framework.reference import DecoderModel, load_model, load_tokenizer

    cal = calibration
    windows = make_windows(load_tokenizer(source), load_documents(cal.text), sequences=cal.sequences,
                           tokens=cal.tokens, seed=cal.seed, held_out=cal.held_out, evaluation=load_prompts(None))
    model = load_model(source, lazy=True)
    # GPT-2's Conv1D matrices are stored [in, out]: their rows are not the rows the statistics describe.
    if not isinstance(model, DecoderModel) or any(spec.transposed for spec in model.linear_specs()):
        raise ConfigError("data-aware calibration runs decoder models (Llama family) only", path="$.calibration")
    by_name = {info.name: info for info in infos}
    in_blocks = {n for layer in range(model.n_layers) for n in model.block_tensors(layer)}
    for info in infos:
        if info.name not in in_blocks:
            step(info, None)

    def fit_block(layer: int, names: list[str], stats: Mapping[str, BlockStats]) -> dict[str, np.ndarray]:
        kept = {name: step(by_name[name], stats.get(name)) for name in names}
        return {name: recon for name, recon in kept.items() if recon is not None}

    reference = None
    if block_store is not None:
        key = hashlib.sha256(canonical_json({"files": source.file_hashes()}).encode())
        for a in (windows.ids, windows.fit, windows.held_out):
            key.update(np.ascontiguousarray(a, dtype=np.int64).tobytes() + b"|")
        reference = block_store(key.hexdigest())
    fit_names = None if wants_stats is None else {info.name for info in infos if wants_stats(info)}
    run_blocks(model, windows.ids, windows.fit, windows.held_out, fit_block, propagate=cal.propagate,
               progress=progress, reference=reference, fit_names=fit_names, target=cal.target)
    settings = {"text": cal.text, "sequences": cal.sequences, "tokens": cal.tokens, "seed": cal.seed,
                "held_out_fraction": cal.held_out, "propagate": cal.propagate, "target": cal.target}
    return windows.to_json(settings)


#: ``fit_block(layer, tensor names, stats by layer name) -> replacement weights``
#: (name -> float32 array in the model's orientation) for the compressed block.
FitBlock = Callable[[int, list[str], Mapping[str, BlockStats]], Mapping[str, np.ndarray]]


def run_blocks(
    model: object, ids: np.ndarray, fit: np.ndarray, held_out: np.ndarray, fit_block: FitBlock, *,
    propagate: str = "quantized", progress: bool = False, reference: ReferenceBlocks | None = None,
    fit_names: Container[str] | None = None, target: str = "layer",
) -> None:
    """Run windows ``ids [B, T]`` through ``model`` block by block (see the module docstring).

    ``fit`` and ``held_out`` index the windows whose inputs go into the fit
    statistics and the held-out ones. ``model`` is a `DecoderModel`, ideally
    loaded lazily (``load_model(..., lazy=True)``). ``reference`` holds the
    reference's blocks on these windows from an earlier run; those computed
    here are added to it. ``fit_names``: the tensors that need statistics
    (None: all); a block without any gets ``fit_block`` with none, and the
    windows stop after the last block that has one. ``target="reference"``
    (with ``quantized``) also moves the fit windows through the uncompressed
    blocks and gives each layer's statistics ``drift`` (see `LayerStats`).
    """
    wanted = [layer for layer in range(model.n_layers)
              if fit_names is None or any(n in fit_names for n in model.block_tensors(layer))]
    last = wanted[-1] if wanted else -1
    h_fit = model.embed_windows(ids[fit]) if wanted else None
    h_held = model.embed_windows(ids[held_out]) if wanted and held_out.size else None
    release_loaded(model)
    pristine = True  # the windows entering this block are the reference's
    # the fit windows through the uncompressed blocks (``target: reference``); while pristine, h_fit itself
    r_fit = h_fit if target == "reference" and propagate == "quantized" else None
    for layer in _progress(range(model.n_layers), progress):
        names = model.block_tensors(layer)
        if layer > last or (layer not in wanted and (reference is None or not pristine)):
            fit_block(layer, names, {})
            if layer < last:  # a later block needs these windows
                same = r_fit is h_fit
                h_fit = model.block_windows(layer, h_fit)
                if r_fit is not None:
                    r_fit = h_fit if same else model.block_windows(layer, r_fit)
                h_held = model.block_windows(layer, h_held) if h_held is not None else None
            model.weights.release(names)
            continue
        ref_inputs: dict[str, list[np.ndarray]] = {}
        if r_fit is not None:  # before any of the block's weights is replaced
            ref_inputs, r_fit = _reference_inputs(model, layer, r_fit)
        known = reference.get(layer) if reference is not None and pristine else None
        if known is not None:
            collector, ref_fit, ref_held = known
        elif propagate == "quantized" and (reference is None or not pristine):
            # Fitted group by group (`_fit_sequential`), which collects each
            # later group's inputs again: only the first group's are needed
            # here, and the passes stop at them.
            first = _wanted(read_groups(model, layer, h_fit), fit_names)[:1]
            collector = _collect(model, layer, h_fit, h_held, first, ref_inputs) if first else StatsCollector()
            ref_fit = ref_held = None
        else:
            collector = StatsCollector()
            model.linear_observer = collector
            try:
                ref_fit = model.block_windows(layer, h_fit)
                ref_held = None
                if h_held is not None:
                    collector.start_group("held_out")
                    ref_held = model.block_windows(layer, h_held)
            finally:
                model.linear_observer = None
            if reference is not None and pristine:
                reference.put(layer, collector, ref_fit, ref_held)
        if propagate == "quantized":
            replacements = _fit_sequential(model, layer, names, collector, h_fit, h_held, fit_block, fit_names,
                                           ref_inputs)
        else:
            replacements = fit_block(layer, names, collector.result())
        # Not past the fit: a block's statistics are as large as its weights
        # (at 5,632 inputs the down projection's fit and held-out Hessians are
        # 0.5 GB), and the passes below hold several copies of the windows.
        collector = ref_inputs = None
        if layer == last:  # no later block needs the windows
            h_fit = h_held = r_fit = None
        elif propagate == "quantized" and (replacements or ref_fit is None):
            pristine = pristine and not replacements
            for name, w in replacements.items():
                model.weights[name] = np.ascontiguousarray(w, dtype=np.float32)
            replacements = ref_fit = ref_held = None
            h_fit = model.block_windows(layer, h_fit)
            h_held = model.block_windows(layer, h_held) if h_held is not None else None
        else:
            h_fit, h_held = ref_fit, ref_held
        model.weights.release(names)
        del replacements, ref_fit, ref_held


def forward_steps(
    model: object, windows: Sequence[np.ndarray], *, on_step: StepCallback | None = None, phase: str = "forward",
    progress: bool = False,
) -> Iterator[list[np.ndarray]]:
    """Hidden states ``[T, hidden]`` of each window of token ids (each from
    position 0, independent of the others): first the embeddings, then the
    output of each block in turn (``n_layers + 1`` lists in all), exactly
    the ``hidden`` of ``DecoderModel.forward(ids, return_hidden=True)``.

    A lazily loaded model (``LazyWeights``) has its weights released after
    every step, so one block's matrices are in memory at a time.
    ``on_step(phase, i, n_layers)`` runs before block ``i``.
    """
    h = [model.embed_windows(np.asarray(ids)[None])[0] for ids in windows]
    release_loaded(model)
    yield h
    for layer in _progress(range(model.n_layers), progress, f"{phase} blocks"):
        if on_step is not None:
            on_step(phase, layer, model.n_layers)
        h = model.block_each(layer, h)
        release_loaded(model)
        yield h


def head_logits(model: object, hidden: Sequence[np.ndarray],
                then: Callable[[int, np.ndarray], Any] | None = None) -> Iterator[Any]:
    """Logits ``[T, vocab]`` of each window's last hidden states, in order
    and a few windows at a time (a window's logits are the largest array of
    a pass); with ``then``, ``then(i, logits)`` of each window instead,
    computed on the thread that made the logits (see `DecoderModel.head_each`)."""
    yield from model.head_each(hidden, then)
    release_loaded(model)


def release_loaded(model: object) -> None:
    """Drop every weight a lazily loaded model holds (read again on use)."""
    release = getattr(model.weights, "release", None)  # only `LazyWeights` can read a weight again
    if release is not None:
        release(list(dict.keys(model.weights)))


def _progress_tensors(infos: Sequence[Any], enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from infos
        return
    from tqdm import tqdm

    with tqdm(infos, desc="calibrating", unit="tensor", leave=False) as bar:
        for info in bar:
            bar.set_postfix_str(info.name[-40:], refresh=False)
            yield info


def _fit_sequential(
    model: Any, layer: int, names: list[str], first: StatsCollector, h_fit: np.ndarray,
    h_held: np.ndarray | None, fit_block: FitBlock, fit_names: Container[str] | None = None,
    ref_inputs: dict[str, list[np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Fit a block's layers in the order they read their inputs (GPTQ's "true
    sequential": q/k/v, then o, then gate/up, then down), each group on the
    inputs of the block whose earlier layers are already replaced by their
    reconstructions. Statistics come from ``first`` while nothing is
    replaced and it has them; otherwise they are collected again by running
    the block only up to that group's input; a group without a tensor in
    ``fit_names`` gets none. The block's other tensors (norms, biases) come
    last. ``ref_inputs``: the layers' inputs in the uncompressed model, per
    fit window (``target: reference``); a group's are dropped from it once
    its statistics are summed (at 5,632 inputs a block's are hundreds of MB)."""
    stats = first.result()
    replacements: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    groups = read_groups(model, layer, h_fit)
    wanted = _wanted(groups, fit_names)
    for group in groups:
        group_stats = stats
        if group not in wanted:
            group_stats = {}
        elif replacements or any(n not in stats for n in group):
            group_stats = _collect(model, layer, h_fit, h_held, [group], ref_inputs).result()
        for name in group if ref_inputs is not None else ():  # summed into the drift: not needed again
            ref_inputs.pop(name, None)
        fitted = fit_block(layer, group, {n: group_stats[n] for n in group if n in group_stats})
        for name, w in fitted.items():
            model.weights[name] = np.ascontiguousarray(w, dtype=np.float32)
        replacements.update(fitted)
        seen.update(group)
    rest = [n for n in names if n not in seen]
    replacements.update(fit_block(layer, rest, {}) if rest else {})
    return replacements


def _wanted(groups: list[list[str]], fit_names: Container[str] | None) -> list[list[str]]:
    """The groups with a tensor that needs statistics."""
    return [g for g in groups if fit_names is None or any(n in fit_names for n in g)]


def read_groups(model: Any, layer: int, h: np.ndarray) -> list[list[str]]:
    """Block ``layer``'s linear layers in the order it reads them, grouped
    by shared input (q/k/v, gate/up), from one token of the first window."""
    order: list[tuple[str, np.ndarray]] = []
    model.linear_observer = lambda name, x: order.append((name, x))
    try:
        model.block_each(layer, [h[0][:1]])
    finally:
        model.linear_observer = None
    groups: list[list[str]] = []
    for i, (name, x) in enumerate(order):
        if i and x is order[i - 1][1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def _collect(model: Any, layer: int, h_fit: np.ndarray, h_held: np.ndarray | None,
             groups: list[list[str]], ref_inputs: Mapping[str, Sequence[np.ndarray]] | None = None,
             ) -> StatsCollector:
    """The statistics of the layers in ``groups`` (the first groups block
    ``layer`` reads) on the fit and held-out windows; each window's pass
    stops at the last of them. With ``ref_inputs`` (the layers' inputs in
    the uncompressed model, per fit window) they carry ``drift``."""
    collector = StatsCollector(ref_inputs)
    model.linear_observer = _Until(collector, groups)
    try:
        for group, h in (("fit", h_fit), ("held_out", h_held)):
            if h is not None:
                collector.start_group(group)
                model.block_each(layer, list(h))
    finally:
        model.linear_observer = None
    return collector


def _reference_inputs(model: Any, layer: int, r_fit: np.ndarray) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """Block ``layer`` as it is (not yet compressed) on the fit windows
    ``r_fit`` of the uncompressed model: every linear layer's inputs, per
    window (layers that read one input share one array), and the block's
    outputs."""
    keep = _KeepInputs(len(r_fit))
    model.linear_observer = keep
    try:
        out = model.block_windows(layer, r_fit)
    finally:
        model.linear_observer = None
    return keep.inputs, out


class _KeepInputs:
    """An observer that keeps a copy of every layer's input per window:
    float16 when it fits (half the memory; its rounding, random and far
    below the drift it enters, averages out of ``drift``'s sums), float32
    when a value is beyond float16's range."""

    window_ordered = True  # each window writes its own slot

    def __init__(self, n_windows: int) -> None:
        self.n_windows = n_windows
        self.inputs: dict[str, list[np.ndarray]] = {}
        self._count: dict[str, int] = {}  # windows seen per layer, when they run in order on one thread
        self._thread = threading.local()

    def __call__(self, name: str, x: np.ndarray) -> None:
        window = current_window()
        if window is None:
            window = self._count.get(name, 0)
            self._count[name] = window + 1
        last = getattr(self._thread, "last", None)
        if last is not None and last[0] is x:
            kept = last[1]
        else:
            kept = np.array(x, dtype=np.float16 if np.max(np.abs(x), initial=0.0) < F16_SAFE else np.float32)
            self._thread.last = (x, kept)
        self.inputs.setdefault(name, [None] * self.n_windows)[window] = kept  # type: ignore[list-item]


class _Until:
    """An observer that passes the input of each group of layers in
    ``groups`` to ``collector`` (for every layer of the group, when its
    first layer reads it) and stops the window's pass at the last group."""

    window_ordered = True  # the collector adds windows in order, so they may run on several threads

    def __init__(self, collector: StatsCollector, groups: list[list[str]]) -> None:
        self.collector = collector
        self.groups = {g[0]: g for g in groups if g}
        self.last = groups[-1][0] if groups else None

    def __call__(self, name: str, x: np.ndarray) -> None:
        group = self.groups.get(name)
        if group is not None:
            for member in group:  # one input: the collector shares its Hessian
                self.collector(member, x)
            if name == self.last:
                raise StopWindow

    def abort(self) -> None:
        self.collector.abort()


def _progress(items: range, enabled: bool, desc: str = "calibrating blocks") -> Iterator[int]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="block", leave=False)
