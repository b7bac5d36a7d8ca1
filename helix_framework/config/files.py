"""Reading a config file (a candidate or a sweep) through the bounded YAML loader."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from helix_framework.yaml_loading import YamlDocument, read_yaml_file


def read_config_file(path: str | Path) -> YamlDocument:
    """Read one YAML config file (a candidate or a sweep) with its key lines."""
    return read_yaml_file(path)


def is_sweep(doc: YamlDocument) -> bool:
    """A sweep file is the mapping with a ``grid``; anything else is a candidate."""
    return isinstance(doc.data, Mapping) and "grid" in doc.data
