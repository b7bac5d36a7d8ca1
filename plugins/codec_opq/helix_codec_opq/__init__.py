"""helix-codec-opq: rotation learned by optimized product quantization."""

__version__ = "0.1.0"
