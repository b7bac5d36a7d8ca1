"""A plugin overriding the built-in ``truncate`` compressor."""

from helix_framework import hookimpl
from helix_framework.compressor import CompressionResult, Compressor, ratio_of


class HeadTailTruncate(Compressor):
    name = "truncate"
    version = "2.0"
    override = True

    def compress(self, text, target, content_type=None, question=None):
        half = target // 2
        out = text if len(text) <= target else text[:half] + text[len(text) - (target - half):]
        return CompressionResult(out, ratio_of(text, out), "head_tail")


@hookimpl
def helix_register_compressors(register):
    register(HeadTailTruncate())
