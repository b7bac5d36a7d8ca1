"""Typed errors. Each carries the data a user needs to act (file, key path,
line, plugin, tensor). Library code raises these; only the CLI turns them
into one line and an exit code."""

from __future__ import annotations

import errno


class HelixError(Exception):
    """Base class of every error meant for a user."""

    exit_code = 2


class ConfigError(HelixError):
    """A config file (or mapping) is invalid.

    ``file`` and ``line`` may be None for configs built in Python; ``path`` is
    the key path in JSONPath style, e.g. ``$.params.subspaces``.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str = "$", line: int | None = None):
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.path}: {self.message}"

    def located(self, *, file: str | None = None, line: int | None = None, prefix: str = "") -> ConfigError:
        """Return a copy with file, line or a path prefix filled in."""
        path = self.path
        if prefix:
            path = prefix + path[1:] if path.startswith("$") else prefix + "." + path
        err = type(self).__new__(type(self))
        ConfigError.__init__(err, self.message, file=file or self.file, path=path, line=line if line is not None else self.line)
        return err


class CalibrationEqualsMeasurement(ConfigError):
    """Calibration and measurement rows would overlap (the overfit guard)."""


class CentroidStarved(HelixError):
    """Too few training vectors per centroid (FAISS warns below 39)."""


class PluginError(HelixError):
    """A plugin failed to load or registered something invalid."""

    def __init__(self, message: str, *, plugin: str | None = None, distribution: str | None = None):
        self.plugin = plugin
        self.distribution = distribution
        super().__init__(message)


class DuplicateNameError(PluginError):
    """Two plugins registered the same name and neither is an override."""


class UnknownNameError(HelixError, KeyError):
    """No component of that kind and name is installed."""

    def __init__(
        self, kind: str, name: str, suggestions: list[str], installed: list[str], failed_plugins: list[str] | None = None
    ):
        self.kind = kind
        self.name = name
        self.suggestions = suggestions
        self.installed = installed
        #: "plugin (distribution): error" of every plugin that failed to load,
        #: since the component asked for may be one of theirs.
        self.failed_plugins = list(failed_plugins or [])
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"unknown {self.kind} {self.name!r}"
        if self.suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?"
        msg += f" (installed: {', '.join(self.installed) or 'none'})"
        if self.failed_plugins:
            msg += f"; plugins that failed to load, which may provide it: {'; '.join(self.failed_plugins)}"
        return msg


class NotImplementedInThisVersion(HelixError, NotImplementedError):
    """A registered component whose algorithm is not implemented yet."""

    def __init__(self, kind: str, name: str, distribution: str, version: str):
        super().__init__(
            f"{kind} {name!r} from {distribution} {version} is not implemented in this version; "
            "its name and params schema are registered, its algorithm is not"
        )


class SourceError(HelixError):
    """A model source cannot be read (format, dtype, corrupt file, refused pickle)."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        self.path = path
        self.tensor = tensor
        parts = [p for p in (path, f"tensor {tensor!r}" if tensor else None) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class InputFileError(HelixError):
    """An input file cannot be read within its limits (not a regular file, too large)."""

    def __init__(self, message: str, *, path: str):
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}")


class NotApplicable(HelixError):
    """A measurement does not apply to this tensor: recorded with the reason, not fatal."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

class ExportError(HelixError):
    """A calibration output cannot be exported in the requested format (names
    the tensor or the metadata field at fault)."""

    def __init__(self, message: str, *, tensor: str | None = None, field: str | None = None):
        self.tensor = tensor
        self.field = field
        where = f"tensor {tensor!r}: " if tensor else f"field {field!r}: " if field else ""
        super().__init__(where + message)


class MeasurementError(HelixError):
    """A measurement cannot be computed on this input (never a placeholder)."""


class CalibrationTextError(HelixError):
    """Calibration text cannot be used (empty, too short, not UTF-8, or it
    overlaps the evaluation prompts); the message names the file."""

    def __init__(self, message: str, *, file: str | None = None):
        self.file = file
        super().__init__(f"{file}: {message}" if file else message)


class LayerInputError(HelixError):
    """A linear layer's calibration inputs contain NaN or infinity; names the layer."""

    def __init__(self, message: str, *, layer: str):
        self.layer = layer
        super().__init__(f"layer {layer!r}: {message}")


class OutputError(HelixError):
    """An output path cannot be used: read-only, not a directory, the disk is
    full, or it would overwrite an input of the command."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)

    @classmethod
    def from_oserror(cls, path: object, exc: OSError, what: str = "cannot write") -> OutputError:
        """``<path>: <what>: <reason>`` for an OSError met writing ``path``."""
        reason = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.ENOTDIR: "a parent of it is not a directory",
                  errno.EEXIST: "a parent of it is not a directory",
                  errno.EACCES: "permission denied"}.get(exc.errno or 0, exc.strerror or str(exc))
        return cls(f"{what}: {reason}", path=str(path))


class OutputLocked(OutputError):
    """Another live process holds the lock of an output directory."""

    def __init__(self, path: str, pid: int | None, command: str | None = None):
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process"
        if command:
            holder += f" ({command})"
        super().__init__(f"in use by {holder}; wait for it to finish or choose another directory", path=path)


class TensorFilterError(HelixError):
    """A ``--tensors`` regex is invalid or selects no tensor the codec would
    compress."""

    def __init__(self, message: str, *, pattern: str):
        self.pattern = pattern
        super().__init__(message)


class EnvironmentSettingError(HelixError):
    """An environment variable the tool reads has a value it cannot use."""

    def __init__(self, message: str, *, variable: str):
        self.variable = variable
        super().__init__(message)


class ParamError(ValueError):
    """A params field has a bad value; ``field`` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class FrontierError(HelixError):
    """No frontier can be drawn (no table, no candidate with the figure)."""


class ArtifactError(HelixError):
    """An artifact directory is missing, incomplete or does not match its manifest."""


class SweepError(HelixError):
    """A sweep cannot run (too large, invalid points under --strict, no model, ...)."""


class SweepTooLarge(SweepError):
    """The grid has more than MAX_POINTS points."""


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF header this reader understands."""


class CorpusError(HelixError):
    """A needle corpus manifest or document is unusable (not JSON, empty,
    not UTF-8, or a needle whose value is not exactly once in its document)."""

    def __init__(self, message: str, *, file: str, key: str | None = None):
        self.file = file
        self.key = key
        super().__init__(f"{file}: {f'needle {key!r}: ' if key else ''}{message}")


class ErrorFeedbackError(HelixError):
    """Error feedback cannot run on a tensor, or a codec broke its promise
    (encode of the quantized columns did not reproduce them); ``codec`` names it."""

    def __init__(self, message: str, *, codec: str | None = None):
        self.codec = codec
        super().__init__(message)


class ServeError(HelixError):
    """`helix serve` cannot start with these options (e.g. a non-loopback host without a token)."""


class JobCancelled(HelixError):
    """A `helix serve` job was cancelled; raised inside its progress callback."""


class CalibrationError(HelixError):
    """A tensor could not be calibrated; the message names it."""


class AgreementError(HelixError):
    """Token agreement cannot be run on this input."""


class ReferenceModelError(HelixError):
    """A reference model cannot be built or run (unsupported architecture or
    option, missing tensor, wrong shape, bad input)."""


class BudgetError(HelixError):
    """A bits budget outside what the options can reach; ``low`` and ``high``
    give the feasible range (in the caller's unit, e.g. bits per weight)."""

    def __init__(self, message: str, *, low: float, high: float, budget: float):
        self.low, self.high, self.budget = low, high, budget
        super().__init__(message)


class AllocateError(HelixError):
    """`helix allocate` cannot run with these candidates; ``candidate`` names the file."""

    def __init__(self, message: str, *, candidate: str | None = None):
        self.candidate = candidate
        super().__init__(f"{candidate}: {message}" if candidate else message)
