"""LLVM code generation: target machine, MCJIT engine, O3, function pointers.

This is the only module that imports llvmlite, and it is imported lazily (on
the first compile or load), so ``import helix_jit`` stays cheap.

llvmlite 0.50 facts this relies on (measured here):
``binding.initialize()`` raises, so only the native target and asm printer
are initialised; the legacy pass manager is gone (new pass builder); one
TargetMachine per MCJIT engine, since the engine takes ownership of it.

``HELIX_JIT_DUMP=ir`` (or ``asm``, or ``ir,asm``) logs the optimised IR or
the assembly of every kernel compiled, at WARNING level on the
``helix_jit.codegen`` logger (stderr by default); there an entry point ``e``
is named ``e__hx`` followed by the first 16 hex digits of its signature.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import llvmlite
import llvmlite.binding as llvm

from helix_jit import cache

log = logging.getLogger(__name__)


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@functools.cache
def host() -> dict[str, str]:
    """What changes the machine code: part of every kernel signature."""
    _init()
    return {
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": llvm.get_host_cpu_features().flatten(),
    }


def _target_machine() -> Any:
    # A fresh one per engine: MCJIT owns it and frees it with the engine.
    h = host()
    target = llvm.Target.from_triple(h["triple"])
    return target.create_target_machine(cpu=h["cpu"], features=h["features"], opt=3, jit=True)


@functools.cache
def _empty_ir() -> str:
    return f'target triple = "{host()["triple"]}"\n'


@dataclass
class Loaded:
    """The engine that holds a kernel's code and the addresses of its entry points.

    The engine must stay referenced as long as any address is in use.
    """

    engine: Any
    addresses: dict[str, int]
    obj: bytes


def _dump_modes() -> set[str]:
    return {m.strip().lower() for m in os.environ.get("HELIX_JIT_DUMP", "").split(",") if m.strip()}


def symbol(entry: str, tag: str) -> str:
    """The name an entry point gets in the object code: unique per signature,
    so the objects of every kernel can live in one engine."""
    return f"{entry}__hx{tag}"


# One MCJIT engine per cache generation receives every object of this
# process: creating an engine and its target machine cost more than loading
# a kernel's object into a live one (about 0.5 ms against 0.1 ms). Entry
# symbols are unique per signature (`symbol`) and everything else an IR
# defines is made internal, so objects never clash. `clear_cache` bumps the
# generation: objects loaded again after it go to a fresh engine, while
# kernels handed out before keep the old one alive.
_shared: tuple[int, Any] | None = None


def _engine() -> Any:
    global _shared
    if _shared is None or _shared[0] != cache.generation:
        _init()
        _shared = (cache.generation, llvm.create_mcjit_compiler(llvm.parse_assembly(_empty_ir()), _target_machine()))
    return _shared[1]


def compile_ir(ir_text: str, entries: list[str], tag: str, name: str = "kernel") -> tuple[Loaded, float]:
    """Parse, verify, optimise (O3), generate object code for ``ir_text`` and
    load it; return it and the ms spent. Entry ``e`` is renamed ``symbol(e, tag)``."""
    t0 = time.perf_counter()
    _init()
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    defined = {f.name for f in mod.functions if not f.is_declaration}
    missing = [e for e in entries if e not in defined]
    if missing:
        raise RuntimeError(f"{name}: entry points not found in the IR: {missing}")
    for g in (*mod.functions, *mod.global_variables):
        if not g.is_declaration:
            if g.name in entries:
                g.name = symbol(g.name, tag)
            elif g.linkage == llvm.Linkage.external:
                g.linkage = llvm.Linkage.internal
    tm = _target_machine()
    mod.triple = host()["triple"]
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    # LLVM's own unroller fully unrolls every constant-trip loop (fwht: 3x the
    # compile time, no speed gain); the emitters unroll the hot loops themselves.
    pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    dump = _dump_modes()
    if "ir" in dump:
        log.warning("HELIX_JIT_DUMP ir of %s:\n%s", name, mod)
    if "asm" in dump:
        log.warning("HELIX_JIT_DUMP asm of %s:\n%s", name, tm.emit_assembly(mod))
    loaded = load_object(tm.emit_object(mod), entries, tag)
    return loaded, (time.perf_counter() - t0) * 1e3


def load_object(obj: bytes, entries: list[str], tag: str) -> Loaded:
    """Load object code (compiled here or read from the disk cache) into the
    shared engine, without code generation."""
    global _shared
    engine = _engine()
    try:
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
    except Exception:
        _shared = None  # the engine may hold half of the object: never reuse it
        raise
    addresses = {e: engine.get_function_address(symbol(e, tag)) for e in entries}
    missing = [e for e, a in addresses.items() if not a]
    if missing:
        raise RuntimeError(f"object lacks entry points {missing}")
    return Loaded(engine, addresses, obj)
