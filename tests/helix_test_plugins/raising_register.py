"""A plugin whose registration hook raises."""

from helix_framework import hookimpl


@hookimpl
def helix_register_measurements(register):
    raise RuntimeError("registry exploded")
