import pytest

from helix_framework.errors import NotImplementedInThisVersion
from helix_framework.host import Host


def test_registered_through_its_entry_point():
    reg = Host().lookup("compressor", "headroom")
    assert (reg.source, reg.distribution) == ("entry point", "helix-compressor-headroom")


def test_use_is_refused_until_implemented():
    with pytest.raises(NotImplementedInThisVersion, match="not implemented in this version"):
        Host().compressor("headroom").compress("some text", 4)
