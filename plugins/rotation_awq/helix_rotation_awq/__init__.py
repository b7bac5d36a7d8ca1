"""helix-rotation-awq: activation-aware per-input-channel scaling of weight rows."""

__version__ = "0.1.0"
