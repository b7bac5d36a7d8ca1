"""Entry point of helix-rotation-awq (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_rotations(register):
    from helix_rotation_awq.rotation import AwqRotation

    register(AwqRotation())
