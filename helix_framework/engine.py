"""Block-at-a-time execution over calibration windows.

A data-aware calibration moves a batch of token windows through the model one
decoder block at a time: embed, then for each block collect every linear
layer's inputs into `LayerStats` (``H = sum x^T x`` in float64, one Hessian
per distinct input, so q/k/v share one and gate/up share one), let the caller
fit and encode that block's tensors, and move the windows on through the
compressed block (``propagate: quantized``) or the reference one
(``propagate: reference``). The model is loaded lazily and each block's
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

from typing import Callable, Iterator, Mapping, Sequence

import attrs
import numpy as np

from helix_framework.errors import LayerInputError
from helix_framework.layer_stats import LayerStats

#: ``on_step(phase, i, n)``: called before step ``i`` of ``n``; raise to stop.
StepCallback = Callable[[str, int, int], None]

__all__ = ["BlockStats", "StatsCollector", "StepCallback", "forward_steps", "head_logits", "run_blocks"]


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
    raise `LayerInputError` naming the layer.
    """

    def __init__(self) -> None:
        self.group = "fit"
        self._sums: dict[tuple[str, str], np.ndarray] = {}
        self._tokens: dict[tuple[str, str], int] = {}
        self._key_of: dict[str, str] = {}
        self._last: tuple[np.ndarray | None, str] = (None, "")

    def __call__(self, name: str, x: np.ndarray) -> None:
        last_x, last_key = self._last
        if x is last_x:
            self._key_of[name] = last_key
            return
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise LayerInputError(f"calibration inputs contain {bad} NaN or infinite value(s)", layer=name)
        self._key_of[name] = name
        self._last = (x, name)
        # One window's products in float32 (twice as fast as float64 here, and
        # exact enough over a few hundred tokens), summed over windows in float64.
        x32 = np.asarray(x, dtype=np.float32)
        slot = (self.group, name)
        h = (x32.T @ x32).astype(np.float64)
        if slot in self._sums:
            self._sums[slot] += h
            self._tokens[slot] += x.shape[0]
        else:
            self._sums[slot] = h
            self._tokens[slot] = x.shape[0]

    def result(self) -> dict[str, BlockStats]:
        """Statistics of every observed layer."""
        out = {}
        for name, key in self._key_of.items():
            shared = tuple(sorted(n for n, k in self._key_of.items() if k == key and n != name))
            held = None
            if ("held_out", key) in self._sums:
                held = LayerStats(self._sums["held_out", key], self._tokens["held_out", key])
            out[name] = BlockStats(LayerStats(self._sums["fit", key], self._tokens["fit", key]), held, shared)
        return out


#: ``fit_block(layer, tensor names, stats by layer name) -> replacement weights``
#: (name -> float32 array in the model's orientation) for the compressed block.
FitBlock = Callable[[int, list[str], Mapping[str, BlockStats]], Mapping[str, np.ndarray]]


def run_blocks(
    model: object, ids: np.ndarray, fit: np.ndarray, held_out: np.ndarray, fit_block: FitBlock, *,
    propagate: str = "quantized", progress: bool = False,
) -> None:
    """Run windows ``ids [B, T]`` through ``model`` block by block (see the module docstring).

    ``fit`` and ``held_out`` index the windows whose inputs go into the fit
    statistics and the held-out ones. ``model`` is a `DecoderModel`, ideally
    loaded lazily (``load_model(..., lazy=True)``).
    """
    h_fit = model.embed_windows(ids[fit])
    h_held = model.embed_windows(ids[held_out]) if held_out.size else None
    release_loaded(model)
    for layer in _progress(range(model.n_layers), progress):
        names = model.block_tensors(layer)
        collector = StatsCollector()
        model.linear_observer = collector
        try:
            ref_fit = model.block_windows(layer, h_fit)
            ref_held = None
            if h_held is not None:
                collector.group = "held_out"
                ref_held = model.block_windows(layer, h_held)
        finally:
            model.linear_observer = None
        replacements = fit_block(layer, names, collector.result())
        if propagate == "quantized" and replacements:
            for name, w in replacements.items():
                model.weights[name] = np.ascontiguousarray(w, dtype=np.float32)
            h_fit = model.block_windows(layer, h_fit)
            h_held = model.block_windows(layer, h_held) if h_held is not None else None
        else:
            h_fit, h_held = ref_fit, ref_held
        model.weights.release(names)
        # Not past this block: its statistics and reconstructions are as large as its weights.
        del collector, replacements, ref_fit, ref_held


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
        h = [model.block_windows(layer, x[None])[0] for x in h]
        release_loaded(model)
        yield h


def head_logits(model: object, hidden: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Logits ``[T, vocab]`` of each window's last hidden states, one window
    at a time (a window's logits are the largest array of a pass)."""
    for h in hidden:
        yield model.head_window(h)
    release_loaded(model)


def release_loaded(model: object) -> None:
    """Drop every weight a lazily loaded model holds (read again on use)."""
    release = getattr(model.weights, "release", None)  # only `LazyWeights` can read a weight again
    if release is not None:
        release(list(dict.keys(model.weights)))


def _progress(items: range, enabled: bool, desc: str = "calibrating blocks") -> Iterator[int]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="block", leave=False)
