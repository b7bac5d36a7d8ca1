"""The LanceDB result tables of sweeps.

Two tables under one directory (``lancedb.connect(DIR)``):

- ``candidates``: one summary row per (candidate, model hash);
- ``tensors``: one row per (candidate, codec-routed tensor).

Both have fixed Arrow schemas (`CANDIDATE_SCHEMA`, `TENSOR_SCHEMA`), so
candidates of different codecs share a table: codec params are stored
flattened as JSON (``params``: ``{"centroids": 256, "residual.depth": 1,
...}``), the well-known figures as columns (held-out ``rel_l2`` and
``icc_3_1``, their in-sample ``calibration_*`` twins, ``bits_per_weight``,
``top1``/``top5``/``kl_mean``/``certified``), and every figure measured in
``metrics`` (JSON: held-out / calibration / all-rows means).

Writes are one ``add`` per table and candidate, tensor rows first and the
summary row last: a LanceDB ``add`` commits a new table version or nothing,
so a killed sweep never leaves a half-written row, and tensor rows whose
summary row is missing (the process died between the two adds) are deleted
by `ResultsDB.drop_orphans` when the sweep resumes. Only one process (the
sweep driver) writes, and `ResultsDB.locked` makes sure of it: a second
sweep on the same directory refuses while the first runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from helix_framework import outlock
from helix_framework.artifacts import make_output_dir

log = logging.getLogger(__name__)

CANDIDATES = "candidates"
TENSORS = "tensors"
#: `helix allocate`'s estimates: one row per (candidate, model, estimation windows) and tensor
ALLOCATIONS = "allocations"


def _schemas() -> tuple[Any, Any, Any]:
    import pyarrow as pa

    s, f, i, b, ts = pa.string(), pa.float64(), pa.int64(), pa.bool_(), pa.timestamp("us", tz="UTC")
    common = [
        ("candidate_key", s), ("sweep", s), ("candidate", s), ("run_id", s), ("time", ts),
        ("model_id", s), ("model_hash", s), ("kernel_signature", s),
    ]
    candidates = pa.schema(
        [pa.field(n, t) for n, t in common]
        + [pa.field(n, t) for n, t in [
            ("status", s), ("error", s),
            ("codec", s), ("codec_version", s), ("codec_distribution", s), ("codec_distribution_version", s),
            ("rotation", s), ("rotation_version", s), ("rotation_distribution", s),
            ("rotation_distribution_version", s),
            ("point", s), ("params", s), ("config", s),
            ("tensors", i), ("weights", i),
            ("bits_per_weight", f), ("code_bpw", f),
            ("rel_l2", f), ("icc_3_1", f), ("calibration_rel_l2", f), ("calibration_icc_3_1", f),
            ("in_sample", b), ("metrics", s), ("flags", s),
            ("positions", i), ("top1", f), ("top1_ci_low", f), ("top1_ci_high", f), ("top5", f),
            ("kl_mean", f), ("certified", b), ("agreement", s),
            ("seconds", f), ("calibrate_s", f), ("agree_s", f), ("fit_s", f), ("encode_s", f), ("decode_s", f),
            ("measure_s", f),
            ("kernels", s), ("kernels_compiled", i), ("kernels_from_cache", i),
        ]]
    )
    tensors = pa.schema(
        [pa.field(n, t) for n, t in common]
        + [pa.field(n, t) for n, t in [
            ("tensor", s), ("shape", s), ("n_rows", i), ("row_dim", i), ("n_calibration", i), ("n_held_out", i),
            ("rows", s),
            ("rel_l2", f), ("icc_3_1", f), ("calibration_rel_l2", f), ("calibration_icc_3_1", f),
            ("in_sample", b), ("metrics", s),
            ("bits_per_weight", f), ("code_bpw", f), ("overhead_bpw", f), ("rotation_bpw", f), ("total_bits", f),
            ("fit_s", f), ("encode_s", f), ("decode_s", f), ("measure_s", f), ("flags", s),
        ]]
    )
    allocations = pa.schema([pa.field(n, t) for n, t in [
        ("estimate_key", s), ("model_hash", s), ("candidate", s), ("candidate_file", s), ("tensor", s),
        ("weights", i), ("bits", i), ("block_kl", f), ("output_error", f), ("time", ts),
    ]])
    return candidates, tensors, allocations


def _schema(name: str) -> Any:
    candidates, tensors, allocations = _schemas()
    return {CANDIDATES: candidates, TENSORS: tensors, ALLOCATIONS: allocations}[name]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ResultsDB:
    """The two sweep tables under ``directory`` (created on first use)."""

    def __init__(self, directory: str | Path):
        import lancedb

        self.directory = Path(directory)
        make_output_dir(self.directory, " (a sweep --db is a directory of tables)")
        self._db = lancedb.connect(str(self.directory))

    @classmethod
    @contextlib.contextmanager
    def locked(cls, directory: str | Path) -> Iterator[ResultsDB]:
        """The tables of ``directory`` for writing, the directory locked
        against a second writer for the ``with`` block (`outlock`)."""
        db = cls(directory)
        with outlock.hold(db.directory, "sweep"):
            yield db

    def table(self, name: str) -> Any:
        return self._db.create_table(name, schema=_schema(name), exist_ok=True)

    def rows(self, name: str, columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
        table = self.table(name).to_arrow()
        if columns is not None:
            table = table.select(list(columns))
        return table.to_pylist()

    def done_keys(self, model_hash: str, *, ok_only: bool = True) -> set[str]:
        """Candidate keys with a summary row for this model (by default only
        rows with status ok: a failed candidate is tried again on resume, its
        failed row stays as history)."""
        return {r["candidate_key"] for r in self.rows(CANDIDATES, ["candidate_key", "model_hash", "status"])
                if r["model_hash"] == model_hash and (r["status"] == "ok" or not ok_only)}

    def drop_orphans(self, model_hash: str) -> int:
        """Delete tensor rows of this model whose candidate has no summary row
        (a sweep killed between its two adds). Returns how many went."""
        done = self.done_keys(model_hash, ok_only=False)
        orphans = sorted({r["candidate_key"] for r in self.rows(TENSORS, ["candidate_key", "model_hash"])
                          if r["model_hash"] == model_hash and r["candidate_key"] not in done})
        if not orphans:
            return 0
        table = self.table(TENSORS)
        before = table.count_rows()
        keys = ", ".join(_quote(k) for k in orphans)
        table.delete(f"model_hash = {_quote(model_hash)} AND candidate_key IN ({keys})")
        removed = before - table.count_rows()
        log.info("removed %d tensor rows of %d unfinished candidates", removed, len(orphans))
        return removed

    def write_candidate(self, tensor_rows: list[dict[str, Any]], summary_row: dict[str, Any]) -> None:
        """One add for the tensor rows, then one add for the summary row."""
        import pyarrow as pa

        if tensor_rows:
            self.table(TENSORS).add(pa.Table.from_pylist(tensor_rows, schema=_schema(TENSORS)))
        self.table(CANDIDATES).add(pa.Table.from_pylist([summary_row], schema=_schema(CANDIDATES)))


def loads(value: str | None) -> Any:
    """A JSON column back to Python (None stays None)."""
    return None if value is None else json.loads(value)
