"""The host's own components, registered like any third-party plugin."""

from __future__ import annotations

from helix_framework.hookspecs import hookimpl


@hookimpl
def helix_register_codecs(register):
    from helix_framework.builtins import BUILTIN_CODECS

    for codec in BUILTIN_CODECS:
        register(codec)


@hookimpl
def helix_register_rotations(register):
    from helix_framework.builtins import BUILTIN_ROTATIONS

    for rotation in BUILTIN_ROTATIONS:
        register(rotation)


@hookimpl
def helix_register_compressors(register):
    from helix_framework.builtins import BUILTIN_COMPRESSORS

    for compressor in BUILTIN_COMPRESSORS:
        register(compressor)


@hookimpl
def helix_register_measurements(register):
    from helix_framework.measure import BUILTIN_MEASUREMENTS

    for measurement in BUILTIN_MEASUREMENTS:
        register(measurement)
