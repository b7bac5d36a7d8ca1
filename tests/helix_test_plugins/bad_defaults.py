"""A codec whose Params default fails its own validator (must register as failed)."""

from typing import ClassVar

import attrs

from helix_framework import hookimpl
from helix_framework.codec import Codec
from helix_framework.params import ParamError


def _positive(instance, attribute, value):
    if value <= 0:
        raise ParamError("levels", f"must be positive, got {value!r}")


@attrs.frozen
class BadDefaultParams:
    levels: int = attrs.field(default=0, validator=_positive)


class BadDefaultCodec(Codec):
    name: ClassVar[str] = "bad_defaults"
    Params: ClassVar[type] = BadDefaultParams


@hookimpl
def helix_register_codecs(register):
    register(BadDefaultCodec())
