"""The opq rotation: alternating PQ training and an orthogonal Procrustes
step (Ge et al. 2013; FAISS OPQMatrix). Its algorithm lands with the
calibration issue; until then every use raises NotImplementedInThisVersion."""

from __future__ import annotations

import attrs

from helix_codec_opq import __version__
from helix_framework.errors import NotImplementedInThisVersion
from helix_framework.params import codegen_false, in_range
from helix_framework.rotation import Rotation


@attrs.frozen
class OpqParams:
    """Outer iterations (rotation updates) and PQ iterations per update."""

    iterations: int = attrs.field(default=20, validator=in_range(1, 1000), metadata=codegen_false())
    pq_iterations: int = attrs.field(default=4, validator=in_range(1, 1000), metadata=codegen_false())
    seed: int = attrs.field(default=0, metadata=codegen_false())


class OpqRotation(Rotation):
    name = "opq"
    version = __version__
    Params = OpqParams

    def _missing(self, *_args, **_kwargs):
        raise NotImplementedInThisVersion("rotation", self.name, "helix-codec-opq", self.version)

    fit = apply = invert = _missing
