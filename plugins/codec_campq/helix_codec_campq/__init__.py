"""helix-codec-campq: product quantization of weight rows with residual stages."""

__version__ = "0.1.0"
