"""Built-in components, registered by the host as a default plugin.

- codecs: ``passthrough`` (exact copy, the regression anchor) and ``rtn``
  (round-to-nearest int8/4/3/2, per row or in groups: the baseline);
- rotation: ``identity``;
- compressor: ``truncate`` (``text[:target]``).

Measurements live in `helix_framework.measure` (`BUILTIN_MEASUREMENTS`).
"""

from __future__ import annotations

from helix_framework.builtins.codecs import PassthroughCodec, PassthroughParams, RtnCodec, RtnParams
from helix_framework.builtins.compressors import TruncateCompressor
from helix_framework.builtins.rotations import IdentityRotation
from helix_framework.codec import Codec
from helix_framework.compressor import Compressor
from helix_framework.rotation import Rotation

BUILTIN_CODECS: tuple[Codec, ...] = (PassthroughCodec(), RtnCodec())
BUILTIN_ROTATIONS: tuple[Rotation, ...] = (IdentityRotation(),)
BUILTIN_COMPRESSORS: tuple[Compressor, ...] = (TruncateCompressor(),)

__all__ = [
    "BUILTIN_CODECS",
    "BUILTIN_COMPRESSORS",
    "BUILTIN_ROTATIONS",
    "IdentityRotation",
    "PassthroughCodec",
    "PassthroughParams",
    "RtnCodec",
    "RtnParams",
    "TruncateCompressor",
]
