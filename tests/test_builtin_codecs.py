"""Built-in codecs, rotation and compressor, and the conformance helpers."""

from __future__ import annotations

import math

import attrs
import cattrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helix_framework import testing
from helix_framework.builtins import (
    BUILTIN_CODECS,
    BUILTIN_COMPRESSORS,
    BUILTIN_ROTATIONS,
    IdentityRotation,
    PassthroughCodec,
    PassthroughParams,
    RtnCodec,
    RtnParams,
    TruncateCompressor,
)
from helix_framework.builtins.codecs import RTN_BITS
from helix_framework.codec import Codes, NoParams
from helix_framework.params import ParamError
from helix_framework.measure.stats import rel_l2
from helix_jit.lanes import LaneWidth

RTN = RtnCodec()
PASS = PassthroughCodec()


def normal_rows(n, d, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal((n, d))).astype(np.float32)


def round_trip(codec, params, rows, seed=0):
    state = codec.fit(rows, params, np.random.default_rng(seed))
    codes = codec.encode(state, rows)
    return state, codes, codec.decode(state, codes)


def test_builtin_sets():
    assert [c.name for c in BUILTIN_CODECS] == ["passthrough", "rtn"]
    assert [r.name for r in BUILTIN_ROTATIONS] == ["identity"]
    assert [c.name for c in BUILTIN_COMPRESSORS] == ["truncate"]


# ---------------------------------------------------------------- passthrough


def test_passthrough_is_bit_exact_including_odd_values():
    rows = normal_rows(8, 33)
    rows[0, :4] = [-0.0, np.finfo(np.float32).tiny / 8, np.finfo(np.float32).max, -1e-45]
    y = testing.check_codec_round_trip(PASS, PassthroughParams(), rows, exact=True)
    assert y.tobytes() == rows.tobytes()


def test_passthrough_codes_do_not_alias_the_input():
    rows = normal_rows(4, 8)
    state, codes, y = round_trip(PASS, PassthroughParams(), rows)
    rows[:] = 0
    assert np.any(codes.arrays["rows"]) and np.any(y)


def test_passthrough_bits_are_the_stored_float32():
    state, _, _ = round_trip(PASS, PassthroughParams(), normal_rows(3, 10))
    acct = PASS.bits(state, 3, 10)
    assert (acct.n_weights, acct.code_bits, acct.overhead_bits) == (30, 960, 0)
    assert acct.total_bpw == 32.0


# ---------------------------------------------------------------- rtn accuracy


def test_rtn_int8_per_row_error_matches_uniform_quantization_noise():
    # Each row's step is max|w|/127; uniform rounding noise has variance
    # step^2/12, so the pooled relative L2 is predicted by
    # sqrt(sum_rows d * step_r^2 / 12 / sum w^2). On N(0,1) rows of 576
    # (max|w| about 3.2) that is about 3.2 / (127 sqrt 12) = 0.0073.
    rows = normal_rows(64, 576, seed=1)
    _, _, y = round_trip(RTN, RtnParams(bits=8), rows)
    err = rel_l2(rows, y)
    step = np.abs(rows.astype(np.float64)).max(axis=1) / 127
    predicted = math.sqrt(np.sum(576 * step**2 / 12) / np.sum(rows.astype(np.float64) ** 2))
    assert 0.9 * predicted < err < 1.1 * predicted
    assert 0.005 < err < 0.01


def test_rtn_lower_bits_cost_accuracy():
    rows = normal_rows(32, 128, seed=2)
    errs = [rel_l2(rows, round_trip(RTN, RtnParams(bits=b), rows)[2]) for b in (8, 4, 3, 2)]
    assert errs == sorted(errs) and errs[-1] < 1.0


def grid_rows(n, d, g, bits, symmetric, seed=0):
    """Rows whose every group of g sits exactly on an RTN grid with float16
    scale (and minimum), with the extreme codes present so RTN finds that grid."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for r in range(n):
        for start in range(0, d, g):
            width = min(g, d - start)
            s = np.float32(np.float16(rng.uniform(0.002, 0.05)))
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                q = rng.integers(-qmax, qmax + 1, size=width)
                q[0] = qmax if rng.random() < 0.5 else -qmax
                out[r, start : start + width] = q.astype(np.float32) * s
            else:
                qmax = 2**bits - 1
                m = np.float32(np.float16(rng.normal(0.0, 0.2)))
                q = rng.integers(0, qmax + 1, size=width)
                q[0] = 0
                if width > 1:
                    q[1] = qmax
                out[r, start : start + width] = m + q.astype(np.float32) * s
    return out


@pytest.mark.parametrize("d", [96, 80])  # 80: the last group of each row has 16
def test_rtn_int4_g32_asymmetric_is_exact_on_its_grid(d):
    rows = grid_rows(16, d, 32, bits=4, symmetric=False)
    params = RtnParams(bits=4, group_size=32, symmetric=False)
    testing.check_codec_round_trip(RTN, params, rows, exact=True)
    _, codes, _ = round_trip(RTN, params, rows)
    assert codes.arrays["q"].dtype == np.uint8 and codes.arrays["q"].max() == 15
    assert codes.arrays["scales"].dtype == np.float16 and codes.arrays["zeros"].dtype == np.float16
    assert codes.arrays["scales"].shape == (16, math.ceil(d / 32))


def test_rtn_int4_g32_symmetric_is_exact_on_its_grid():
    rows = grid_rows(8, 70, 32, bits=4, symmetric=True)
    testing.check_codec_round_trip(RTN, RtnParams(bits=4, group_size=32), rows, exact=True)


def test_rtn_decode_needs_only_the_stored_arrays():
    # The artifact (int codes + float16 scales) reproduces decode exactly.
    rows = normal_rows(6, 50, seed=4)
    params = RtnParams(bits=3, group_size=16, symmetric=False)
    state, codes, y = round_trip(RTN, params, rows)
    stored = Codes(arrays={k: np.frombuffer(v.tobytes(), dtype=v.dtype).reshape(v.shape) for k, v in codes.arrays.items()})
    np.testing.assert_array_equal(RTN.decode(state, stored), y)


def test_rtn_zero_and_constant_rows():
    rows = np.zeros((3, 40), dtype=np.float32)
    rows[1] = 0.75
    for symmetric in (True, False):
        _, _, y = round_trip(RTN, RtnParams(bits=4, group_size=16, symmetric=symmetric), rows)
        np.testing.assert_array_equal(y[0], 0.0)
        np.testing.assert_allclose(y[1], 0.75, rtol=1e-3)


def test_rtn_rejects_bad_input():
    state = RTN.fit(normal_rows(2, 8), RtnParams(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="width 8"):
        RTN.encode(state, normal_rows(2, 9))
    with pytest.raises(ValueError, match="non-finite"):
        RTN.encode(state, np.full((2, 8), np.nan, dtype=np.float32))


# ---------------------------------------------------------------- bits


def bpw(params, n, d):
    state = RTN.fit(normal_rows(2, d), params, np.random.default_rng(0))
    return RTN.bits(state, n, d)


def test_rtn_bits_per_weight():
    assert bpw(RtnParams(bits=8), 10, 576).total_bpw == pytest.approx(8 + 16 / 576, rel=1e-15)
    assert bpw(RtnParams(bits=4, group_size=32), 10, 576).total_bpw == 4.5
    assert bpw(RtnParams(bits=4, group_size=32, symmetric=False), 10, 576).total_bpw == 5.0
    acct = bpw(RtnParams(bits=3, group_size=32), 5, 80)  # 3 groups per row, the last of 16
    assert (acct.n_weights, acct.code_bits, acct.overhead_bits) == (400, 1200, 5 * 3 * 16)
    assert acct.code_bpw == 3.0


# ---------------------------------------------------------------- params


def test_rtn_params_validation():
    for bad in (1, 9, 16, 0, True, "8", 8.0):
        with pytest.raises(ParamError) as info:
            RtnParams(bits=bad)
        assert info.value.field == "bits"
    for bad in (0, -32, True, 3.5):
        with pytest.raises(ParamError) as info:
            RtnParams(group_size=bad)
        assert info.value.field == "group_size"
    with pytest.raises(ParamError):
        RtnParams(symmetric="yes")
    for bad in ("normal", "", None, 1):
        with pytest.raises(ParamError) as info:
            RtnParams(levels=bad)
        assert info.value.field == "levels"
    with pytest.raises(ValueError, match="unknown lane width"):
        RtnParams(lane_width="F16x8")
    assert RtnParams(lane_width="U8x64").lane_width is LaneWidth.U8x64


def test_params_metadata_marks_codegen_free_fields():
    assert attrs.fields(PassthroughParams).lane_width.metadata == {"codegen": False}
    assert all(f.metadata.get("codegen", True) for f in attrs.fields(RtnParams) if f.name != "clip")
    assert attrs.fields(RtnParams).clip.metadata == {"codegen": False}


def test_params_structure_from_config_mapping():
    params = cattrs.Converter().structure(
        {"bits": 4, "group_size": 32, "symmetric": False, "lane_width": "BF16x32"}, RtnParams
    )
    assert params == RtnParams(bits=4, group_size=32, symmetric=False, lane_width=LaneWidth.BF16x32)


@pytest.mark.parametrize(
    "params",
    [
        PassthroughParams(),
        PassthroughParams(lane_width="F64x8"),
        RtnParams(),
        RtnParams(bits=2, group_size=7, symmetric=False, lane_width="U8x64"),
        NoParams(),
    ],
)
def test_params_round_trip(params):
    testing.check_params_round_trip(params)


# ---------------------------------------------------------------- conformance of every built-in


CODEC_CASES = [
    (PASS, PassthroughParams(), None),
    (RTN, RtnParams(bits=8), 0.01),
    (RTN, RtnParams(bits=4, group_size=32), 0.12),
    (RTN, RtnParams(bits=4, group_size=32, symmetric=False), 0.12),
    (RTN, RtnParams(bits=3, group_size=20), 0.25),
    (RTN, RtnParams(bits=2, group_size=64, symmetric=False), 0.6),
]


@pytest.mark.parametrize("codec, params, bound", CODEC_CASES)
def test_codec_conformance(codec, params, bound):
    rows = normal_rows(24, 100, seed=6)
    testing.check_codec_round_trip(codec, params, rows, max_rel_l2=bound, exact=bound is None)
    testing.check_codec_deterministic(codec, params, rows, seed=3)
    testing.check_codec_bits(codec, params, rows)
    testing.check_params_round_trip(params)


def test_identity_rotation_conformance():
    rot = IdentityRotation()
    testing.check_rotation_invertible(rot, NoParams(), normal_rows(10, 17), atol=0.0, rtol=0.0)
    state = rot.fit(normal_rows(10, 17), NoParams(), np.random.default_rng(0))
    assert rot.overhead_bits(state) == 0


@pytest.mark.parametrize("text, target", [("hello world", 5), ("hello", 10), ("", 3), ("abc", 0), ("ü" * 9, 4)])
def test_truncate_conformance(text, target):
    result = testing.check_compressor(TruncateCompressor(), text, target)
    assert result.text == text[:target]
    assert (result.path, result.fell_back, result.reason) == ("truncate", False, None)


def test_truncate_rejects_a_negative_target():
    with pytest.raises(ValueError):
        TruncateCompressor().compress("abc", -1)


# ---------------------------------------------------------------- the helpers catch broken plugins


class _OffByOne(PassthroughCodec):
    name = "off_by_one"

    def decode(self, state, codes):
        return super().decode(state, codes) + np.float32(1)


class _Unseeded(PassthroughCodec):
    name = "unseeded"

    def fit(self, rows, params, rng):
        state = super().fit(rows, params, rng)
        return attrs.evolve(state, arrays={"noise": np.random.default_rng().standard_normal(3)})


class _Float64(PassthroughCodec):
    name = "float64"

    def decode(self, state, codes):
        return super().decode(state, codes).astype(np.float64)


def test_helpers_reject_broken_codecs():
    rows = normal_rows(4, 6)
    with pytest.raises(AssertionError, match="not bit-exact"):
        testing.check_codec_round_trip(_OffByOne(), PassthroughParams(), rows, exact=True)
    with pytest.raises(AssertionError, match="relative L2"):
        testing.check_codec_round_trip(_OffByOne(), PassthroughParams(), rows, max_rel_l2=0.1)
    with pytest.raises(AssertionError, match="same seed"):
        testing.check_codec_deterministic(_Unseeded(), PassthroughParams(), rows, seed=0)
    with pytest.raises(AssertionError, match="float32"):
        testing.check_codec_round_trip(_Float64(), PassthroughParams(), rows)
    with pytest.raises(AssertionError, match="expected its Params"):
        testing.check_codec_round_trip(RTN, PassthroughParams(), rows)


def test_helpers_reject_a_compressor_that_lies_about_its_ratio():
    class Liar(TruncateCompressor):
        name = "liar"

        def compress(self, text, target, content_type=None, question=None):
            return attrs.evolve(super().compress(text, target), ratio=0.5)

    with pytest.raises(AssertionError, match="ratio"):
        testing.check_compressor(Liar(), "abcdef", 2)


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 90),
    bits=st.sampled_from(RTN_BITS),
    group=st.one_of(st.none(), st.integers(1, 100)),
    symmetric=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_rtn_properties_on_random_shapes(n, d, bits, group, symmetric, scale, seed):
    rows = normal_rows(n, d, seed=seed, scale=scale)
    params = RtnParams(bits=bits, group_size=group, symmetric=symmetric)
    state, codes, y = round_trip(RTN, params, rows)
    g = group or d
    n_groups = math.ceil(d / g)
    q = codes.arrays["q"]
    assert y.shape == rows.shape and y.dtype == np.float32 and q.shape == rows.shape
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= qmax
    else:
        assert q.dtype == np.uint8 and int(q.max()) <= 2**bits - 1
    assert codes.arrays["scales"].shape == (n, n_groups)

    # Every weight is within half a step of its reconstruction, plus what
    # float16 rounding of the scale (and of the minimum) can add: 2^-11
    # relative, or below float16's normal range an absolute 2^-25 per unit
    # of code (a scale under 2^-25 rounds to zero).
    s = np.repeat(codes.arrays["scales"].astype(np.float64), g, axis=1)[:, :d]
    pad = n_groups * g - d
    padded = np.pad(np.abs(rows.astype(np.float64)), ((0, 0), (0, pad)), mode="edge")
    group_max = np.repeat(padded.reshape(n, n_groups, g).max(axis=2), g, axis=1)[:, :d]
    err = np.abs(rows.astype(np.float64) - y)
    qmax = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
    assert np.all(err <= 0.6 * s + 2**-9 * group_max + qmax * 2**-24)

    acct = RTN.bits(state, n, d)
    per_group = 16 if symmetric else 32
    assert (acct.code_bits, acct.overhead_bits) == (bits * n * d, per_group * n * n_groups)
    testing.check_codec_deterministic(RTN, params, rows, seed=seed)


# ---------------------------------------------------------------- rtn: bits 2..8, clip, error feedback


def _stats(d, seed=0):
    from helix_framework.layer_stats import LayerStats

    x = np.random.default_rng(seed).standard_normal((500, d)) * np.linspace(0.1, 4.0, d)
    return LayerStats(hessian=x.T @ x, n_tokens=500)


def test_rtn_every_bit_width_from_2_to_8_halves_the_error_per_bit():
    rows = normal_rows(32, 256, seed=11)
    errs = [rel_l2(rows, round_trip(RTN, RtnParams(bits=b, group_size=64, symmetric=False), rows)[2]) for b in range(2, 9)]
    ratios = [errs[i] / errs[i + 1] for i in range(len(errs) - 1)]
    assert all(1.7 < r < 2.3 for r in ratios[1:]), ratios  # 2 bits: only 4 levels, coarser still


def test_rtn_stats_without_clip_change_nothing():
    rows = normal_rows(16, 96, seed=12)
    params = RtnParams(bits=3, group_size=32, symmetric=False)
    state = RTN.fit(rows, params, np.random.default_rng(0), stats=_stats(96))
    with_stats = RTN.encode(state, rows, stats=_stats(96))
    without = RTN.encode(RTN.fit(rows, params, np.random.default_rng(0)), rows)
    for k in without.arrays:
        assert with_stats.arrays[k].tobytes() == without.arrays[k].tobytes()


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_clip_lowers_the_error_it_searches_for(symmetric):
    rows = normal_rows(64, 128, seed=13)
    rows[:, ::17] *= 4  # outliers: the full range wastes levels
    stats = _stats(128)
    plain = RtnParams(bits=3, group_size=32, symmetric=symmetric)
    clipped = RtnParams(bits=3, group_size=32, symmetric=symmetric, clip=True)
    e_plain = rel_l2(rows, round_trip(RTN, plain, rows)[2])
    e_clip = rel_l2(rows, round_trip(RTN, clipped, rows)[2])
    assert e_clip < 0.97 * e_plain
    # with statistics the search minimises the Hessian-weighted error instead
    state = RTN.fit(rows, clipped, np.random.default_rng(0), stats=stats)
    y_w = RTN.decode(state, RTN.encode(state, rows, stats=stats))
    y_u = round_trip(RTN, clipped, rows)[2]
    def weighted(y):
        return float(np.sum(stats.diag * np.square(rows - y, dtype=np.float64)))

    assert weighted(y_w) < weighted(y_u)  # per group the weighted pick is optimal on the grid
    # same format and bits as without clip
    assert RTN.bits(state, 64, 128) == RTN.bits(RTN.fit(rows, plain, np.random.default_rng(0)), 64, 128)


@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_gaussian_levels(symmetric):
    rows = normal_rows(64, 256, seed=21)
    errors = {}
    for levels in ("uniform", "gaussian"):
        params = RtnParams(bits=4, group_size=128, symmetric=symmetric, clip=True, levels=levels)
        state, codes, y = round_trip(RTN, params, rows)
        errors[levels] = rel_l2(rows, y)
        # same storage and bits; decode is the level of each code times the scale
        assert codes.arrays["q"].dtype == (np.int8 if symmetric else np.uint8)
        assert RTN.bits(state, 64, 256).total_bpw == (4.125 if symmetric else 4.25)
    # normal weights: Lloyd-Max levels cut the squared error by about a sixth at 4 bits
    assert errors["gaussian"] ** 2 < 0.9 * errors["uniform"] ** 2  # measured 0.80-0.85
    state = RTN.fit(rows, RtnParams(bits=3, symmetric=symmetric, levels="gaussian"), np.random.default_rng(0))
    codes = RTN.encode(state, rows)
    q = codes.arrays["q"].astype(int)
    values = np.unique(RTN.decode(state, codes) if symmetric else q)
    assert len(np.unique(q)) == (7 if symmetric else 8) and q.min() == (-3 if symmetric else 0)
    if symmetric:  # levels are odd-symmetric about zero: code 0 decodes to 0
        np.testing.assert_array_equal(RTN.decode(state, codes)[q == 0], 0.0)
    else:
        assert values[-1] == 7
    # a constant row (zero scale) decodes exactly
    flat = np.full((2, 16), 0.25, dtype=np.float32)
    st = RTN.fit(flat, RtnParams(bits=4, symmetric=False, levels="gaussian"), np.random.default_rng(0))
    np.testing.assert_allclose(RTN.decode(st, RTN.encode(st, flat)), flat, rtol=1e-3)


@pytest.mark.parametrize("clip", [False, True])
def test_rtn_bound_scales_reproduce_quantized_columns(clip):
    rows = normal_rows(12, 70, seed=14)
    params = RtnParams(bits=4, group_size=32, symmetric=False, clip=clip)
    state = RTN.fit(rows[:5], params, np.random.default_rng(0))  # fit on a few rows: rtn keeps no row data
    bound = RTN.bind_rows(state, rows, stats=_stats(70))
    assert RTN.column_atom(bound) == 1 and not state.arrays
    moved = rows + np.random.default_rng(1).normal(0, 0.3, rows.shape).astype(np.float32)
    cols = np.concatenate([RTN.quantize_columns(bound, moved[:, j : j + 1], j) for j in range(70)], axis=1)
    codes = RTN.encode(bound, cols)
    np.testing.assert_array_equal(RTN.decode(state, codes), cols)
    np.testing.assert_array_equal(codes.arrays["scales"], bound.arrays["scales"])
    # on the original rows the bound scales are the ones encode computes itself
    direct = RTN.encode(state, rows, stats=_stats(70))
    np.testing.assert_array_equal(RTN.encode(bound, rows).arrays["q"], direct.arrays["q"])
    with pytest.raises(ValueError, match="bound to a matrix of 12 rows"):
        RTN.encode(bound, rows[:3])
    with pytest.raises(ValueError, match="bind_rows"):
        RTN.quantize_columns(state, rows[:, :1], 0)


def test_identity_rotation_keeps_the_statistics():
    rows, x = normal_rows(8, 24, seed=15), np.random.default_rng(3).standard_normal((100, 24))
    assert IdentityRotation.orthogonal
    assert testing.check_rotation_stats(IdentityRotation(), NoParams(), rows, x, rtol=1e-9) > 0


def test_bits_account_names_its_overhead_parts():
    from helix_framework.codec import BitsAccount

    rtn = RtnCodec()
    rows = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    state = rtn.fit(rows, RtnParams(bits=4, group_size=32, symmetric=False), np.random.default_rng(0))
    acct = rtn.bits(state, 10, 64)
    assert acct.overhead_parts == {"scales": 16 * 20, "zeros": 16 * 20} and acct.overhead_bits == 640
    assert acct.parts_bpw() == {"scales": 0.5, "zeros": 0.5}
    assert BitsAccount(100, 400, 50).parts_bpw() == {"overhead": 0.5}  # today's plugins: one unnamed part
    with pytest.raises(ValueError, match="do not add up"):
        BitsAccount(100, 400, 50, {"scales": 10})
