"""A plugin registering a second codec named ``rtn`` without override."""

from helix_framework import hookimpl
from helix_framework.codec import Codec


class OtherRtn(Codec):
    name = "rtn"


@hookimpl
def helix_register_codecs(register):
    register(OtherRtn())
