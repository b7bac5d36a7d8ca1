"""The hadamard rotation: seeded sign flips, then an orthonormal
Walsh-Hadamard transform. Its algorithm lands with the calibration issue;
until then every use raises NotImplementedInThisVersion."""

from __future__ import annotations

import attrs

from helix_codec_hadamard import __version__
from helix_framework.errors import NotImplementedInThisVersion
from helix_framework.params import codegen_false
from helix_framework.rotation import Rotation


@attrs.frozen
class HadamardParams:
    """``seed`` draws the sign flips; it never changes generated code."""

    seed: int = attrs.field(default=0, metadata=codegen_false())


class HadamardRotation(Rotation):
    name = "hadamard"
    version = __version__
    Params = HadamardParams

    def _missing(self, *_args, **_kwargs):
        raise NotImplementedInThisVersion("rotation", self.name, "helix-codec-hadamard", self.version)

    fit = apply = invert = _missing
