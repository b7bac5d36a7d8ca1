"""helix-compressor-headroom: a bridge to headroom-ai's text compressors."""

__version__ = "0.2.0"
