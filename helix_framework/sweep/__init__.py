"""Sweeps: grids of candidates, run by a process pool or Ray, results in LanceDB.

A sweep file::

    name: wider_codebook_sweep
    model: smollm2                 # optional; --model overrides
    codec: campq
    grid:                          # every axis a list; the product is the sweep
      centroids: [256, 1024]
      residual.depth: [0, 1]       # dotted paths reach nested params
      rotation: [{kind: identity}, {kind: hadamard}]
      lane_width: [F32x16]
    fixed:                         # shared by every point
      subspace_dim: 8
      rows: {calibration: 384, measurement: 192, seed: 42}
    measure: [rel_l2, icc_3_1, token_agreement]
    tensors: "blk\\.(0|15|29)\\."  # optional regex subset
    agreement: {positions: 2000, window: 512}   # optional

Axis and fixed names are fields of the codec's params (``centroids``,
``residual``, ``residual.depth``, ...), or ``rotation``/``rows`` (and their
dotted sub-keys), or ``params`` itself. An axis value replaces whatever
``fixed`` holds at its path. Axis names are checked against the codec's
params schema before anything else; each point is then validated exactly
like a candidate config (`candidate_from_mapping`). The cardinality (product
of the axis lengths) is checked before any point is built: over
`MAX_POINTS` the sweep is refused.

Invalid points are reported with their reason and skipped (``strict``
refuses the whole sweep). Each valid point is a candidate keyed by the
SHA-256 of its config (minus name and notes), the tensor filter and the
agreement settings; a candidate whose summary row (status ok) exists for the
same model hash is skipped, so a sweep resumes where it stopped (a failed
candidate keeps its failed row and is tried again).

Executors: ``local`` (a spawn process pool with one worker per core) and
``ray`` (`ray.init(address=...)`, else a local instance without dashboard).
Workers calibrate one candidate at a time, one tensor at a time (all the
reconstructions of the selected tensors are kept only when token agreement is
measured), and return plain rows; the driver alone writes LanceDB. Workers
on one machine take a per-kernel file lock around the kernel cache lookup, so
each distinct kernel signature is compiled once per sweep even when two
workers need it at the same moment.
"""

from __future__ import annotations

from helix_framework.errors import SweepError, SweepTooLarge
from helix_framework.sweep.executors import RAY_LOCAL_ENV
from helix_framework.sweep.run import SweepSummary, model_hash_of, run_sweep
from helix_framework.sweep.spec import (
    MAX_POINTS,
    AgreementSettings,
    Point,
    SweepSpec,
    candidate_key,
    expand,
    flatten,
    iter_points,
    load_sweep,
    point_label,
    point_mapping,
    sweep_from_document,
    sweep_from_mapping,
)
from helix_framework.sweep.worker import run_candidate

__all__ = ["MAX_POINTS", "RAY_LOCAL_ENV", "AgreementSettings", "Point", "SweepError", "SweepSpec", "SweepSummary",
           "SweepTooLarge", "candidate_key", "expand", "flatten", "iter_points", "load_sweep", "model_hash_of",
           "point_label", "point_mapping", "run_candidate", "run_sweep", "sweep_from_document", "sweep_from_mapping"]
