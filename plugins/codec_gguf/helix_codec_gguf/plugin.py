"""Entry point of helix-codec-gguf (group ``helix_framework``)."""

from helix_framework import hookimpl


@hookimpl
def helix_register_codecs(register):
    from helix_codec_gguf.codec import GgufCodec

    register(GgufCodec())
