"""Entry point of helix-codec-opq (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_rotations(register):
    from helix_codec_opq.rotation import OpqRotation

    register(OpqRotation())
