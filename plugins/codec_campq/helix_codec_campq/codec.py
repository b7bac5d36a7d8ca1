"""The campq codec. Its algorithm lands with the calibration issue; until
then every use raises NotImplementedInThisVersion (never a fake result)."""

from __future__ import annotations

from helix_codec_campq import __version__
from helix_codec_campq.params import CampqParams
from helix_framework.codec import Codec
from helix_framework.errors import NotImplementedInThisVersion


class CampqCodec(Codec):
    name = "campq"
    version = __version__
    Params = CampqParams

    def validate(self, params: CampqParams) -> None:
        params.check()

    def _missing(self, *_args, **_kwargs):
        raise NotImplementedInThisVersion("codec", self.name, "helix-codec-campq", self.version)

    fit = encode = decode = bits = _missing
