"""pluggy hook specifications of helix-framework.

Every hook is a registration hook, as in llm and datasette: the host calls it
once per plugin with a ``register`` callable, and the plugin calls
``register(obj)`` for each component it provides. The host validates the
object (its base class, name, params schema, lane widths) and records which
plugin and distribution provided it.

Implement them in a module listed under the entry-point group
``helix_framework`` (or pass an object to ``host.register``)::

    from helix_framework import hookimpl

    @hookimpl
    def helix_register_codecs(register):
        register(MyCodec())
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "helix_framework"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def helix_register_codecs(register: Callable[[object], None]) -> None:
    """Register codecs.

    Called once per plugin when the host collects its registry (at the first
    lookup, and again after ``host.register`` / ``host.unregister``).

    :param register: call with an instance of a `helix_framework.Codec`
        subclass; a wrong type or a missing ``name`` is reported as a failure
        of this plugin.
    :return: nothing; return values are ignored.
    """


@hookspec
def helix_register_rotations(register: Callable[[object], None]) -> None:
    """Register rotations (instances of `helix_framework.Rotation`).

    Called like `helix_register_codecs`. A config selects one with
    ``rotation: {kind: NAME, ...params}``.
    """


@hookspec
def helix_register_compressors(register: Callable[[object], None]) -> None:
    """Register text compressors (instances of `helix_framework.Compressor`).

    Called like `helix_register_codecs`. ``helix compress --compressor NAME``
    selects one.
    """


@hookspec
def helix_register_measurements(register: Callable[[object], None]) -> None:
    """Register measurements (instances of `helix_framework.Measurement`).

    Called like `helix_register_codecs`. A config lists them by name under
    ``measure``; the host calls each on held-out, calibration and all rows.
    """


KINDS: dict[str, str] = {
    "codec": "helix_register_codecs",
    "rotation": "helix_register_rotations",
    "compressor": "helix_register_compressors",
    "measurement": "helix_register_measurements",
}
