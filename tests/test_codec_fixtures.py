"""Backward compatibility of the shipped codecs' encoded formats, and the
`helix_framework.testing` helpers that plugins use for their own.

Each fixture under tests/fixtures/codecs/<codec>/ was written once by
`testing.write_codec_fixture` (64 x 32 standard-normal rows, seed 2024); a
later version must still decode it to the rows stored beside the codes.
"""

from pathlib import Path

import numpy as np
import pytest

from helix_framework import testing
from helix_framework.codec import CodecState, Codes
from helix_framework.host import Host

FIXTURES = Path(__file__).parent / "fixtures" / "codecs"
ROWS = np.random.default_rng(5).standard_normal((48, 24)).astype(np.float32)


@pytest.mark.parametrize("codec", ["rtn", "campq"])
def test_shipped_codecs_decode_their_committed_fixtures(codec):
    (path,) = sorted((FIXTURES / codec).glob("*.safetensors"))
    rows = testing.check_codec_fixture(Host().codec(codec), path)
    assert rows.shape == (64, 32) and np.isfinite(rows).all()


def test_fixture_check_fails_when_the_format_changes(tmp_path):
    rtn = Host().codec("rtn")
    path = testing.write_codec_fixture(rtn, rtn.Params(bits=4, group_size=8), ROWS, tmp_path)
    testing.check_codec_fixture(rtn, path)

    class ScaleTwice(type(rtn)):  # a "new version" that reads the scales differently
        def decode(self, state, codes):
            return super().decode(state, Codes({**codes.arrays, "scales": codes.arrays["scales"] * 2}, codes.meta))

    with pytest.raises(AssertionError, match="no longer gives the rows it stored"):
        testing.check_codec_fixture(ScaleTwice(), path)


@pytest.mark.parametrize("name,params", [
    ("rtn", {"bits": 3, "group_size": 8}),
    ("passthrough", {}),
    ("campq", {"subspaces": 3, "centroids": 4, "row_scale": True, "allow_starved": True}),
])
def test_artifact_round_trip_of_builtins(tmp_path, name, params):
    codec = Host().codec(name)
    out = testing.check_codec_artifact_round_trip(codec, codec.Params(**params), ROWS, tmp_path)
    assert out.shape == ROWS.shape


def test_artifact_round_trip_catches_state_that_is_not_stored(tmp_path):
    rtn = Host().codec("rtn")

    class Forgetful(type(rtn)):  # keeps a Python object in meta, which no artifact can hold
        def fit(self, rows, params, rng):
            state = super().fit(rows, params, rng)
            return CodecState(state.arrays, {**state.meta, "lookup": object()})

    with pytest.raises(AssertionError, match="not JSON-safe"):
        testing.check_codec_artifact_round_trip(Forgetful(), rtn.Params(), ROWS, tmp_path)


AXPB_IR = """
define void @axpb(ptr noalias %x, ptr noalias %y, i64 %n) {{
entry:
  br label %head
head:
  %i = phi i64 [0, %entry], [%i1, %body]
  %more = icmp slt i64 %i, %n
  br i1 %more, label %body, label %done
body:
  %px = getelementptr float, ptr %x, i64 %i
  %v = load float, ptr %px
  %m = fmul float %v, {a}
  %r = fadd float %m, 1.0
  %py = getelementptr float, ptr %y, i64 %i
  store float %r, ptr %py
  %i1 = add i64 %i, 1
  br label %head
done:
  ret void
}}"""


def _axpb(name, a_in_ir):
    from helix_jit import LaneWidth, declare_kernel

    def reference(lane_width, constants, x, y, n):
        y[:n] = np.float32(2.0) * x[:n] + np.float32(1.0)

    return declare_kernel(name, "1", [LaneWidth.F32x16], lambda lw, c: AXPB_IR.format(a=a_in_ir), reference,
                          argtypes=["f32*", "f32*", "i64"], entry="axpb")


def test_kernel_check_compares_compiled_and_reference():
    x = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    args = lambda: [x.copy(), np.zeros(37, np.float32), 37]  # noqa: E731
    (y,) = testing.check_kernel(_axpb("helix_tests.axpb_right", "2.0"), "F32x16", {}, args, outputs=[1])
    assert np.array_equal(y, np.float32(2.0) * x + np.float32(1.0))
    with pytest.raises(AssertionError, match=r"axpb_wrong.*argument 1 differs from the reference at 37 element"):
        testing.check_kernel(_axpb("helix_tests.axpb_wrong", "3.0"), "F32x16", {}, args, outputs=[1])
