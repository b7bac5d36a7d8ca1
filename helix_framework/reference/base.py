"""What every reference model shares: weights by source name, pluggable
linear layers, the numeric building blocks, and the KV cache.

Weights are held as float32 and keyed by the tensor names of the source they
came from (Hugging Face names for safetensors, ``blk.N...`` names for GGUF),
so a compressed candidate is built by handing the loader a replacement for
any tensor the calibration pipeline touched, under the same name.

Every matrix product of a forward pass goes through `ReferenceModel.linear`,
which defaults to ``x @ W.T`` with ``W`` stored ``[out, in]``; a later engine
replaces single layers with `ReferenceModel.set_linear` (for example to run
a compressed-domain matvec) without touching the forward code.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import attrs
import numpy as np
from scipy import special

from helix_framework.errors import ReferenceModelError

logger = logging.getLogger(__name__)

#: ``name -> float32 array`` in the source's orientation (as `ModelSource.read` gives).
WeightProvider = Callable[[str], np.ndarray]
#: A replacement linear layer: ``x [T, in] -> y [T, out]`` without the bias.
LinearFn = Callable[[np.ndarray], np.ndarray]

F32 = np.float32

#: BLAS threads a forward pass uses unless the model's ``blas_threads`` says
#: otherwise. One, because on the 2-core machines this runs on, with other
#: work beside it, OpenBLAS's threads spin and wait on each other: a
#: 1536x576 matvec measured 8 ms with two threads against 0.3 ms with one,
#: and a 512-token SmolLM2 forward 7.6 s against 3.3 s.
DEFAULT_BLAS_THREADS: int | None = 1


def blas_threads(n: int | None) -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to ``n`` threads inside the block (None: leave as is).

    Uses threadpoolctl; without it the limit is not applied (logged once).
    """
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        global _warned_threadpoolctl
        if not _warned_threadpoolctl:
            logger.warning("threadpoolctl is not installed: BLAS thread count left as is (pip install threadpoolctl)")
            _warned_threadpoolctl = True
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


_warned_threadpoolctl = False

_T = TypeVar("_T")
_R = TypeVar("_R")
_END = object()


def window_threads() -> int:
    """Threads a forward pass spreads its independent windows over:
    ``$HELIX_THREADS``, else the cores this process may run on.

    Each thread runs whole windows with one BLAS thread, so the cores work
    without OpenBLAS's spinning (see `DEFAULT_BLAS_THREADS`) and a window's
    numbers do not depend on the thread count. Raises ReferenceModelError,
    naming the variable, for anything but a positive integer.
    """
    env = os.environ.get("HELIX_THREADS", "").strip()
    if not env:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not env.isdecimal() or int(env) < 1:
        raise ReferenceModelError(f"HELIX_THREADS must be a positive integer (threads per forward pass); got {env!r}")
    return int(env)


_window = threading.local()


def current_window() -> int | None:
    """Index of the window the calling thread runs for `DecoderModel.block_each`
    when windows run on several threads; None otherwise (calls then come in
    window order on one thread). A `ReferenceModel.linear_observer` that sums
    per window uses it to add in window order."""
    return getattr(_window, "index", None)


class StopWindow(Exception):
    """Raised by a `ReferenceModel.linear_observer` that has all it needs from
    a window: `DecoderModel.block_each` ends that window's pass there (its
    result is None) and goes on with the others."""


def map_in_order(fn: Callable[[_T], _R], items: Sequence[_T], threads: int) -> Iterator[_R]:
    """``fn`` of each item, yielded in order, computed on up to ``threads``
    threads with at most ``threads`` results waiting (a window's logits are
    the largest array of a pass, so they are not all computed ahead)."""
    if threads <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="helix-window") as pool:
        pending = collections.deque(pool.submit(fn, item) for item in items[:threads])
        rest = iter(items[threads:])
        while pending:
            result = pending.popleft().result()
            nxt = next(rest, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result



@attrs.frozen
class LinearSpec:
    """One linear layer of a model, as `ReferenceModel.linear_specs` lists it.

    ``name`` is the source tensor name; ``out_features`` x ``in_features`` is
    the shape `linear` multiplies by (``y = x @ W.T``); ``transposed`` is True
    when the source stores the matrix ``[in, out]`` (GPT-2's Conv1D), so a
    codec that compressed the source rows compressed columns of ``W``;
    ``bias`` is the name of the bias tensor the model adds after `linear`,
    or None; ``tied_embedding`` marks an output head that is the token
    embedding matrix.
    """

    name: str
    out_features: int
    in_features: int
    transposed: bool = False
    bias: str | None = None
    tied_embedding: bool = False


# -- numerics -------------------------------------------------------------
# Every scalar below is float32: a Python or float64 scalar silently upcasts
# a float32 array to float64 and runs about 3x slower.


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (Llama): ``x / sqrt(mean(x^2) + eps) * w``."""
    var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32)
    return (x * (F32(1.0) / np.sqrt(var + F32(eps)))) * weight


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with biased variance, as torch computes it."""
    mean = np.mean(x, axis=-1, keepdims=True, dtype=F32)
    xc = x - mean
    var = np.mean(np.square(xc), axis=-1, keepdims=True, dtype=F32)
    return xc * (F32(1.0) / np.sqrt(var + F32(eps))) * weight + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (rows of all ``-inf`` are not expected)."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    e /= np.sum(e, axis=axis, keepdims=True, dtype=F32)
    return e


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax, float32 in and out."""
    m = np.max(x, axis=axis, keepdims=True)
    s = x - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True, dtype=F32))


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``; scipy's expit keeps float32 and never overflows."""
    return x * special.expit(x)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (GPT-2's ``gelu_new``)."""
    c = F32(np.sqrt(2.0 / np.pi))
    return F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``0.5 x (1 + erf(x / sqrt 2))`` (BERT's ``gelu``)."""
    return F32(0.5) * x * (F32(1.0) + special.erf(x * F32(1.0 / np.sqrt(2.0))))


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(x, F32(0.0))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": silu,
    "swish": silu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": gelu_erf,
    "relu": relu,
}


def activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The activation function of a config's ``hidden_act`` / ``activation_function``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ReferenceModelError(
            f"unsupported activation {name!r} (supported: {', '.join(sorted(ACTIVATIONS))})"
        ) from None


def as_token_array(token_ids: Iterable[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """Token ids as a 1-D int64 array, checked against the vocabulary."""
    ids = np.asarray(token_ids if isinstance(token_ids, np.ndarray) else list(token_ids), dtype=np.int64)
    if ids.ndim != 1:
        raise ReferenceModelError(f"token_ids must be one sequence (1-D), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ReferenceModelError(
            f"token id out of range: ids span [{int(ids.min())}, {int(ids.max())}], vocabulary has {vocab_size}"
        )
    return ids


# -- the model base -------------------------------------------------------


class ReferenceModel(abc.ABC):
    """Float32 weights by source name, and the pluggable `linear`.

    Subclasses set ``config`` (a frozen attrs class) and fill ``weights``
    (name -> float32 array, linear matrices ``[out, in]``) and ``_specs``.
    """

    config: Any

    def __init__(self) -> None:
        #: BLAS threads during a forward pass (None: the process setting).
        self.blas_threads: int | None = DEFAULT_BLAS_THREADS
        self.weights: dict[str, np.ndarray] = {}
        self._specs: dict[str, LinearSpec] = {}
        self._linear_overrides: dict[str, LinearFn] = {}
        #: Called as ``observer(name, x)`` with every linear layer's input
        #: (the engine collects layer statistics this way); None: nobody listens.
        self.linear_observer: Callable[[str, np.ndarray], None] | None = None

    # -- linear layers ----------------------------------------------------
    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x [T, in] @ W.T -> [T, out]`` for the layer stored under ``name``
        (the bias, if any, is added by the caller), or the replacement set by
        `set_linear`."""
        if self.linear_observer is not None:
            self.linear_observer(name, x)
        fn = self._linear_overrides.get(name)
        if fn is not None:
            y = fn(x)
            if y.dtype != F32:
                y = y.astype(F32)
            return y
        return x @ self.weights[name].T

    def set_linear(self, name: str, fn: LinearFn | None) -> None:
        """Replace the matrix product of layer ``name`` by ``fn(x) -> y``
        (``x [T, in]`` float32, ``y [T, out]``, bias excluded); None restores
        the dense product."""
        if name not in self._specs:
            raise ReferenceModelError(f"{name!r} is not a linear layer of this model (see linear_specs())")
        if fn is None:
            self._linear_overrides.pop(name, None)
        else:
            self._linear_overrides[name] = fn

    def linear_specs(self) -> list[LinearSpec]:
        """Every linear layer `linear` is called with, in forward order."""
        return list(self._specs.values())

    def _add_linear(self, spec: LinearSpec) -> None:
        w = self.weights
        shape = tuple(w.shapes[spec.name]) if isinstance(w, LazyWeights) else w[spec.name].shape
        if shape != (spec.out_features, spec.in_features):
            raise ReferenceModelError(
                f"tensor {spec.name!r} has shape {shape} after loading; the model needs "
                f"{(spec.out_features, spec.in_features)}"
            )
        self._specs[spec.name] = spec

    @property
    def n_parameters(self) -> int:
        """Number of weights held (tied matrices counted once)."""
        seen: set[int] = set()
        n = 0
        for w in self.weights.values():
            if id(w) not in seen:
                seen.add(id(w))
                n += w.size
        return n


def gather_weights(
    names: Iterable[str],
    provider: WeightProvider,
    overrides: Mapping[str, np.ndarray] | None,
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Read every named tensor as float32, from ``overrides`` when present,
    else from ``provider``; each must have the shape the model expects."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if overrides is not None and name in overrides:
            arr = overrides[name]
        else:
            arr = provider(name)
        arr = np.ascontiguousarray(arr, dtype=F32)
        want = shapes.get(name)
        if want is not None and arr.shape != tuple(want):
            raise ReferenceModelError(
                f"tensor {name!r} has shape {arr.shape}, the model expects {tuple(want)}"
            )
        out[name] = arr
    return out


class LazyWeights(dict):
    """Weights read on first use and released on request, so a model runs
    one block at a time with only that block's matrices in memory.

    ``name in weights`` answers from the known shapes, not from what is
    loaded; `release` drops loaded arrays (they are read again if needed).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], provider: WeightProvider,
                 overrides: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.shapes = dict(shapes)
        self._provider = provider
        self._overrides = overrides
        # Windows run on several threads; a source's reader is not made for concurrent reads.
        self._read_lock = threading.Lock()

    def __missing__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        with self._read_lock:
            if dict.__contains__(self, name):  # another thread read it meanwhile
                return dict.__getitem__(self, name)
            arr = gather_weights([name], self._provider, self._overrides, self.shapes)[name]
            self[name] = arr
        return arr

    def __contains__(self, name: object) -> bool:
        return name in self.shapes

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[name] if name in self.shapes else default

    def release(self, names: Iterable[str]) -> None:
        """Forget the loaded arrays of ``names``."""
        for name in names:
            dict.pop(self, name, None)


class KVCache:
    """Keys and values of every layer for one sequence, grown in place.

    ``k[i]``/``v[i]`` are ``[n_kv_heads, capacity, head_dim]``; ``length`` is
    the number of positions filled. Capacity doubles when exceeded, so a long
    teacher-forced run in chunks copies each position O(1) times.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int = 256):
        self.n_layers = n_layers
        self.length = 0
        self._shape = (n_kv_heads, head_dim)
        self.k = [np.empty((n_kv_heads, capacity, head_dim), F32) for _ in range(n_layers)]
        self.v = [np.empty((n_kv_heads, capacity, head_dim), F32) for _ in range(n_layers)]

    @property
    def capacity(self) -> int:
        """Positions that fit before the next reallocation."""
        return self.k[0].shape[1]

    def store(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write ``k, v [kv_heads, T, d]`` at ``start``; return the views of
        positions ``[0, start + T)``. The caller advances ``length`` once all
        layers have stored."""
        end = start + k.shape[1]
        if end > self.capacity:
            cap = max(end, 2 * self.capacity)
            for lst in (self.k, self.v):
                for i, a in enumerate(lst):
                    b = np.empty((a.shape[0], cap, a.shape[2]), F32)
                    b[:, : self.length] = a[:, : self.length]
                    lst[i] = b
        self.k[layer][:, start:end] = k
        self.v[layer][:, start:end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]


def causal_mask(start: int, t: int, s: int, window: int | None = None) -> np.ndarray | None:
    """Additive mask for queries at positions ``start..start+t-1`` over keys
    ``0..s-1``: ``-inf`` on keys in the future (and, with a sliding
    ``window``, on keys ``window`` or more positions back), else 0.

    The mask covers the last columns only, ``[t, s - first]``, where every
    key before ``first`` is visible to every query (without a window, the
    whole cached prefix): `attention` adds it to the trailing key columns.
    None if nothing is masked (a single new token without a window).
    """
    first = 0 if window is not None else min(start, s)
    q = np.arange(start, start + t)[:, None]
    k = np.arange(first, s)[None, :]
    bad = k > q
    if window is not None:
        bad |= k <= q - window
    if not bad.any():
        return None
    return np.where(bad, F32(-np.inf), F32(0.0)).astype(F32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, scale: float) -> np.ndarray:
    """Grouped-query scaled dot-product attention.

    ``q [Hq, T, d]``, ``k, v [Hkv, S, d]`` with ``Hq`` a multiple of ``Hkv``
    (query head ``h`` reads KV head ``h // (Hq // Hkv)``, as Hugging Face's
    repeat_kv does); ``mask [T, S']`` additive on the last ``S' <= S`` key
    columns (see `causal_mask`). Returns ``[T, Hq * d]``.
    """
    hq, t, d = q.shape
    hkv = k.shape[0]
    g = hq // hkv
    # Query heads of one group share a KV head: stack them along the rows so
    # one batched matmul per KV head does the work, no repeated K/V copies.
    # The scale goes on q ([T, d]), not on the far larger score matrix.
    qg = (q * F32(scale)).reshape(hkv, g * t, d)
    scores = np.matmul(qg, k.transpose(0, 2, 1))
    if mask is not None:
        width = mask.shape[-1]
        tail = scores.reshape(hkv, g, t, -1)[..., -width:]
        tail += mask
    # Softmax in place (the score matrix is the largest temporary); the
    # normalisation is applied to the [T, d] output instead of [T, S] scores.
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    denom = np.sum(scores, axis=-1, keepdims=True, dtype=F32)
    out = np.matmul(scores, v)  # [Hkv, g*t, d]
    out /= denom
    return out.reshape(hq, t, d).transpose(1, 0, 2).reshape(t, hq * d)


class DecoderModel(ReferenceModel):
    """A causal language model: ``forward(token_ids) -> logits [T, vocab]``.

    Subclasses implement `new_cache`, `_embed`, `_block` and `_final`; this
    class runs them over chunks with a KV cache, so any number of positions
    is computed exactly as one full-context pass would (teacher forcing),
    with attention memory bounded by ``chunk_size`` x context.
    """

    #: Positions computed per chunk by `forward` (bounds the score matrices).
    default_chunk_size = 512

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Rows of the output head."""

    @property
    @abc.abstractmethod
    def n_layers(self) -> int:
        """Number of transformer blocks."""

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model accepts, or None if unbounded."""
        return None

    @abc.abstractmethod
    def new_cache(self) -> KVCache:
        """An empty KV cache for one sequence."""

    @abc.abstractmethod
    def _embed(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Input embeddings ``[T, hidden]`` of tokens at positions ``start...``."""

    @abc.abstractmethod
    def _block(self, layer: int, h: np.ndarray, start: int, cache: KVCache) -> np.ndarray:
        """One transformer block on ``h [T, hidden]`` (stores its K/V in ``cache``)."""

    @abc.abstractmethod
    def _final(self, h: np.ndarray) -> np.ndarray:
        """Final norm and output head: ``[T, hidden] -> logits [T, vocab]``."""

    # -- block at a time (the engine's steps) ------------------------------
    def block_tensors(self, layer: int) -> list[str]:
        """Names of the tensors block ``layer`` reads (subclasses that support
        block-at-a-time calibration override this)."""
        raise ReferenceModelError(f"{type(self).__name__} does not list its blocks' tensors")

    def embed_windows(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings ``[B, T, hidden]`` of independent windows ``ids [B, T]``."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.stack([self._embed(as_token_array(row, self.vocab_size), 0) for row in ids])

    def block_windows(self, layer: int, h: np.ndarray) -> np.ndarray:
        """Block ``layer`` on every window of ``h [B, T, hidden]`` (each
        window from position 0, its own KV cache); returns the new states."""
        out = np.empty_like(h)
        self.block_each(layer, list(h), out=out)
        return out

    def block_each(self, layer: int, hs: Sequence[np.ndarray], out: np.ndarray | None = None) -> list[np.ndarray]:
        """Block ``layer`` on each window ``[T_i, hidden]`` of ``hs`` (lengths
        may differ; each from position 0 with its own KV cache), the windows
        spread over `window_threads` threads (see `_window_threads`); a window
        whose observer raised `StopWindow` gives None. With
        ``out`` (equal lengths), window ``i``'s states go to ``out[i]`` as it
        finishes, and ``out``'s rows are returned: no second copy."""

        def run(i: int) -> np.ndarray | None:
            try:
                y = self._block(layer, hs[i], 0, self.new_cache())
            except StopWindow:
                return None
            if out is None:
                return y
            out[i] = y
            return out[i]

        threads = self._window_threads(len(hs))
        if threads == 1:
            with blas_threads(self.blas_threads):
                return [run(i) for i in range(len(hs))]

        def one(i: int) -> np.ndarray:
            _window.index = i
            try:
                return run(i)
            except BaseException:
                abort = getattr(self.linear_observer, "abort", None)
                if abort is not None:  # windows after this one may be waiting for its statistics
                    abort()
                raise
            finally:
                del _window.index

        with blas_threads(1):
            return list(map_in_order(one, range(len(hs)), threads))

    def head_window(self, h: np.ndarray) -> np.ndarray:
        """Final norm and head of one window ``h [T, hidden]`` -> logits ``[T, vocab]``."""
        with blas_threads(self.blas_threads):
            return self._final(h)

    def head_each(self, hs: Sequence[np.ndarray], then: Callable[[int, np.ndarray], Any] | None = None) -> Iterator[Any]:
        """Logits ``[T_i, vocab]`` of each window's last states, in order,
        computed on `window_threads` threads with at most that many held;
        with ``then``, ``then(i, logits)`` of window ``i`` instead, run on the
        same thread (so a window's scoring overlaps the next one's head)."""
        threads = self._window_threads(len(hs))

        def one(i: int) -> Any:
            logits = self._final(hs[i])
            return logits if then is None else then(i, logits)

        with blas_threads(1 if threads > 1 else self.blas_threads):
            yield from map_in_order(one, range(len(hs)), threads)

    def _window_threads(self, n: int) -> int:
        """Threads for ``n`` windows: `window_threads`, but one while a layer
        is replaced (compiled kernels split their own rows over threads) or
        observed by an observer that does not sum in window order itself
        (``window_ordered``, see `current_window`)."""
        observer = self.linear_observer
        if n < 2 or self._linear_overrides or (observer is not None and not getattr(observer, "window_ordered", False)):
            return 1
        return min(n, window_threads())

    def run(
        self, token_ids: Iterable[int] | np.ndarray, cache: KVCache, *, return_hidden: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Append ``token_ids`` to the sequence in ``cache`` in one step;
        return their logits and (if asked) hidden states."""
        with blas_threads(self.blas_threads):
            return self._run(token_ids, cache, return_hidden=return_hidden)

    def _run(
        self, token_ids: Iterable[int] | np.ndarray, cache: KVCache, *, return_hidden: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        ids = as_token_array(token_ids, self.vocab_size)
        start = cache.length
        if self.max_positions is not None and start + ids.size > self.max_positions:
            raise ReferenceModelError(
                f"sequence of {start + ids.size} positions is longer than the model's {self.max_positions}"
            )
        h = self._embed(ids, start)
        hidden = [h] if return_hidden else None
        for layer in range(self.n_layers):
            h = self._block(layer, h, start, cache)
            if hidden is not None:
                hidden.append(h)
        cache.length = start + ids.size
        return self._final(h), hidden

    def iter_forward(
        self,
        token_ids: Iterable[int] | np.ndarray,
        *,
        chunk_size: int | None = None,
        window: int | None = None,
        return_hidden: bool = False,
    ) -> Iterator[tuple[int, np.ndarray, list[np.ndarray] | None]]:
        """Teacher-forced pass in chunks: yields ``(start, logits [t, vocab],
        hidden)`` per chunk of at most ``chunk_size`` positions (default
        512), so a caller can stream thousands of positions without holding
        every logit.

        Without ``window`` every position attends to all earlier ones (full
        context through the KV cache; the result equals one full pass). With
        ``window=W`` the sequence is cut into independent windows of ``W``
        tokens, each starting from an empty cache (as llama.cpp's perplexity
        does with its context size): attention costs stay bounded, at the
        price of less context at the start of each window.
        """
        ids = as_token_array(token_ids, self.vocab_size)
        size = int(chunk_size or self.default_chunk_size)
        if size < 1:
            raise ReferenceModelError(f"chunk_size must be >= 1, got {size}")
        if window is not None and window < 1:
            raise ReferenceModelError(f"window must be >= 1, got {window}")
        span = int(window) if window else max(ids.size, 1)
        for w_start in range(0, ids.size, span):
            cache = self.new_cache()
            w_end = min(w_start + span, ids.size)
            for start in range(w_start, w_end, size):
                logits, hidden = self.run(ids[start : min(start + size, w_end)], cache, return_hidden=return_hidden)
                yield start, logits, hidden

    def forward(
        self,
        token_ids: Iterable[int] | np.ndarray,
        *,
        return_hidden: bool = False,
        chunk_size: int | None = None,
        window: int | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Logits ``[T, vocab]`` (float32) of every position, causal.

        With ``return_hidden=True`` returns ``(logits, hidden)`` where
        ``hidden`` has ``n_layers + 1`` arrays ``[T, hidden_size]``: the
        input embeddings, then the output of each block (before the final
        norm). Long inputs run in chunks of ``chunk_size`` positions (default
        512) with a KV cache; the result equals one full pass. ``window``:
        see `iter_forward`.
        """
        ids = as_token_array(token_ids, self.vocab_size)
        if ids.size == 0:
            raise ReferenceModelError("token_ids is empty")
        # Filled chunk by chunk: no second copy of a [T, vocab] array.
        logits = np.empty((ids.size, self.vocab_size), F32)
        hidden: list[np.ndarray] | None = None
        for start, part, hs in self.iter_forward(ids, chunk_size=chunk_size, window=window, return_hidden=return_hidden):
            logits[start : start + part.shape[0]] = part
            if hs is not None:
                if hidden is None:
                    hidden = [np.empty((ids.size,) + h.shape[1:], F32) for h in hs]
                for dst, h in zip(hidden, hs):
                    dst[start : start + h.shape[0]] = h
        if not return_hidden:
            return logits
        assert hidden is not None
        return logits, hidden

    def generate(
        self,
        prompt_ids: Iterable[int] | np.ndarray,
        max_new_tokens: int,
        *,
        eos_id: int | Iterable[int] | None = None,
    ) -> list[int]:
        """Greedy continuation with a KV cache: the new token ids (the prompt
        excluded), stopping after ``max_new_tokens`` or at ``eos_id`` (which
        is included in the result)."""
        ids = as_token_array(prompt_ids, self.vocab_size)
        if ids.size == 0:
            raise ReferenceModelError("generate needs a non-empty prompt")
        stops = set() if eos_id is None else ({int(eos_id)} if isinstance(eos_id, (int, np.integer)) else set(map(int, eos_id)))
        cache = self.new_cache()
        out: list[int] = []
        with blas_threads(self.blas_threads):
            logits, _ = self._run(ids, cache)
            for _ in range(int(max_new_tokens)):
                nxt = int(np.argmax(logits[-1]))
                out.append(nxt)
                if nxt in stops:
                    break
                if self.max_positions is not None and cache.length >= self.max_positions:
                    logger.warning("generation stopped at the model's %d positions", self.max_positions)
                    break
                logits, _ = self._run(np.array([nxt]), cache)
        return out


class EncoderModel(ReferenceModel):
    """A bidirectional encoder: ``forward(token_ids) -> hidden [T, hidden]``
    and a pooled, normalized sentence embedding."""

    @abc.abstractmethod
    def forward(
        self,
        token_ids: Iterable[int] | np.ndarray,
        *,
        token_type_ids: Iterable[int] | np.ndarray | None = None,
        return_hidden: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Last hidden states ``[T, hidden]``; with ``return_hidden`` also the
        embeddings and each layer's output (``n_layers + 1`` arrays)."""

    @abc.abstractmethod
    def sentence_embedding(self, token_ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """One ``[hidden]`` float32 vector for the sequence."""
