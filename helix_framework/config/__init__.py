"""Candidate configs: YAML at the edge, frozen attrs classes inside.

A candidate names a codec and its params, a rotation, the row split and the
measurements. `load_candidate` safe-loads the YAML, keeps the line of every
key, and converts with the project's cattrs converter; every error is a
`ConfigError` naming the file, the key path (``$.params.subspaces``) and the
line. Validation happens here, before any kernel compiles or any model is
read: unknown keys, wrong types, values a Params schema refuses, lane widths
a codec does not support, unknown plugin names (with suggestions) and rows
that would overlap (`CalibrationEqualsMeasurement`, unless ``in_sample``).
"""

from __future__ import annotations

from helix_framework.config.candidate import (
    ROUTES,
    CalibrationConfig,
    CandidateConfig,
    RotationChoice,
    RouteRule,
    TensorChoice,
    RowsConfig,
    candidate_from_document,
    candidate_from_mapping,
    kernel_signature,
    load_candidate,
)
from helix_framework.config.converter import converter, structure
from helix_framework.config.files import is_sweep, read_config_file
from helix_framework.yaml_loading import YamlDocument, load_yaml
from helix_jit.cache import canonical_json

__all__ = ["ROUTES", "CalibrationConfig", "CandidateConfig", "RotationChoice", "RouteRule", "RowsConfig", "TensorChoice",
           "YamlDocument", "candidate_from_document", "candidate_from_mapping", "canonical_json", "converter",
           "is_sweep", "kernel_signature", "load_candidate", "load_yaml", "read_config_file", "structure"]
