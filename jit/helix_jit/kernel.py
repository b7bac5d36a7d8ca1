"""Declaring kernels: the one API used by built-in and plugin kernels alike.

A kernel is a name, a version, the lane widths it supports, a function that
emits LLVM IR (text) for a lane width and shape constants, a numpy reference
with the same calling convention, and the C signature of its entry point.

Example (a plugin's ``y = a * x + b`` over float32 rows)::

    import numpy as np
    from helix_jit import LaneWidth, declare_kernel

    def emit(lane_width, constants):
        d = constants["d"]           # baked in: LLVM can unroll over it
        return f'''
    define void @axpb(ptr noalias %x, ptr noalias %y, i64 %n, float %a, float %b) {{
    entry:
      %total = mul i64 %n, {d}
      br label %head
    head:
      %i = phi i64 [0, %entry], [%i1, %body]
      %more = icmp slt i64 %i, %total
      br i1 %more, label %body, label %done
    body:
      %px = getelementptr float, ptr %x, i64 %i
      %v = load float, ptr %px
      %m = fmul float %v, %a
      %r = fadd float %m, %b
      %py = getelementptr float, ptr %y, i64 %i
      store float %r, ptr %py
      %i1 = add i64 %i, 1
      br label %head
    done:
      ret void
    }}'''

    def reference(lane_width, constants, x, y, n, a, b):
        y[:n] = np.float32(a) * x[:n] + np.float32(b)

    axpb = declare_kernel("myplugin.axpb", "1", [LaneWidth.F32x16], emit, reference,
                          argtypes=["f32*", "f32*", "i64", "f32", "f32"], entry="axpb")
    fn = axpb.get("F32x16", d=64)    # compiled, cached in memory and on disk
    fn(x, y, len(x), 2.0, 1.0)       # numpy arrays for pointers; GIL released

``get`` returns the reference (bound to the lane width and constants) instead
when ``HELIX_JIT_DISABLE=1``, so callers never branch on it.

Argument types: ``"i8" "i16" "i32" "i64" "f32" "f64"`` (scalars) and
``"f32*" "f64*" "i8*" "u8*" "i16*" "u16*" "i32*" "u32*" "i64*"`` (C-contiguous
numpy arrays of that dtype, checked) or ``"ptr"`` (any array, or an int address).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from helix_jit import cache as _cache
from helix_jit.lanes import LaneWidth

_SCALARS = {
    "i8": ctypes.c_int8,
    "i16": ctypes.c_int16,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "f32": ctypes.c_float,
    "f64": ctypes.c_double,
}
_POINTERS = {
    "ptr": None,
    "f32*": "float32",
    "f64*": "float64",
    "i8*": "int8",
    "u8*": "uint8",
    "i16*": "int16",
    "u16*": "uint16",
    "i32*": "int32",
    "u32*": "uint32",
    "i64*": "int64",
}

_registry: dict[str, Kernel] = {}
_compile_lock = threading.Lock()


def jit_disabled() -> bool:
    """True when ``HELIX_JIT_DISABLE`` is set to a true value (numpy references run)."""
    return os.environ.get("HELIX_JIT_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def _to_address(value: Any, kind: str, index: int) -> int:
    if isinstance(value, int):
        return value
    want = _POINTERS[kind]
    if want is not None and str(value.dtype) != want:
        raise TypeError(f"argument {index}: expected {want} array, got {value.dtype}")
    if not value.flags.c_contiguous:
        raise ValueError(f"argument {index}: array must be C-contiguous")
    return value.ctypes.data


class CompiledKernel:
    """A callable entry point of a compiled kernel (holds its engine alive)."""

    def __init__(self, kernel: Kernel, lane_width: LaneWidth, constants: dict, signature: str, loaded: Any):
        self.kernel = kernel
        self.lane_width = lane_width
        self.constants = constants
        self.signature = signature
        self._loaded = loaded  # the engine owns the code: keep it referenced
        self.address = loaded.addresses[kernel.entry]
        types = [ctypes.c_void_p if t in _POINTERS else _SCALARS[t] for t in kernel.argtypes]
        # CFUNCTYPE (not PYFUNCTYPE) releases the GIL during the call, so
        # threads over row chunks run in parallel.
        self._fn = ctypes.CFUNCTYPE(None, *types)(self.address)
        self._kinds = kernel.argtypes

    def __call__(self, *args: Any) -> None:
        if len(args) != len(self._kinds):
            raise TypeError(f"{self.kernel.name}: expected {len(self._kinds)} arguments, got {len(args)}")
        conv = [
            _to_address(a, k, i) if k in _POINTERS else a for i, (a, k) in enumerate(zip(args, self._kinds, strict=True))
        ]
        self._fn(*conv)

    def __repr__(self) -> str:
        return f"<CompiledKernel {self.kernel.name} {self.lane_width.value} {self.signature[:12]}>"


class ReferenceKernel:
    """The numpy reference bound to a lane width and constants (HELIX_JIT_DISABLE=1)."""

    def __init__(self, kernel: Kernel, lane_width: LaneWidth, constants: dict, signature: str):
        self.kernel, self.lane_width, self.constants, self.signature = kernel, lane_width, constants, signature

    def __call__(self, *args: Any) -> None:
        self.kernel.reference(self.lane_width, self.constants, *args)


class Kernel:
    """A declared kernel; see the module docstring for an example.

    ``get(lane_width, **constants)`` returns a callable taking the arguments
    described by ``argtypes``. Constants (ints, floats, strings, tuples of
    them) are baked into the IR and are part of the signature.
    """

    def __init__(
        self,
        name: str,
        version: str,
        lane_widths: Sequence[LaneWidth | str],
        emit_ir: Callable[[LaneWidth, Mapping[str, Any]], str],
        reference: Callable[..., Any],
        argtypes: Sequence[str],
        entry: str | None = None,
    ):
        self.name = name
        self.version = str(version)
        self.lane_widths = tuple(LaneWidth.parse(lw) for lw in lane_widths)
        self.emit_ir = emit_ir
        self.reference = reference
        for t in argtypes:
            if t not in _SCALARS and t not in _POINTERS:
                raise ValueError(f"kernel {name}: unknown argument type {t!r}")
        self.argtypes = tuple(argtypes)
        self.entry = entry or name.replace(".", "_")
        self._fast: dict[tuple, tuple[int, Any]] = {}

    def _check(self, lane_width: LaneWidth | str) -> LaneWidth:
        lw = LaneWidth.parse(lane_width)
        if lw not in self.lane_widths:
            names = ", ".join(w.value for w in self.lane_widths)
            raise ValueError(f"kernel {self.name} does not support lane width {lw.value} (supported: {names})")
        return lw

    def signature(self, lane_width: LaneWidth | str, **constants: Any) -> str:
        """The cache key: SHA-256 of canonical JSON of what changes the machine code."""
        from helix_jit import codegen  # lazy: imports llvmlite

        lw = self._check(lane_width)
        payload = {
            "kernel": self.name,
            "version": self.version,
            "lane_width": lw.value,
            "constants": constants,
            **codegen.host(),
        }
        return _cache.signature_of(payload)

    def get(self, lane_width: LaneWidth | str, **constants: Any) -> CompiledKernel | ReferenceKernel:
        """The callable for this lane width and these shape constants.

        Looked up in memory, then on disk, else compiled (and stored in both).
        With HELIX_JIT_DISABLE=1, the numpy reference instead.
        """
        lw = self._check(lane_width)
        if jit_disabled():
            key = _cache.canonical_json({"lane_width": lw.value, "constants": constants})
            sig = "reference:" + key
            self._note(lw, sig, "reference")
            return ReferenceKernel(self, lw, dict(constants), sig)
        key = (lw, _cache.canonical_json(constants))
        hit = self._fast.get(key)
        if hit is not None and hit[0] == _cache.generation:
            fn = hit[1]
            _cache.counters.hits += 1
            self._note(lw, fn.signature, "memory")
            return fn
        sig = self.signature(lw, **constants)
        fn, source = self._lookup(lw, dict(constants), sig)
        self._fast[key] = (_cache.generation, fn)
        self._note(lw, sig, source)
        return fn

    def _note(self, lw: LaneWidth, sig: str, source: str) -> None:
        if _cache.recorders:
            _cache.note_use(_cache.KernelUse(self.name, self.version, lw.value, sig, source))

    def _lookup(self, lw: LaneWidth, constants: dict, sig: str) -> tuple[CompiledKernel, str]:
        from helix_jit import codegen

        with _compile_lock:
            c = _cache.counters
            fn = _cache.memory.get(sig)
            if fn is not None:
                c.hits += 1
                return fn, "memory"
            c.misses += 1
            with _cache.signature_lock(sig):
                obj = _cache.read_disk(sig)
                if obj is not None:
                    try:
                        loaded = codegen.load_object(obj, [self.entry], sig[:16])
                    except Exception as e:  # a stale or foreign object: recompile
                        _cache.log.warning("helix-jit cache entry %s failed to load (%s); recompiling", sig, e)
                    else:
                        c.disk_loads += 1
                        fn = CompiledKernel(self, lw, constants, sig, loaded)
                        _cache.memory[sig] = fn
                        return fn, "disk"
                ir_text = self.emit_ir(lw, constants)
                loaded, ms = codegen.compile_ir(ir_text, [self.entry], sig[:16], name=f"{self.name}[{lw.value}]")
                c.compiles += 1
                c.compile_ms += ms
                if loaded.obj:
                    _cache.write_disk(sig, loaded.obj)
                fn = CompiledKernel(self, lw, constants, sig, loaded)
                _cache.memory[sig] = fn
                return fn, "compiled"

    def __repr__(self) -> str:
        return f"<Kernel {self.name} v{self.version} {[w.value for w in self.lane_widths]}>"


def declare_kernel(
    name: str,
    version: str,
    lane_widths: Sequence[LaneWidth | str],
    emit_ir: Callable[[LaneWidth, Mapping[str, Any]], str],
    reference: Callable[..., Any],
    argtypes: Sequence[str],
    entry: str | None = None,
) -> Kernel:
    """Declare (and register) a kernel; returns a :class:`Kernel`.

    name: unique, e.g. ``"myplugin.axpb"``; version: bump it whenever the
    emitted IR changes (it is part of the cache signature); lane_widths: the
    widths ``emit_ir`` supports; emit_ir(lane_width, constants) -> LLVM IR
    text defining a ``void`` function named ``entry`` (default: name with
    dots replaced by underscores) with parameters matching ``argtypes``;
    reference(lane_width, constants, *args): the numpy reference, same
    arguments, writing its outputs in place.

    Re-declaring a name replaces the previous declaration.
    """
    k = Kernel(name, version, lane_widths, emit_ir, reference, argtypes, entry)
    _registry[name] = k
    return k
