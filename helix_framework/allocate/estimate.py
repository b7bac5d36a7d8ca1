"""What compressing one tensor with one candidate costs, estimated per block.

For every decoder block and candidate the cost is *measured*: the block's
tensors are replaced by that candidate's reconstructions, windows of
estimation text (built-in calibration text drawn with its own seed, never
the evaluation prompts the verdict is measured on) run from the reference
hidden states entering the block to the head, and the mean KL divergence
from the reference's next-token distribution is the block's cost. A block's
cost is shared among its tensors in proportion to each one's output error
``tr(dW H dW^T)`` (``H = X^T X`` of the reference inputs of that layer on the
same windows): measured KL where it can be measured cheaply, a
Hessian-weighted split where it cannot. Costs are then added over tensors,
which holds for small, independent perturbations (KL is locally quadratic).
Tensors outside the blocks are measured alone, with a full forward pass.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import attrs
import numpy as np

from helix_framework.engine import StatsCollector
from helix_framework.reference.base import log_softmax

__all__ = ["ESTIMATE_SEED", "ESTIMATE_TOKENS", "ESTIMATE_WINDOWS", "ReferencePass", "estimate_groups",
           "reference_pass", "share_costs"]

#: Estimation windows: this many windows of this many tokens of the built-in
#: calibration text, drawn with this seed.
ESTIMATE_WINDOWS = 4
ESTIMATE_TOKENS = 256
ESTIMATE_SEED = 1


@attrs.frozen
class ReferencePass:
    """The reference on the estimation windows: hidden states entering each
    block ``[layers + 1][B, T, hidden]`` (the last one enters the head) and
    the next-token log-probabilities ``[B, T, vocab]`` (float32)."""

    ids: np.ndarray = attrs.field(repr=False)
    inputs: list[np.ndarray] = attrs.field(repr=False)
    log_p: np.ndarray = attrs.field(repr=False)


def reference_pass(model: Any, ids: np.ndarray) -> ReferencePass:
    h = model.embed_windows(ids)
    inputs = [h]
    for layer in range(model.n_layers):
        h = model.block_windows(layer, h)
        inputs.append(h)
    log_p = np.stack([log_softmax(model.head_window(w).astype(np.float32)) for w in h])
    return ReferencePass(ids, inputs, log_p)


def _kl_from(model: Any, ref: ReferencePass, start: int | None) -> float:
    """Mean KL(reference || model) over every position, the model run from
    the reference states entering block ``start`` (None: from the embedding)."""
    h = model.embed_windows(ref.ids) if start is None else ref.inputs[start]
    start = start or 0
    for layer in range(start, model.n_layers):
        h = model.block_windows(layer, h)
    total, n = 0.0, 0
    for w, lp in zip(h, ref.log_p):
        lq = log_softmax(model.head_window(w).astype(np.float32))
        total += float((np.exp(lp) * (lp - lq)).sum(dtype=np.float64))
        n += lp.shape[0]
    return total / n


def _swapped(model: Any, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    old = {name: model.weights[name] for name in weights}
    for name, w in weights.items():
        model.weights[name] = np.ascontiguousarray(w, dtype=np.float32).reshape(old[name].shape)
    return old


def _output_errors(model: Any, ref: ReferencePass, layer: int, deltas: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per tensor of the block: mean squared output error per token, ``tr(dW H dW^T) / tokens``."""
    collector = StatsCollector()
    model.linear_observer = collector
    try:
        model.block_windows(layer, ref.inputs[layer])
    finally:
        model.linear_observer = None
    stats = collector.result()
    out = {}
    for name, d in deltas.items():
        s = stats.get(name)
        if s is None or s.fit.hessian.shape[0] != d.shape[1]:
            out[name] = float((d.astype(np.float64) ** 2).sum())  # no layer inputs seen: the weight error
            continue
        d64 = d.astype(np.float64)
        out[name] = float(((d64 @ s.fit.hessian) * d64).sum() / max(s.fit.n_tokens, 1))
    return out


def estimate_groups(
    model: Any, ref: ReferencePass, groups: Iterable[tuple[int | None, list[str]]],
    weights: Mapping[str, np.ndarray], on_group: Callable[[], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """``{tensor: (group KL, output error)}`` for every tensor of ``groups``
    (``(block index or None, tensor names)``; None: outside the blocks, measured
    alone) with ``weights`` (reconstructions by name) in place of the reference."""
    out: dict[str, tuple[float, float]] = {}
    for layer, names in groups:
        names = [n for n in names if n in weights]
        if not names:
            continue
        deltas = {n: np.asarray(weights[n], np.float32).reshape(model.weights[n].shape) - model.weights[n]
                  for n in names}
        errors = _output_errors(model, ref, layer, deltas) if layer is not None else {
            n: float((d.astype(np.float64) ** 2).sum()) for n, d in deltas.items()}
        old = _swapped(model, {n: weights[n] for n in names})
        try:
            kl = _kl_from(model, ref, layer)
        finally:
            for n, w in old.items():
                model.weights[n] = w
        for n in names:
            out[n] = (kl, errors[n])
        if on_group is not None:
            on_group()
    return out


def share_costs(block_kl: np.ndarray, errors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each tensor's cost: its group's KL times its share of the group's output
    error (an equal share where the group has none). All arrays are per tensor."""
    cost = np.zeros_like(block_kl, dtype=np.float64)
    for g in np.unique(groups):
        at = groups == g
        total = errors[at].sum()
        share = errors[at] / total if total > 0 else np.full(at.sum(), 1.0 / at.sum())
        cost[at] = block_kl[at] * share
    return cost
