"""Hook specifications of hashbench.

A plugin is any module or object with functions marked ``@hashbench.hookspecs.hookimpl`` whose names
match the specifications below. Packages publish plugins through the ``hashbench`` entry-point group,
for example in ``pyproject.toml``::

    [project.entry-points.hashbench]
    mymethods = "my_package.hashbench_plugin"

Built-in methods, datasets and backbones are registered exactly the same way. Hooks *register
classes*; hashbench instantiates them itself, so a plugin has no import-time side effects.
"""

from __future__ import annotations

import pluggy

PROJECT = "hashbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hashbench_register_methods() -> list[type]:
    """Return hashing method classes (subclasses of :class:`hashbench.method.HashMethod`).

    Each class has a unique ``name`` (used on the command line) and a one-line ``description``.
    """


@hookspec
def hashbench_register_datasets() -> list[type]:
    """Return dataset classes (subclasses of :class:`hashbench.data.Dataset`) with unique ``name``."""


@hookspec
def hashbench_register_backbones() -> list[type]:
    """Return backbone classes (subclasses of :class:`hashbench.backbones.Backbone`) with unique ``name``."""


@hookspec
def hashbench_register_decoders() -> list[type]:
    """Return generic attribute decoder classes (subclasses of :class:`hashbench.decoders.Decoder`) with
    unique ``name``: readers of attributes off any method's codes, picked by ``hashbench run --decoders``.

    hashbench's own (``naive-bayes``, ``logistic``) are registered the same way. A decoder that belongs
    to one method is not registered here: the method returns it from ``HashMethod.decoder()``.
    """
