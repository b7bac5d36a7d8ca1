"""The row-count probe: in-sample versus held-out figures as the calibration
set grows (the published ICC 0.9998 was in-sample on 128 rows).

For each calibration size r, a codec is fitted on the first r rows of a
seeded permutation and measured on those rows (in-sample), on every other row
(held-out) and on all rows. With r below the centroid count every training
row can become its own centroid: the in-sample figure rises toward 1 while
the held-out one does not. That is how an in-sample ICC of 0.9998 was once
published for a codec whose honest held-out ICC was 0.2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from helix_framework.calibrate import RowSplit, fit_reconstruct, measure_splits, resolve, tensor_rng
from helix_framework.config import CandidateConfig
from helix_framework.engine import BlockStats, each_tensor
from helix_framework.errors import ConfigError
from helix_framework.routing import route_tensor
from helix_framework.models import resolve_model
from helix_framework.sources import open_source


@attrs.frozen
class ProbeRow:
    """One calibration size: its figures on training, held-out and all rows."""

    rows: int
    label: str
    centroids_capped_at: int | None
    training: dict[str, float]
    held_out: dict[str, float] | None
    all: dict[str, float]


def parse_rows(text: str) -> list[int | str]:
    """``"128,256,all"`` -> [128, 256, "all"]; raises ConfigError on junk."""
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ConfigError(f"--rows: {part!r} is neither a positive row count nor 'all'", path="--rows")
    return out


def _cap_centroids(params: Any, rows: int) -> tuple[Any, int | None]:
    """Cap every centroid count at ``rows`` as the published probe did, and
    allow starved codebooks (the probe measures exactly that condition)."""
    changes: dict[str, Any] = {}
    capped = None
    if getattr(params, "centroids", None) is not None and params.centroids > rows:
        changes["centroids"] = max(2, rows)
        capped = changes["centroids"]
    residual = getattr(params, "residual", None)
    if residual is not None and getattr(residual, "centroids", 0) > rows:
        changes["residual"] = attrs.evolve(residual, centroids=max(2, rows))
        capped = max(2, rows)
    if hasattr(params, "allow_starved"):
        changes["allow_starved"] = True
    return (attrs.evolve(params, **changes) if changes else params), capped


class _Found(Exception):
    def __init__(self, stats: BlockStats | None):
        self.stats = stats


def _layer_stats(source: Any, tensor: str, candidate: CandidateConfig) -> BlockStats | None:
    """The statistics of ``tensor``'s inputs for a data-aware candidate: the
    engine's block pass through the reference blocks, stopped at its block."""

    def handle(info: Any, stats: BlockStats | None) -> None:
        if info.name == tensor:
            raise _Found(stats)

    try:
        each_tensor(source, source.tensors(), attrs.evolve(candidate.calibration, propagate="reference"), handle,
                    wants_stats=lambda info: info.name == tensor)
    except _Found as found:
        return found.stats
    return None


def probe(model: str | Path, tensor: str, candidate: CandidateConfig, rows: list[int | str], host: Any = None) -> list[ProbeRow]:
    """Run the row-count probe on one tensor of ``model`` (a data-aware
    candidate fits with the statistics of the tensor's inputs, collected by
    the engine through the reference blocks before it; a config whose routes
    choose another candidate for the tensor probes that one)."""
    model = resolve_model(model)
    with open_source(model) as source:
        comp = resolve(candidate, host).for_tensor(tensor, source.n_blocks)
        candidate = comp.candidate
        info = source.tensor(tensor)
        decision = route_tensor(info.name, info.shape, candidate.routes)
        x = source.read(tensor)
        stats = _layer_stats(source, tensor, candidate) if candidate.calibration is not None else None
    x = x.reshape(decision.reshape or x.shape)
    if x.ndim != 2:
        raise ConfigError(f"tensor {tensor!r} has shape {tuple(info.shape)}; the probe needs a matrix", path="--tensor")
    n = x.shape[0]
    perm = np.random.default_rng(candidate.rows.seed).permutation(n)
    out = []
    for r in rows:
        r_eff = n if r == "all" else min(int(r), n)
        train = np.sort(perm[:r_eff])
        rest = np.sort(perm[r_eff:])
        params, capped = _cap_centroids(candidate.params, r_eff)
        fitted = fit_reconstruct(x, train, comp, params, tensor, tensor_rng(candidate.rows.seed, tensor),
                                 stats=stats.fit if stats is not None else None)
        split = RowSplit(n, train, rest if rest.size else train, candidate.rows.seed, in_sample=not rest.size)
        figures = measure_splits(x, fitted.reconstruction, split, comp.measurements, candidate.rows.seed, tensor,
                                 held_stats=stats.held_out if stats is not None else None)
        out.append(
            ProbeRow(
                rows=r_eff,
                label=str(r),
                centroids_capped_at=capped,
                training=figures["calibration"],
                held_out=figures.get("held_out") if rest.size >= 3 else None,
                all=figures["all"],
            )
        )
    return out
