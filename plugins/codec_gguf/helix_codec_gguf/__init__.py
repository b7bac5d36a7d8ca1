"""helix-codec-gguf: llama.cpp's GGUF block formats as a helix codec."""

from helix_codec_gguf.codec import FALLBACK, GgufCodec, GgufParams, effective_type

__all__ = ["FALLBACK", "GgufCodec", "GgufParams", "effective_type"]
