"""Entry point of helix-codec-hadamard (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_rotations(register):
    from helix_codec_hadamard.rotation import HadamardRotation

    register(HadamardRotation())
