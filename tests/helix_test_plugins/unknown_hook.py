"""A plugin implementing a hook the host does not define (a typo)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_codec(register):
    raise AssertionError("never called")
