"""helix-framework: a lab for compression codecs of model weights and context.

The public API: `get_host` (the plugin host), `hookimpl` (for plugins), the
component contracts (`Codec`, `Rotation`, `Compressor`, `Measurement`) and
their value classes, the config loader and every error class of
`helix_framework.errors`. Submodules are
imported on first attribute access so that ``helix --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from helix_framework import errors as _errors
from helix_framework.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "get_host": "helix_framework.host",
    "reset_host": "helix_framework.host",
    "Host": "helix_framework.host",
    "Codec": "helix_framework.codec",
    "CodecState": "helix_framework.codec",
    "Codes": "helix_framework.codec",
    "BitsAccount": "helix_framework.codec",
    "NoParams": "helix_framework.codec",
    "Rotation": "helix_framework.rotation",
    "RotationState": "helix_framework.rotation",
    "Compressor": "helix_framework.compressor",
    "CompressionResult": "helix_framework.compressor",
    "Measurement": "helix_framework.measurement",
    "MeasureContext": "helix_framework.measurement",
    "load_candidate": "helix_framework.config",
    "candidate_from_mapping": "helix_framework.config",
    "CandidateConfig": "helix_framework.config",
    "kernel_signature": "helix_framework.config",
    "LayerStats": "helix_framework.layer_stats",
}
# Every error class a plugin may raise or catch, from the one module that holds
# them (errors.py imports nothing heavy, so --help stays fast).
_ERRORS = [name for name, value in vars(_errors).items()
           if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == _errors.__name__]
globals().update({name: getattr(_errors, name) for name in _ERRORS})

__all__ = ["hookimpl", "__version__", *_LAZY, *_ERRORS]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'helix_framework' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
