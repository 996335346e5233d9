"""Plugin discovery: a thin layer over pluggy.

The plugin manager is built on demand (never at import time). Every plugin, built-in or third-party,
is found through the ``hashbench`` entry-point group. Setting ``HASHBENCH_DISABLE_PLUGIN_AUTOLOAD=1``
loads only hashbench's own entry points (useful to rule out a broken third-party plugin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .errors import HashbenchError

ENTRY_POINT_GROUP = "hashbench"
AUTOLOAD_ENV = "HASHBENCH_DISABLE_PLUGIN_AUTOLOAD"
KINDS = ("methods", "datasets", "backbones")


def make_plugin_manager(extra_plugins: tuple = (), autoload: bool | None = None) -> pluggy.PluginManager:
    """Build a plugin manager with the entry-point plugins and ``extra_plugins`` registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        own = dist is not None and dist.name == "hashbench"
        if not autoload and not own:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise HashbenchError(
                f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass
class Registry:
    """Name -> class maps for methods, datasets and backbones, built from a plugin manager."""

    methods: dict[str, type]
    datasets: dict[str, type]
    backbones: dict[str, type]

    @classmethod
    def load(cls, extra_plugins: tuple = (), autoload: bool | None = None) -> Registry:
        pm = make_plugin_manager(extra_plugins, autoload)
        return cls(
            methods=_collect(pm.hook.hashbench_register_methods(), "method"),
            datasets=_collect(pm.hook.hashbench_register_datasets(), "dataset"),
            backbones=_collect(pm.hook.hashbench_register_backbones(), "backbone"),
        )

    def method(self, name: str) -> type:
        return _pick(self.methods, name, "method", "--methods")

    def dataset(self, name: str) -> type:
        return _pick(self.datasets, name, "dataset", "--dataset")

    def backbone(self, name: str) -> type:
        return _pick(self.backbones, name, "backbone", "--backbone")


def _collect(results: list[list[type]], kind: str) -> dict[str, type]:
    out: dict[str, type] = {}
    for classes in results:
        for klass in classes or ():
            name = getattr(klass, "name", None)
            if not name:
                raise HashbenchError(f"{kind} plugin class {klass!r} has no 'name'")
            if name in out and out[name] is not klass:
                raise HashbenchError(
                    f"{kind} name {name!r} registered twice: {out[name].__module__} and {klass.__module__}"
                )
            out[name] = klass
    return out


def _pick(table: dict[str, type], name: str, kind: str, option: str) -> type:
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(sorted(table)) or "(none registered)"
        raise HashbenchError(f"{option}: unknown {kind} {name!r}; valid: {valid}") from None
