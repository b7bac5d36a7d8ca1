"""helix-jit: llvmlite kernels for helix-framework codecs.

Importing this package is cheap: llvmlite is imported only when a kernel is
first compiled.
"""

from helix_jit.lanes import ALL_LANE_WIDTHS, LaneWidth

__all__ = ["ALL_LANE_WIDTHS", "LaneWidth"]
