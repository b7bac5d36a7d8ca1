"""The campq codec: product quantization of weight rows with residual stages.

Each row of a [n_rows, row_dim] matrix is cut into M subspaces (uneven
widths allowed, no column dropped); each sub-vector is replaced by the index
of its nearest centroid. Residual stages quantize what the stages before
them left over; decode sums the coded centroids of every stage.

Training (``fit``, calibration rows only) is `helix_framework.kmeans`:
seeded k-means++ then Lloyd to a tolerance, empty clusters re-seeded from
the largest one. Encode and decode run the ``helix_jit`` kernels
(``pq_assign``, ``pq_decode``) at ``params.lane_width``, so
``HELIX_JIT_DISABLE=1`` switches them to their numpy references.

The mistakes of the system this comes from (a CAM-PQ lab whose ICC was
measured on its own training rows) are
refused here: fewer than 39 training vectors per centroid raises
`CentroidStarved` unless ``allow_starved`` (then the tensor is flagged
``starved``); a codebook with fewer distinct training vectors than K holds
only the real centroids (``k_eff`` in the state meta), never zero-filled
ones; a row width that does not divide keeps every column.

State arrays (safetensors ``state.*``): ``stage{s}.codebook`` float32,
[k_eff_s, row_dim] for per-subspace codebooks (subspace m's codebook is its
column block) or [k_eff_s, w] for a shared one. With ``BF16x32`` the stored
values are already bfloat16-rounded (what the kernels use), and cost 16 bits
each. Codes arrays (``codes.*``): ``stage{s}`` [n_rows, M] uint8 (k_eff <=
256) or uint16, and ``row_scale`` float16 [n_rows] with ``row_scale``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

import helix_jit
from helix_codec_campq import __version__
from helix_codec_campq.params import CampqParams
from helix_codec_campq.search import beam_search, beam_step
from helix_framework.codec import BitsAccount, Codec, CodecState, Codes
from helix_framework.errors import CentroidStarved, ConfigError
from helix_framework.kmeans import FAISS_MIN_POINTS_PER_CENTROID, kmeans, kmeans_subspaces, weighted_lloyd
from helix_jit.lanes import LaneWidth

__all__ = ["CampqCodec", "subspace_widths"]

_F16_MAX = float(np.finfo(np.float16).max)


#: ``subspace_dim`` when a config gives neither it nor ``subspaces``.
DEFAULT_SUBSPACE_DIM = 8


def subspace_widths(params: CampqParams, row_dim: int) -> tuple[int, ...]:
    """The subspace widths of a row of ``row_dim`` weights under ``params``.

    ``subspaces``: ``helix_jit.split_widths`` (the first ``row_dim % M``
    subspaces one column wider). ``subspace_dim``: full subspaces of that
    width and, when it does not divide, one narrower last subspace. A shared
    codebook needs equal widths: anything else is a `ConfigError` naming the
    param to change.
    """
    d = int(row_dim)
    if params.subspaces is not None:
        M = int(params.subspaces)
        if M > d:
            raise ConfigError(
                f"{M} subspaces for rows of {d} weights: at most {d} (one weight per subspace)",
                path="$.params.subspaces",
            )
        widths = tuple(helix_jit.split_widths(d, M))
        if params.codebook == "shared" and len(set(widths)) > 1:
            raise ConfigError(
                f"codebook: shared needs equal subspace widths, but {d} weights do not split into {M} "
                f"equal subspaces (widths {sorted(set(widths))}); choose subspaces dividing {d} "
                f"or use subspace_dim",
                path="$.params.subspaces",
            )
        return widths
    w = int(params.subspace_dim or DEFAULT_SUBSPACE_DIM)
    if w > d:
        raise ConfigError(f"subspace_dim {w} exceeds the row width {d}", path="$.params.subspace_dim")
    full, rest = divmod(d, w)
    if rest and params.codebook == "shared":
        raise ConfigError(
            f"codebook: shared needs equal subspace widths, but subspace_dim {w} does not divide the row "
            f"width {d} (remainder {rest}); choose a subspace_dim dividing {d}",
            path="$.params.subspace_dim",
        )
    return (w,) * full + ((rest,) if rest else ())


def _round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = (b + (np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))) & np.uint32(0xFFFF0000)
    return r.view(np.float32)


def _rows_f32(rows: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise ValueError(f"campq {what}: expected 2-D rows [n_rows, row_dim]; got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"campq {what}: rows contain NaN or infinite values")
    return arr


def _row_scales(x: np.ndarray) -> np.ndarray:
    """float16 RMS of each row (saturating at the float16 maximum)."""
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=1))
    return np.minimum(rms, _F16_MAX).astype(np.float16)


def _normalize(x: np.ndarray, s16: np.ndarray) -> np.ndarray:
    # Divide by the float16 scale actually stored, so decode (times that
    # scale) is consistent. A row whose scale rounds to 0 in float16 (RMS
    # under ~3e-8) is coded as zeros: it decodes to zero.
    s = s16.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, x / s, np.float32(0))
    return np.ascontiguousarray(out, dtype=np.float32)


def _importance(stats: Any, d: int) -> np.ndarray | None:
    """Per-column weights from layer statistics: the Hessian diagonal over its
    mean, floored at 1e-6 (a dead input still gets a tiny weight so every
    centroid coordinate stays defined), or None without statistics."""
    if stats is None:
        return None
    diag = np.asarray(stats.diag, dtype=np.float64)
    if diag.shape != (d,):
        raise ValueError(f"campq: layer statistics are {diag.shape[0]}-wide but the rows are {d}-wide")
    mean = float(np.mean(diag)) if d else 0.0
    if not mean > 0:
        return np.ones(d)
    return np.maximum(diag / mean, 1e-6)


def _code_dtype(k_eff: int) -> type:
    return np.uint8 if k_eff <= 256 else np.uint16


#: Beams tried, in turn, for sub-vectors a plain search does not reproduce
#: exactly when encoding a matrix error feedback quantized (bound state).
_REPRODUCE_BEAMS = (4, 16, 64, 256)


class CampqCodec(Codec):
    """``campq``: product quantization of weight rows with residual stages.

    See the module docstring for the algorithm and the stored arrays.
    Bits: code bits = n_rows x sum over stages of M x ceil(log2(k_eff));
    overhead = codebook elements x (16 for BF16x32, else 32) + 16 per row
    with ``row_scale``.
    """

    name: ClassVar[str] = "campq"
    version: ClassVar[str] = __version__
    compressed_matmul: ClassVar[bool] = True
    Params: ClassVar[type] = CampqParams
    takes_stats: ClassVar[bool] = True
    quantizes_columns: ClassVar[bool] = True

    def validate(self, params: CampqParams) -> None:
        params.check()

    # -- fit -------------------------------------------------------------------

    def fit(
        self, rows: np.ndarray, params: CampqParams, rng: np.random.Generator, stats: Any = None
    ) -> CodecState:
        params.check()
        x = _rows_f32(rows, "fit")
        n, d = x.shape
        if n == 0:
            raise ValueError("campq fit: no calibration rows")
        widths = subspace_widths(params, d)
        M = len(widths)
        shared = params.codebook == "shared"
        lw = LaneWidth.parse(params.lane_width)
        flags: list[str] = []
        ks = [int(params.centroids)] + [int(params.residual.centroids)] * int(params.residual.depth)
        n_vec = n * M if shared else n
        for s, K in enumerate(ks):
            if n_vec < FAISS_MIN_POINTS_PER_CENTROID * K:
                if not params.allow_starved:
                    raise CentroidStarved(self._starved_message(s, K, n, n_vec, M, shared))
                if "starved" not in flags:
                    flags.append("starved")
        scales = _row_scales(x) if params.row_scale else None
        xn = _normalize(x, scales) if scales is not None else x
        weights = _importance(stats, d)
        beam = int(params.residual.beam)
        if weights is None and beam == 1:
            trained = self._fit_greedy(xn, ks, widths, shared, lw, params, rng)
        else:
            trained = self._fit_searched(xn, ks, widths, shared, lw, params, rng, weights, beam)
        arrays: dict[str, np.ndarray] = {}
        stage_meta: list[dict[str, Any]] = []
        for s, (K, (cbs, res, n_train)) in enumerate(zip(ks, trained)):
            arrays[f"stage{s}.codebook"] = np.ascontiguousarray(cbs[0] if shared else np.concatenate(cbs, axis=1))
            stage_meta.append(
                {
                    "centroids": K,
                    "k_eff": int(res.k_eff),
                    "training_vectors": int(n_train),
                    "vectors_per_centroid": round(n_train / res.k_eff, 3),
                    "iterations": list(res.iterations),
                    "converged": all(res.converged),
                    "reseeded": int(res.reseeded),
                    "inertia": float(sum(res.inertia)),
                }
            )
        meta = {
            "row_dim": int(d),
            "widths": list(widths),
            "subspaces": M,
            "codebook": params.codebook,
            "row_scale": bool(params.row_scale),
            "lane_width": lw.value,
            "calibration_rows": int(n),
            "stages": stage_meta,
            "flags": flags,
        }
        if beam > 1:
            meta["beam"] = beam
        if weights is not None:
            meta["weighted"] = True
        return CodecState(arrays=arrays, meta=meta)

    def _fit_greedy(self, xn, ks, widths, shared, lw, params, rng) -> list:
        """Data-free training with the kernels: each stage on the greedy residual."""
        n, M = xn.shape[0], len(widths)
        out, codebooks, codes = [], [], []
        target = xn
        for s, K in enumerate(ks):
            if s > 0:
                # residual of the calibration rows after the stages so far, as
                # decode will produce it at this lane width
                target = xn - helix_jit.pq_decode(codes, codebooks, lw)
            if shared:
                res = kmeans(target.reshape(n * M, widths[0]), K, rng, max_iter=params.max_iter, tol=params.tol)
            else:
                res = kmeans_subspaces(target, widths, K, rng, max_iter=params.max_iter, tol=params.tol)
            cbs = [_round_bf16(c) if lw is LaneWidth.BF16x32 else c for c in res.centroids]
            stage_cbs = [cbs[0]] * M if shared else cbs
            codebooks.append(stage_cbs)
            out.append((stage_cbs, res, n * M if shared else n))
            if s + 1 < len(ks):
                if lw in (LaneWidth.F32x16, LaneWidth.F64x8):
                    # the last Lloyd assignment already holds these centroids' codes
                    codes.append(res.codes.reshape(n, M))
                else:
                    codes.append(self._train_assign(target, stage_cbs, widths, shared, lw))
        return out

    def _fit_searched(self, xn, ks, widths, shared, lw, params, rng, weights, beam) -> list:
        """Training with importance weights and/or a beam (numpy, float64 search).

        Each stage trains on the residuals of every kept partial encoding
        (n x beam vectors, as FAISS's ResidualQuantizer). Per-subspace
        codebooks weight a column by scaling it with sqrt(weight) for
        k-means and unscaling the centroids; a shared codebook, whose
        sub-vectors come from columns of different weight, refines its
        k-means centroids with weighted Lloyd steps.
        """
        n, M = xn.shape[0], len(widths)
        bounds = np.cumsum([0] + list(widths))
        parts = [xn[:, bounds[m] : bounds[m + 1]].astype(np.float64) for m in range(M)]
        wparts = None if weights is None else [weights[bounds[m] : bounds[m + 1]] for m in range(M)]
        if shared:  # one group of n x M sub-vectors, weights tiled per subspace
            groups = [np.concatenate(parts, axis=0)]
            gweights = None if wparts is None else [np.repeat(np.stack(wparts), n, axis=0)]
        else:
            groups = parts
            gweights = None if wparts is None else [np.broadcast_to(wp, (n, wp.size)) for wp in wparts]
        resid = [g[:, None, :] for g in groups]
        # one parent per vector before the first stage: its own norm is a
        # constant there, and beam_step returns exact errors afterwards
        errs = [np.zeros((g.shape[0], 1)) for g in groups]
        out = []
        for s, K in enumerate(ks):
            flat = [r.reshape(-1, r.shape[2]) for r in resid]
            if shared:
                train = flat[0].astype(np.float32)
                res = kmeans(train, K, rng, max_iter=params.max_iter, tol=params.tol)
                cbs = list(res.centroids)
                if gweights is not None:
                    reps = resid[0].shape[1]
                    cbs = [weighted_lloyd(train, np.repeat(gweights[0], reps, axis=0), cbs[0],
                                          max_iter=params.max_iter, tol=params.tol)]
            else:
                scale = [np.ones(f.shape[1]) if wparts is None else np.sqrt(wparts[m]) for m, f in enumerate(flat)]
                train = np.concatenate([f * sc for f, sc in zip(flat, scale)], axis=1).astype(np.float32)
                res = kmeans_subspaces(train, widths, K, rng, max_iter=params.max_iter, tol=params.tol)
                cbs = [(c / sc).astype(np.float32) for c, sc in zip(res.centroids, scale)]
            cbs = [_round_bf16(c) if lw is LaneWidth.BF16x32 else np.ascontiguousarray(c, np.float32) for c in cbs]
            stage_cbs = [cbs[0]] * M if shared else cbs
            out.append((stage_cbs, res, flat[0].shape[0]))
            if s + 1 < len(ks):
                for g in range(len(groups)):
                    a = None if gweights is None else gweights[g]
                    _, _, resid[g], errs[g] = beam_step(resid[g], errs[g], stage_cbs[g], beam, a)
        return out

    @classmethod
    def _train_assign(cls, target, cbs, widths, shared, lw: LaneWidth) -> np.ndarray:
        """Training-time codes that build residual targets, when the stored
        codebooks differ from k-means' own (bfloat16-rounded, or a uint8 grid).

        BF16x32: float32 search with the float64 tie rule on the rounded
        values (what the kernels use), so a JIT run and a reference run agree
        on the residuals the next stage trains on; U8x64 is exact integer
        math already and its uint8 grid changes which centroid wins, so it is
        kept.
        """
        if lw is LaneWidth.U8x64:
            return cls._assign(target, cbs, widths, shared, lw)
        return cls._assign(target, cbs, widths, shared, LaneWidth.F32x16, exact=True)

    @staticmethod
    def _starved_message(s: int, K: int, n: int, n_vec: int, M: int, shared: bool) -> str:
        stage = "base stage" if s == 0 else f"residual stage {s}"
        what = (f"{n} calibration rows x {M} subspaces = {n_vec} sub-vectors (shared codebook)" if shared
                else f"{n} calibration rows (one training vector per row and subspace)")
        need = FAISS_MIN_POINTS_PER_CENTROID * K
        fits = n_vec // FAISS_MIN_POINTS_PER_CENTROID
        return (
            f"campq {stage}: {what} for {K} centroids is {n_vec / K:.1f} per centroid, below the "
            f"{FAISS_MIN_POINTS_PER_CENTROID} FAISS requires (at least {need} training vectors): the codebook "
            f"would memorise the calibration rows. Fix: more calibration rows (rows.calibration), at most "
            f"{fits} centroids ({'params.centroids' if s == 0 else 'params.residual.centroids'}), "
            f"codebook: shared with a small subspace_dim, or allow_starved: true to run anyway "
            f"(the tensor is flagged 'starved')"
        )

    # -- encode / decode --------------------------------------------------------

    @staticmethod
    def _assign(
        target: np.ndarray, cbs: list[np.ndarray], widths: tuple[int, ...], shared: bool, lw: LaneWidth,
        exact: bool = False,
    ) -> np.ndarray:
        n, M = target.shape[0], len(widths)
        if shared:
            # one codebook for every subspace: assign the n x M sub-vectors in one call
            flat = np.ascontiguousarray(target).reshape(n * M, widths[0])
            return helix_jit.pq_assign(flat, [cbs[0]], lw, exact=exact).reshape(n, M)
        return helix_jit.pq_assign(np.ascontiguousarray(target), cbs, lw, exact=exact)

    @staticmethod
    def _stage_codebooks(state: CodecState) -> list[list[np.ndarray]]:
        meta = state.meta
        widths = list(meta["widths"])
        out = []
        for s in range(len(meta["stages"])):
            cb = np.asarray(state.arrays[f"stage{s}.codebook"], dtype=np.float32)
            if meta["codebook"] == "shared":
                out.append([cb] * len(widths))
            else:
                bounds = np.cumsum([0] + widths)
                out.append([np.ascontiguousarray(cb[:, bounds[m]:bounds[m + 1]]) for m in range(len(widths))])
        return out

    def encode(self, state: CodecState, rows: np.ndarray, stats: Any = None) -> Codes:
        meta = state.meta
        x = _rows_f32(rows, "encode")
        n, d = x.shape
        if d != meta["row_dim"]:
            raise ValueError(f"campq state was fitted on rows of width {meta['row_dim']}; got width {d}")
        lw = LaneWidth(meta["lane_width"])
        widths = tuple(meta["widths"])
        shared = meta["codebook"] == "shared"
        bound = "bound_rows" in meta
        if bound and n != meta["bound_rows"]:
            raise ValueError(f"campq state is bound to a matrix of {meta['bound_rows']} rows; got {n} rows")
        arrays: dict[str, np.ndarray] = {}
        s16 = None
        if meta["row_scale"]:
            s16 = np.asarray(state.arrays["row_scale"]) if bound else _row_scales(x)
            arrays["row_scale"] = s16
        xn = _normalize(x, s16) if s16 is not None else x
        cbs = self._stage_codebooks(state)
        weights = None if bound else _importance(stats, d)
        beam = int(meta.get("beam", 1))
        if bound:
            codes = self._reproduce(x, xn, s16, cbs, widths, shared, lw)
        elif weights is None and beam == 1:
            codes = []
            target = xn
            for s in range(len(cbs)):
                if s > 0:
                    target = xn - helix_jit.pq_decode(codes, cbs[:s], lw)
                codes.append(self._assign(target, cbs[s], widths, shared, lw))
        else:
            codes = self._search(xn, cbs, widths, shared, beam, weights)
        for s, c in enumerate(codes):
            arrays[f"stage{s}"] = c
        return Codes(arrays=arrays)

    def _search(self, xn, cbs, widths, shared, beam, weights, only=None) -> list[np.ndarray]:
        """Beam-searched codes per stage [n, M] (numpy, float64 distances).

        ``only``: optional [n, M] mask; the other sub-vectors are not searched
        (their codes are left 0 for the caller to fill).
        """
        n, M, S = xn.shape[0], len(widths), len(cbs)
        out = np.zeros((n, M, S), dtype=np.int64)
        bounds = np.cumsum([0] + list(widths))
        for m in range(M):
            rows = np.arange(n) if only is None else np.flatnonzero(only[:, m])
            if rows.size == 0:
                continue
            cols = slice(bounds[m], bounds[m + 1])
            if shared and only is None and m > 0:
                break  # shared: every subspace went in one search below
            if shared and only is None:
                flat = xn.reshape(n * M, widths[0])
                wts = None if weights is None else np.tile(weights.reshape(M, widths[0]), (n, 1))
                out[:] = beam_search(flat, [cb[0] for cb in cbs], beam, wts).reshape(n, M, S)
                continue
            wts = None if weights is None else weights[cols]
            out[rows, m] = beam_search(xn[rows, cols], [cb[m] for cb in cbs], beam, wts)
        return [out[:, :, s].astype(_code_dtype(cbs[s][0].shape[0])) for s in range(S)]

    def _reproduce(self, x, xn, s16, cbs, widths, shared, lw) -> list[np.ndarray]:
        """Codes that decode to ``x`` exactly, for a matrix error feedback built
        from this codec's grid: a greedy search, then wider beams for the
        sub-vectors whose decode still differs (a greedy re-encoding of a sum
        of residual centroids need not find that sum again)."""
        codes = self._search(xn, cbs, widths, shared, 1, None)
        bounds = np.cumsum([0] + list(widths))
        for beam in (None,) + _REPRODUCE_BEAMS:
            if beam is not None:
                found = self._search(xn, cbs, widths, shared, beam, None, only=wrong)
                for s in range(len(codes)):
                    codes[s] = np.where(wrong, found[s], codes[s])
            y = helix_jit.pq_decode(codes, cbs, lw)
            if s16 is not None:
                y *= s16.astype(np.float32)[:, None]
            diff = y != x
            wrong = np.stack([diff[:, bounds[m] : bounds[m + 1]].any(axis=1) for m in range(len(widths))], axis=1)
            if not wrong.any() or len(cbs) == 1:
                break
        return codes

    def decode(self, state: CodecState, codes: Codes) -> np.ndarray:
        meta = state.meta
        cbs = self._stage_codebooks(state)
        stage_codes = [np.asarray(codes.arrays[f"stage{s}"]) for s in range(len(cbs))]
        out = helix_jit.pq_decode(stage_codes, cbs, LaneWidth(meta["lane_width"]))
        if meta["row_scale"]:
            out *= np.asarray(codes.arrays["row_scale"]).astype(np.float32)[:, None]
        return out

    def matmul(self, state: CodecState, codes: Codes, x: np.ndarray, params: Any) -> np.ndarray:
        """The encoded matrix times ``x`` [row_dim, T] through `helix_jit.adc_matvec`:
        per subspace, a lookup table of codeword . x (quantized to uint8 or int8
        per ``params.distance``), summed over stages and scaled per row."""
        cbs = self._stage_codebooks(state)
        stage_codes = [np.ascontiguousarray(codes.arrays[f"stage{s}"]) for s in range(len(cbs))]
        scale = np.asarray(codes.arrays["row_scale"]).astype(np.float32) if state.meta["row_scale"] else None
        xt = np.ascontiguousarray(x, dtype=np.float32)
        return helix_jit.adc_matvec(stage_codes, cbs, xt, params.distance, params.lane_width, row_scale=scale)

    # -- error feedback ----------------------------------------------------------

    def bind_rows(self, state: CodecState, rows: np.ndarray, stats: Any = None) -> CodecState:
        """``state`` plus the rows' float16 scales (``row_scale``) and, with
        statistics, the column importance the assignment weighs by."""
        x = _rows_f32(rows, "bind_rows")
        if x.shape[1] != state.meta["row_dim"]:
            raise ValueError(f"campq state was fitted on rows of width {state.meta['row_dim']}; got width {x.shape[1]}")
        arrays = dict(state.arrays)
        if state.meta["row_scale"]:
            arrays["row_scale"] = _row_scales(x)
        weights = _importance(stats, x.shape[1])
        if weights is not None:
            arrays["importance"] = weights
        return CodecState(arrays=arrays, meta={**state.meta, "bound_rows": int(x.shape[0])})

    def column_atom(self, state: CodecState) -> int:
        """One subspace: error feedback needs every subspace equally wide."""
        widths = list(state.meta["widths"])
        if len(set(widths)) > 1:
            raise ConfigError(
                f"error feedback quantizes one subspace of columns at a time and needs equal subspace widths; "
                f"these rows split into widths {sorted(set(widths))}: choose subspaces or subspace_dim dividing "
                f"the row width {state.meta['row_dim']}",
                path="$.params",
            )
        return int(widths[0])

    def quantize_columns(self, state: CodecState, values: np.ndarray, start: int) -> np.ndarray:
        meta = state.meta
        if "bound_rows" not in meta:
            raise ValueError("campq quantize_columns needs the state bind_rows returned")
        w = self.column_atom(state)
        m = int(start) // w
        v = np.ascontiguousarray(values, dtype=np.float32)
        s16 = np.asarray(state.arrays["row_scale"]) if meta["row_scale"] else None
        vn = _normalize(v, s16) if s16 is not None else v
        cbs = [cb[m] for cb in self._stage_codebooks(state)]
        weights = state.arrays.get("importance")
        codes = beam_search(vn, cbs, int(meta.get("beam", 1)), None if weights is None else weights[m * w : (m + 1) * w])
        stage_codes = [codes[:, s : s + 1].astype(_code_dtype(cb.shape[0])) for s, cb in enumerate(cbs)]
        out = helix_jit.pq_decode(stage_codes, [[cb] for cb in cbs], LaneWidth(meta["lane_width"]))
        if s16 is not None:
            out *= s16.astype(np.float32)[:, None]
        return out

    # -- bits -------------------------------------------------------------------

    def bits(self, state: CodecState, n_rows: int, row_dim: int) -> BitsAccount:
        meta = state.meta
        n_rows, row_dim = int(n_rows), int(row_dim)
        M = int(meta["subspaces"])
        code_bits = n_rows * sum(M * math.ceil(math.log2(st["k_eff"])) for st in meta["stages"])
        per_elem = 16 if meta["lane_width"] == LaneWidth.BF16x32.value else 32
        elements = sum(int(a.size) for key, a in state.arrays.items() if key.endswith(".codebook"))
        return BitsAccount.of(n_rows * row_dim, code_bits, codebooks=elements * per_elem,
                              row_scales=16 * n_rows if meta["row_scale"] else 0)
