"""Plugin discovery: a thin layer over pluggy.

The plugin manager is built on demand (never at import time). Every plugin, built-in or third-party,
is found through the ``hashbench`` entry-point group. Setting ``HASHBENCH_DISABLE_PLUGIN_AUTOLOAD=1``
loads only hashbench's own entry points (useful to rule out a broken third-party plugin).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import HashbenchError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hashbench"
AUTOLOAD_ENV = "HASHBENCH_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DECODERS = "hashbench.decoders"  # the plugin name of the generic decoders hashbench ships
KINDS = ("methods", "datasets", "backbones", "decoders")


def make_plugin_manager(
    extra_plugins: tuple = (),
    autoload: bool | None = None,
    failed: dict[str, str] | None = None,
    third_party: set[str] | None = None,
) -> pluggy.PluginManager:
    """Build a plugin manager with the entry-point plugins and ``extra_plugins`` registered.

    hashbench's own entry points come first; a broken one is an error. A third-party plugin that fails to
    load (or to register) is skipped with one warning naming it and :data:`AUTOLOAD_ENV`, its entry-point
    name and reason going into ``failed``; one whose entry-point name is taken is skipped with a warning.
    The names of the third-party plugins registered go into ``third_party``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    failed = {} if failed is None else failed
    third_party = set() if third_party is None else third_party
    owner: dict[str, str] = {}  # entry-point name -> the distribution that registered it
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not _own(ep))  # built-ins first
    for ep in eps:
        own = _own(ep)
        if not autoload and not own:
            continue
        dist = _dist_name(ep)
        if ep.name in owner:
            log.warning(
                "plugin %r (%s, from %s) skipped: the name %r is taken by %s; rename its entry point",
                ep.name,
                ep.value,
                dist,
                ep.name,
                "hashbench's built-in" if owner[ep.name] == "hashbench" else owner[ep.name],
            )
            continue
        if pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()  # a hook that matches no spec: this plugin's (the earlier ones passed)
        except Exception as exc:  # a broken plugin must say which one it is
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if own:
                raise HashbenchError(
                    f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {reason}"
                ) from exc
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            failed[ep.name] = f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to load: {reason}"
            log.warning(
                "%s; skipped (to run without third-party plugins: %s=1)", failed[ep.name], AUTOLOAD_ENV
            )
            continue
        owner[ep.name] = dist
        if not own:
            third_party.add(ep.name)
    if not pm.has_plugin(BUILTIN_DECODERS):  # core, not a package: registered like a plugin, always
        from . import decoders

        pm.register(decoders, name=BUILTIN_DECODERS)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def _own(ep) -> bool:
    return _dist_name(ep) == "hashbench"


@dataclass
class Registry:
    """Name -> class maps for methods, datasets, backbones and attribute decoders, built from a plugin
    manager."""

    methods: dict[str, type]
    datasets: dict[str, type]
    backbones: dict[str, type]
    decoders: dict[str, type] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # entry-point name -> why it did not load

    @classmethod
    def load(cls, extra_plugins: tuple = (), autoload: bool | None = None) -> Registry:
        failed: dict[str, str] = {}
        third_party: set[str] = set()
        pm = make_plugin_manager(extra_plugins, autoload, failed, third_party)
        tables = {
            kind: _collect(_results(pm, kind, third_party, failed), kind[:-1], third_party) for kind in KINDS
        }
        return cls(**tables, failed=failed)

    def method(self, name: str) -> type:
        return self._pick(self.methods, name, "method", "--methods")

    def dataset(self, name: str) -> type:
        return self._pick(self.datasets, name, "dataset", "--dataset")

    def backbone(self, name: str) -> type:
        return self._pick(self.backbones, name, "backbone", "--backbone")

    def decoder(self, name: str) -> type:
        return self._pick(self.decoders, name, "decoder", "--decoders")

    def _pick(self, table: dict[str, type], name: str, kind: str, option: str) -> type:
        if name not in table and name in self.failed:  # most plugins name their entry point as their class
            raise HashbenchError(f"{option} {name}: {self.failed[name]}")
        try:
            return _pick(table, name, kind, option)
        except HashbenchError as exc:
            if not self.failed:
                raise
            raise HashbenchError(f"{exc}; not loaded: {'; '.join(self.failed.values())}") from None


def _results(
    pm: pluggy.PluginManager, kind: str, third_party: set[str], failed: dict[str, str]
) -> list[tuple[str, list[type]]]:
    """``(plugin name, classes)`` of each implementation of ``hashbench_register_<kind>``, in registration
    order (built-ins first); a third-party implementation that raises is skipped with a warning."""
    out = []
    for impl in getattr(pm.hook, f"hashbench_register_{kind}").get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            out.append((name, list(impl.function() or ())))
        except Exception as exc:
            if name not in third_party:
                raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            failed[name] = f"plugin {name!r} failed to register its {kind}: {reason}"
            log.warning("%s; skipped (to run without third-party plugins: %s=1)", failed[name], AUTOLOAD_ENV)
    return out


def _collect(results: list[tuple[str, list[type]]], kind: str, third_party: set[str]) -> dict[str, type]:
    """Name -> class; a third-party class without a name, or with a name taken, is skipped with a warning
    (a built-in or an extra plugin doing so is an error)."""
    out: dict[str, type] = {}
    for plugin, classes in results:
        for klass in classes:
            name = getattr(klass, "name", None)
            problem = None
            if not name:
                problem = f"{kind} plugin class {klass!r} has no 'name'"
            elif name in out and out[name] is not klass:
                problem = (
                    f"{kind} name {name!r} registered twice: {out[name].__module__} and {klass.__module__}"
                )
            if problem is None:
                out[name] = klass
            elif plugin in third_party:
                log.warning("plugin %r: %s; %s skipped", plugin, problem, klass.__qualname__)
            else:
                raise HashbenchError(problem)
    return out


def _pick(table: dict[str, type], name: str, kind: str, option: str) -> type:
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(sorted(table)) or "(none registered)"
        raise HashbenchError(f"{option}: unknown {kind} {name!r}; valid: {valid}") from None
