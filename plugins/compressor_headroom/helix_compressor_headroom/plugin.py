"""Entry point of helix-compressor-headroom (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_compressors(register):
    from helix_compressor_headroom.compressor import HeadroomCompressor

    register(HeadroomCompressor())
