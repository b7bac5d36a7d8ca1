"""helix-framework: a lab for compression codecs of model weights and context.

The public API: `get_host` (the plugin host), `hookimpl` (for plugins), the
component contracts (`Codec`, `Rotation`, `Compressor`, `Measurement`) and
their value classes, the config loader and the errors. Submodules are
imported on first attribute access so that ``helix --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "HelixError": "helix_framework.errors",
    "ConfigError": "helix_framework.errors",
    "PluginError": "helix_framework.errors",
    "UnknownNameError": "helix_framework.errors",
    "NotImplementedInThisVersion": "helix_framework.errors",
}

__all__ = ["hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'helix_framework' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
