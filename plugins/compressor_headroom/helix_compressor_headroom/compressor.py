"""The headroom compressor: dispatch by content type to headroom-ai's
compressors, falling back to truncation. Its algorithm lands with the
context-compression issue; until then every use raises
NotImplementedInThisVersion."""

from __future__ import annotations

from helix_compressor_headroom import __version__
from helix_framework.compressor import Compressor
from helix_framework.errors import NotImplementedInThisVersion


class HeadroomCompressor(Compressor):
    name = "headroom"
    version = __version__

    def compress(self, text, target, content_type=None, question=None):
        raise NotImplementedInThisVersion("compressor", self.name, "helix-compressor-headroom", self.version)
