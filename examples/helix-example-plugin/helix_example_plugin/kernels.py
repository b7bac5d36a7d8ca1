"""A plugin's own hot loop: the mean absolute value of every row, emitted as
LLVM IR over ``<16 x float>`` vectors and compiled, cached and disabled by
helix-jit exactly like the built-in kernels."""

from __future__ import annotations

import numpy as np

from helix_jit import LaneWidth, declare_kernel

LANES = 16


def emit(lane_width: LaneWidth, constants: dict) -> str:
    d = int(constants["d"])
    d_vec = d - d % LANES  # whole vectors; the rest is a scalar tail
    return f"""
declare <16 x float> @llvm.fabs.v16f32(<16 x float>)
declare float @llvm.fabs.f32(float)
declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)

define void @row_abs_mean(ptr noalias %x, ptr noalias %out, i64 %n) {{
entry:
  br label %row_head
row_head:
  %i = phi i64 [0, %entry], [%i1, %row_end]
  %more = icmp slt i64 %i, %n
  br i1 %more, label %row_body, label %done
row_body:
  %base = mul i64 %i, {d}
  br label %vec_head
vec_head:
  %j = phi i64 [0, %row_body], [%j1, %vec_body]
  %acc = phi <16 x float> [zeroinitializer, %row_body], [%acc1, %vec_body]
  %vmore = icmp slt i64 %j, {d_vec}
  br i1 %vmore, label %vec_body, label %tail_start
vec_body:
  %off = add i64 %base, %j
  %p = getelementptr float, ptr %x, i64 %off
  %v = load <16 x float>, ptr %p, align 4
  %a = call <16 x float> @llvm.fabs.v16f32(<16 x float> %v)
  %acc1 = fadd <16 x float> %acc, %a
  %j1 = add i64 %j, {LANES}
  br label %vec_head
tail_start:
  %s0 = call float @llvm.vector.reduce.fadd.v16f32(float 0.0, <16 x float> %acc)
  br label %tail_head
tail_head:
  %k = phi i64 [{d_vec}, %tail_start], [%k1, %tail_body]
  %s = phi float [%s0, %tail_start], [%s1, %tail_body]
  %tmore = icmp slt i64 %k, {d}
  br i1 %tmore, label %tail_body, label %row_end
tail_body:
  %toff = add i64 %base, %k
  %tp = getelementptr float, ptr %x, i64 %toff
  %tv = load float, ptr %tp, align 4
  %ta = call float @llvm.fabs.f32(float %tv)
  %s1 = fadd float %s, %ta
  %k1 = add i64 %k, 1
  br label %tail_head
row_end:
  %mean = fdiv float %s, {float(d)!r}
  %po = getelementptr float, ptr %out, i64 %i
  store float %mean, ptr %po, align 4
  %i1 = add i64 %i, 1
  br label %row_head
done:
  ret void
}}
"""


def reference(lane_width: LaneWidth, constants: dict, x: np.ndarray, out: np.ndarray, n: int) -> None:
    """The same sums in the same order: 16 lane-wise partial sums, reduced in
    lane order, then the scalar tail."""
    d = int(constants["d"])
    d_vec = d - d % LANES
    a = np.abs(x.reshape(-1, d)[:n])
    acc = np.zeros((n, LANES), np.float32)
    for j in range(0, d_vec, LANES):
        acc += a[:, j : j + LANES]
    s = np.zeros(n, np.float32)
    for lane in range(LANES):
        s += acc[:, lane]
    for k in range(d_vec, d):
        s += a[:, k]
    out[:n] = s / np.float32(d)


ROW_ABS_MEAN = declare_kernel(
    "helix_example_plugin.row_abs_mean", "1", [LaneWidth.F32x16], emit, reference,
    argtypes=["f32*", "f32*", "i64"], entry="row_abs_mean",
)


def row_abs_mean(rows: np.ndarray) -> np.ndarray:
    """Mean |w| of every row (float32), through the compiled kernel."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    out = np.empty(rows.shape[0], np.float32)
    ROW_ABS_MEAN.get(LaneWidth.F32x16, d=rows.shape[1])(rows, out, rows.shape[0])
    return out
