"""Shared hypothesis strategies and data helpers for the kernel tests."""

import numpy as np
from hypothesis import strategies as st

from helix_jit import LaneWidth

LANE_WIDTHS = list(LaneWidth)


@st.composite
def pq_shapes(draw, max_m=5, max_w=20, max_k=300):
    """(n, widths, K): uneven widths, widths not multiples of any lane count, n >= 1."""
    n = draw(st.sampled_from([1, 2, 3, 5, 7, 17, 33]))
    M = draw(st.integers(1, max_m))
    if draw(st.booleans()):
        from helix_jit import split_widths

        d = draw(st.integers(M, M * max_w))
        widths = list(split_widths(d, M))
    else:
        widths = draw(st.lists(st.integers(1, max_w), min_size=M, max_size=M))
    K = draw(st.sampled_from([1, 2, 3, 16, 17, 100, 256, 257, max_k]))
    return n, widths, K


def rng_for(seed):
    return np.random.default_rng(seed)


def make_codebooks(rng, widths, K):
    return [rng.standard_normal((K, w)).astype(np.float32) for w in widths]


def make_codes(rng, n, M, K):
    return rng.integers(0, K, (n, M)).astype(np.uint8 if K <= 256 else np.uint16)
