from helix_framework.host import Host


def test_registered_through_its_entry_point():
    reg = Host().lookup("compressor", "headroom")
    assert (reg.source, reg.distribution) == ("entry point", "helix-compressor-headroom")


def test_registered_instance_compresses():
    result = Host().compressor("headroom").compress("some text", 4, content_type="prose")
    assert len(result.text) <= 4 and result.path
