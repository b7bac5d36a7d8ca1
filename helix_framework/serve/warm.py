"""Warm state of `helix serve`: what a second request on a model does not reload.

Per model: the open source, its tokenizer, every tensor dequantized to
float32 once (a candidate is the reference with some matrices replaced, so
building it from these skips the dequantization), and the reference model
built lazily for completions. Per model and prompt set: the reference's
outputs for token agreement (`agree.WarmReference`). Per model and
calibration windows: the reference's blocks on them (`engine.ReferenceBlocks`).
Per candidate job: the model carrying its
reconstructed matrices, for completions. Entries are counted by the bytes
of their arrays and evicted least recently used first once the total passes
the budget; an entry in use by a running job is kept alive by that job's
reference, eviction only drops the cache's.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from helix_framework.errors import HelixError

log = logging.getLogger(__name__)

DEFAULT_BUDGET_MIB = 4096


class WarmModel:
    """One model's source, tokenizer and float32 tensors, loaded once."""

    def __init__(self, name: str, path: Path):
        from helix_framework.reference import load_tokenizer
        from helix_framework.sources import open_source

        self.name, self.path = name, path
        self.source = open_source(path)
        self.tokenizer = load_tokenizer(self.source)
        self.weights = {}
        for t in self.source.tensors():
            try:
                self.weights[t.name] = self.source.read(t.name)
            except HelixError:  # not a float tensor (e.g. position ids): the model reads it itself
                pass
        self._reference: Any = None
        self._lock = threading.Lock()

    def reference(self) -> Any:
        """The uncompressed numpy reference model (built on first use)."""
        with self._lock:
            if self._reference is None:
                self._reference = self.candidate({})
            return self._reference

    def candidate(self, replaced: dict[str, np.ndarray]) -> Any:
        """The reference architecture with ``replaced`` matrices."""
        from helix_framework.reference import load_model

        return load_model(self.source, weights={**self.weights, **replaced})

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.weights.values()) * (2 if self._reference is not None else 1)


class WarmState:
    """A byte-budgeted LRU of `WarmModel` and candidate models."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        # key -> (value, its size in bytes now: a model grows when its reference is built)
        self._entries: collections.OrderedDict[str, tuple[Any, Callable[[Any], int]]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Callable[[], Any], size: Callable[[Any], int]) -> tuple[Any, float]:
        """The entry for ``key`` (loaded by ``load`` on a miss) and the seconds spent loading."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0], 0.0
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one loader per key; others wait and then hit
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0], 0.0
            t0 = time.perf_counter()
            value = load()
            seconds = time.perf_counter() - t0
            with self._lock:
                self._entries[key] = (value, size)
                self._evict(keep=key)
        return value, seconds

    def _evict(self, keep: str) -> None:
        while self.used > self.budget and len(self._entries) > 1:
            oldest = next(k for k in self._entries if k != keep)
            log.info("warm state over budget: evicting %s", oldest)
            del self._entries[oldest]

    @property
    def used(self) -> int:
        return sum(size(value) for value, size in list(self._entries.values()))

    def model_names(self) -> list[str]:
        """The models held warm, as they were asked for (name or path)."""
        with self._lock:
            return [v.name for v, _ in self._entries.values() if isinstance(v, WarmModel)]

    def reference_blocks(self, key: str) -> Any:
        """The `engine.ReferenceBlocks` of one model on one set of calibration
        windows (``key``, from `engine.each_tensor`), kept across jobs."""
        from helix_framework.engine import ReferenceBlocks

        blocks, _ = self.get(f"blocks:{key}", ReferenceBlocks, lambda b: b.nbytes)
        return blocks

    def model(self, name: str) -> tuple[WarmModel, float]:
        """The warm model of ``name`` (an embedded name or a path)."""
        from helix_framework.models import resolve_model

        path = resolve_model(name).resolve()
        model, seconds = self.get(f"model:{path}", lambda: WarmModel(name, path), lambda m: m.nbytes)
        return model, seconds
