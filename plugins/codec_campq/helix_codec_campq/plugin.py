"""Entry point of helix-codec-campq (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_codecs(register):
    from helix_codec_campq.codec import CampqCodec

    register(CampqCodec())
