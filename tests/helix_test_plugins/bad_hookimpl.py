"""A plugin whose hookimpl asks for an argument the spec does not have."""

from helix_framework import hookimpl


@hookimpl
def helix_register_codecs(register, lane_width):
    raise AssertionError("never called")
