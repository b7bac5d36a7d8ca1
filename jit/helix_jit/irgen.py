"""A tiny text LLVM IR builder for the built-in kernels (no llvmlite needed).

Loop counters and accumulators live in ``alloca`` slots declared in the
entry block; LLVM's SROA/mem2reg (run by O3) promotes them to registers, which
keeps the emitters free of phi bookkeeping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence


def vec(ty: str, n: int) -> str:
    return ty if n == 1 else f"<{n} x {ty}>"


def fconst(x: float, ty: str = "float") -> str:
    """An exact IR literal for a float/double (hex form of the double)."""
    import struct

    if ty == "float":
        import numpy as np

        x = float(np.float32(x))  # a float literal must be exactly representable
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", float(x)))[0]


class Fn:
    """Builds one function: ``Fn("name", [("ptr", "x"), ("i64", "n")])``."""

    def __init__(self, name: str, params: Sequence[tuple[str, str]]):
        self.name = name
        self.params = params
        self.allocas: list[str] = []
        self.body: list[str] = []
        self._n = 0
        self.decls: set[str] = set()

    def tmp(self, prefix: str = "t") -> str:
        self._n += 1
        return f"%{prefix}{self._n}"

    def label(self, prefix: str = "L") -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def v(self, text: str) -> str:
        r = self.tmp()
        self.body.append(f"  {r} = {text}")
        return r

    def do(self, text: str) -> None:
        self.body.append(f"  {text}")

    def place(self, label: str) -> None:
        self.body.append(f"{label}:")

    def br(self, label: str) -> None:
        self.do(f"br label %{label}")

    def var(self, ty: str, init: str | None = None) -> str:
        self._n += 1
        slot = f"%s{self._n}"
        self.allocas.append(f"  {slot} = alloca {ty}, align 64")
        if init is not None:
            self.do(f"store {ty} {init}, ptr {slot}")
        return slot

    def load(self, ty: str, ptr: str, align: int = 1) -> str:
        return self.v(f"load {ty}, ptr {ptr}, align {align}")

    def store(self, ty: str, val: str, ptr: str, align: int = 1) -> None:
        self.do(f"store {ty} {val}, ptr {ptr}, align {align}")

    def gep(self, ety: str, ptr: str, idx: str) -> str:
        return self.v(f"getelementptr inbounds {ety}, ptr {ptr}, i64 {idx}")

    def splat(self, ety: str, n: int, scalar: str) -> str:
        if n == 1:
            return scalar
        a = self.v(f"insertelement <{n} x {ety}> poison, {ety} {scalar}, i32 0")
        return self.v(f"shufflevector <{n} x {ety}> {a}, <{n} x {ety}> poison, <{n} x i32> zeroinitializer")

    def const_vec(self, ety: str, values: Sequence[str]) -> str:
        if len(values) == 1:
            return values[0]
        return "<" + ", ".join(f"{ety} {v}" for v in values) + ">"

    def declare(self, text: str) -> None:
        self.decls.add(text)

    @contextlib.contextmanager
    def loop(self, start: str, end: str, step: int | str = 1) -> Iterator[str]:
        """``for (i = start; i < end; i += step)``; yields the i64 value of i."""
        slot = self.var("i64", start)
        head, body, done = self.label("head"), self.label("body"), self.label("done")
        self.br(head)
        self.place(head)
        i = self.load("i64", slot, 8)
        c = self.v(f"icmp slt i64 {i}, {end}")
        self.do(f"br i1 {c}, label %{body}, label %{done}")
        self.place(body)
        yield i
        i2 = self.load("i64", slot, 8)
        i3 = self.v(f"add nsw i64 {i2}, {step}")
        self.store("i64", i3, slot, 8)
        self.br(head)
        self.place(done)

    def render(self) -> str:
        params = ", ".join(f"{t} {'noalias ' if t == 'ptr' else ''}%{n}" for t, n in self.params)
        out = list(sorted(self.decls))
        out.append(f"define void @{self.name}({params}) nounwind {{")
        out.append("entry:")
        out.extend(self.allocas)
        out.extend(self.body)
        out.append("  ret void")
        out.append("}")
        return "\n".join(out) + "\n"
