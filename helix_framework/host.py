"""The plugin host: a pluggy PluginManager plus the registry of components.

Plugins come from three places, recorded as ``source``:

- ``builtin``: `helix_framework.default_plugins`, registered like any other;
- ``entry point``: the group ``helix_framework``, loaded one entry point at a
  time so that one broken plugin is reported and every other still loads;
- ``Python API``: ``host.register(obj)`` from a notebook or a test.

Environment:

- ``HELIX_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points;
- ``HELIX_LOAD_PLUGINS=a,b`` loads only the entry points (or distributions)
  named;
- ``HELIX_STRICT_PLUGINS=1`` turns any plugin failure into a `PluginError`;
- ``HELIX_TRACE_HOOKS=1`` logs every hook call at INFO with the plugin and
  what it registered.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from importlib import metadata
from typing import Any

import attrs
import pluggy

from helix_framework import hookspecs
from helix_framework.codec import Codec
from helix_framework.compressor import Compressor
from helix_framework.errors import DuplicateNameError, PluginError, UnknownNameError
from helix_framework.measurement import AGGREGATES, Measurement
from helix_framework.rotation import Rotation

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "helix_framework"
SOURCE_BUILTIN = "builtin"
SOURCE_ENTRY_POINT = "entry point"
SOURCE_PYTHON_API = "Python API"

BASES: dict[str, type] = {
    "codec": Codec,
    "rotation": Rotation,
    "compressor": Compressor,
    "measurement": Measurement,
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@attrs.frozen
class PluginInfo:
    """A plugin object known to the PluginManager and where it came from."""

    name: str
    distribution: str | None
    version: str | None
    source: str
    obj: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class Registration:
    """One registered component, with its provenance and status."""

    kind: str
    name: str
    obj: Any = attrs.field(eq=False, repr=False)
    plugin: str
    distribution: str | None
    version: str | None
    source: str
    status: str = "loaded"  # loaded | overridden | failed
    error: str | None = None

    @property
    def lane_widths(self) -> tuple[str, ...]:
        widths = getattr(self.obj, "lane_widths", ())
        return tuple(getattr(w, "value", str(w)) for w in widths) if self.kind == "codec" else ()

    @property
    def override(self) -> bool:
        return bool(getattr(self.obj, "override", False))

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "component_version": getattr(self.obj, "version", None),
            "plugin": self.plugin,
            "source": self.source,
            "lane_widths": list(self.lane_widths),
            "override": self.override,
            "status": self.status,
            "error": self.error,
        }


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or whose registration failed."""

    plugin: str
    distribution: str | None
    version: str | None
    source: str
    error: str

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.plugin,
            "kind": "plugin",
            "distribution": self.distribution,
            "version": self.version,
            "component_version": None,
            "plugin": self.plugin,
            "source": self.source,
            "lane_widths": [],
            "override": False,
            "status": "failed",
            "error": self.error,
        }


def _describe(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _distribution_of(obj: Any) -> tuple[str | None, str | None]:
    """Best-effort distribution name and version of a Python-API plugin."""
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str):
        module = type(obj).__module__
    top = module.split(".")[0]
    dists = metadata.packages_distributions().get(top) or []
    if not dists:
        return None, getattr(obj, "__version__", None)
    try:
        return dists[0], metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        return dists[0], None


class Host:
    """Loads plugins and answers lookups by kind and name.

    Use `helix_framework.get_host()` for the process-wide host; construct one
    directly (``Host(autoload=False)``) for an isolated registry in tests.
    """

    def __init__(self, *, autoload: bool | None = None, builtins: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._load_failures: list[PluginFailure] = []
        self._registry: dict[tuple[str, str], list[Registration]] | None = None
        self._collect_failures: list[PluginFailure] = []
        self._lock = threading.RLock()
        if builtins:
            from helix_framework import default_plugins

            self._add_plugin(default_plugins, "helix_framework.builtins", *_own_distribution(), SOURCE_BUILTIN)
        if autoload is None:
            autoload = not _env_flag("HELIX_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            self._load_entry_points()
        self.strict = _env_flag("HELIX_STRICT_PLUGINS")

    # -- loading -----------------------------------------------------------

    def _load_entry_points(self) -> None:
        wanted = {n.strip() for n in os.environ.get("HELIX_LOAD_PLUGINS", "").split(",") if n.strip()}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if wanted and ep.name not in wanted and dist not in wanted:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a plugin's import error must not stop the others
                self._load_failures.append(PluginFailure(ep.name, dist, version, SOURCE_ENTRY_POINT, _describe(exc)))
                log.warning("plugin %s (%s) failed to import: %s", ep.name, dist, _describe(exc))
                continue
            try:
                self._add_plugin(obj, ep.name, dist, version, SOURCE_ENTRY_POINT)
            except PluginError as exc:
                self._load_failures.append(PluginFailure(ep.name, dist, version, SOURCE_ENTRY_POINT, str(exc)))
                log.warning("plugin %s (%s) rejected: %s", ep.name, dist, exc)

    def _add_plugin(self, obj: Any, name: str, dist: str | None, version: str | None, source: str) -> None:
        try:
            self.pm.register(obj, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(_describe(exc), plugin=name, distribution=dist) from exc
        unknown = [hc.name for hc in self.pm.get_hookcallers(obj) or [] if not hc.has_spec()]
        if unknown:
            self.pm.unregister(obj)
            raise PluginError(
                f"PluginValidationError: unknown hook {', '.join(unknown)}; "
                f"known hooks: {', '.join(hookspecs.KINDS.values())}",
                plugin=name,
                distribution=dist,
            )
        self._plugins[name] = PluginInfo(name, dist, version, source, obj)
        self._registry = None

    def register(self, obj: Any, name: str | None = None) -> str:
        """Register a plugin object (module or instance with hookimpls).

        Raises `PluginError` if its hookimpls do not match the specs or its
        registration hooks fail; nothing of it stays registered then.
        Returns the plugin name.
        """
        with self._lock:
            name = name or getattr(obj, "__name__", None) or f"{type(obj).__name__}-{id(obj):x}"
            dist, version = _distribution_of(obj)
            self._add_plugin(obj, name, dist, version, SOURCE_PYTHON_API)
            self._collect()
            failed = [f for f in self._collect_failures if f.plugin == name]
            if failed:
                self.unregister(obj)
                raise PluginError(failed[0].error, plugin=name, distribution=dist)
            return name

    def unregister(self, obj: Any) -> None:
        """Remove a plugin object registered before (no-op if unknown)."""
        with self._lock:
            name = self.pm.get_name(obj)
            if name is None:
                return
            self.pm.unregister(obj)
            self._plugins.pop(name, None)
            self._registry = None

    # -- collection --------------------------------------------------------

    def _collect(self) -> dict[tuple[str, str], list[Registration]]:
        with self._lock:
            if self._registry is not None:
                return self._registry
            registry: dict[tuple[str, str], list[Registration]] = {}
            self._collect_failures = []
            trace = _env_flag("HELIX_TRACE_HOOKS")
            for info in self._plugins.values():
                try:
                    found = self._collect_plugin(info, trace)
                except Exception as exc:  # the plugin's own code raised, or registered junk
                    self._collect_failures.append(
                        PluginFailure(info.name, info.distribution, info.version, info.source, _describe(exc))
                    )
                    log.warning("plugin %s failed during registration: %s", info.name, _describe(exc))
                    continue
                for reg in found:
                    registry.setdefault((reg.kind, reg.name), []).append(reg)
            self._registry = {key: _resolve(regs) for key, regs in registry.items()}
            return self._registry

    def _collect_plugin(self, info: PluginInfo, trace: bool) -> list[Registration]:
        found: list[Registration] = []
        for kind, hook_name in hookspecs.KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not info.obj:
                    continue
                batch: list[Registration] = []

                def register(obj: Any, _kind: str = kind, _batch: list = batch) -> None:
                    _batch.append(_validated(_kind, obj, info))

                impl.function(register=register)
                if trace:
                    log.info("hook %s plugin=%s registered=%s", hook_name, info.name, [r.name for r in batch])
                found.extend(batch)
        return found

    # -- lookups -----------------------------------------------------------

    @property
    def failures(self) -> list[PluginFailure]:
        """Plugins that failed to import, validate or register."""
        self._collect()
        return [*self._load_failures, *self._collect_failures]

    def registrations(self) -> list[Registration]:
        """Every registered component, conflicting and overridden ones included."""
        return [reg for regs in self._collect().values() for reg in regs]

    def names(self, kind: str) -> list[str]:
        """Names of the usable components of a kind, sorted."""
        _check_kind(kind)
        return sorted({name for (k, name), regs in self._collect().items() if k == kind and _winner(regs)})

    def lookup(self, kind: str, name: str) -> Registration:
        """The registration of a usable component, with its provenance."""
        _check_kind(kind)
        regs = self._collect().get((kind, name))
        if not regs:
            installed = self.names(kind)
            close = difflib.get_close_matches(name, installed, n=3, cutoff=0.5)
            failed = [f"{f.plugin} ({f.distribution or f.source}): {f.error}" for f in self.failures]
            raise UnknownNameError(kind, name, close, installed, failed)
        winner = _winner(regs)
        if winner is None:
            raise DuplicateNameError(regs[0].error or f"{kind} {name!r} is registered more than once")
        return winner

    def get(self, kind: str, name: str) -> Any:
        """The component object of a kind and name; `UnknownNameError` lists close names."""
        return self.lookup(kind, name).obj

    def codec(self, name: str) -> Codec:
        return self.get("codec", name)

    def rotation(self, name: str) -> Rotation:
        return self.get("rotation", name)

    def compressor(self, name: str) -> Compressor:
        return self.get("compressor", name)

    def measurement(self, name: str) -> Measurement:
        return self.get("measurement", name)

    def check_strict(self) -> None:
        """Raise `PluginError` if strict mode is on and any plugin failed."""
        if not self.strict:
            return
        problems = [f"{f.plugin} ({f.distribution or 'no distribution'}): {f.error}" for f in self.failures]
        problems += [f"{r.kind} {r.name}: {r.error}" for r in self.registrations() if r.status == "failed"]
        if problems:
            raise PluginError("HELIX_STRICT_PLUGINS=1 and plugins failed: " + "; ".join(problems))


def _check_kind(kind: str) -> None:
    if kind not in BASES:
        raise UnknownNameError("component kind", kind, difflib.get_close_matches(kind, list(BASES)), list(BASES))


def _validated(kind: str, obj: Any, info: PluginInfo) -> Registration:
    base = BASES[kind]
    if not isinstance(obj, base):
        raise TypeError(f"{kind} registered by {info.name} must be an instance of helix_framework.{base.__name__}, got {obj!r}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TypeError(f"{kind} {obj!r} from {info.name} has no valid name (letters, digits, _ . -)")
    params = getattr(obj, "Params", None)
    if params is not None and not attrs.has(params):
        raise TypeError(f"{kind} {name!r} from {info.name}: Params must be an attrs class")
    _check_default_params(kind, name, obj, params, info)
    if kind == "measurement" and obj.aggregate not in AGGREGATES:
        raise TypeError(f"measurement {name!r} from {info.name}: aggregate must be one of {', '.join(AGGREGATES)}, "
                        f"got {obj.aggregate!r}")
    if kind == "codec":
        from helix_jit.lanes import LaneWidth

        bad = [w for w in obj.lane_widths if not isinstance(w, LaneWidth)]
        if bad or not obj.lane_widths:
            raise TypeError(f"codec {name!r} from {info.name}: lane_widths must be a non-empty tuple of LaneWidth")
    return Registration(kind, name, obj, info.name, info.distribution, info.version, info.source)


def _check_default_params(kind: str, name: str, obj: Any, params: type | None, info: PluginInfo) -> None:
    """A Params class whose defaults fail its own validators would surface later,
    blamed on a user's YAML at a key it never mentions: refuse it here."""
    if params is None or any(f.default is attrs.NOTHING for f in attrs.fields(params)):
        return  # required fields: there are no defaults to check
    try:
        defaults = params()
        if isinstance(obj, (Codec, Rotation)):  # the kinds with cross-field checks
            obj.validate(defaults)
    except Exception as exc:
        raise TypeError(f"{kind} {name!r} from {info.name}: its default params fail validation: {_describe(exc)}") from exc


def _resolve(regs: list[Registration]) -> list[Registration]:
    """Mark the statuses of same-named registrations: one override wins, else all fail."""
    if len(regs) == 1:
        return regs
    overrides = [r for r in regs if r.override]
    if len(overrides) == 1:
        return [r if r is overrides[0] else attrs.evolve(r, status="overridden") for r in regs]
    who = " and ".join(f"{r.plugin} ({r.distribution or r.source})" for r in regs)
    msg = (
        f"{regs[0].kind} {regs[0].name!r} is registered by both {who}; "
        "uninstall one or set override = True on exactly one"
    )
    return [attrs.evolve(r, status="failed", error=msg) for r in regs]


def _winner(regs: list[Registration]) -> Registration | None:
    loaded = [r for r in regs if r.status == "loaded"]
    return loaded[0] if len(loaded) == 1 else None


def _own_distribution() -> tuple[str, str | None]:
    try:
        return "helix-framework", metadata.version("helix-framework")
    except metadata.PackageNotFoundError:
        return "helix-framework", None


_HOST: Host | None = None
_HOST_LOCK = threading.Lock()


def get_host() -> Host:
    """The process-wide host, created (and plugins loaded) on first use."""
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = Host()
        return _HOST


def reset_host() -> None:
    """Forget the process-wide host (tests, or after installing a plugin)."""
    global _HOST
    with _HOST_LOCK:
        _HOST = None

