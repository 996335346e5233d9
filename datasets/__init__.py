"""Built-in dataset plugins of hashbench (import name ``hashbench_datasets``).

Registered through the ``hashbench`` entry-point group exactly like a third-party plugin.
"""

from hashbench.hookspecs import hookimpl


@hookimpl
def hashbench_register_datasets():
    from .dukemtmc import DukeMTMCReID
    from .market1501 import Market1501
    from .synthetic import SyntheticPedestrians

    return [Market1501, DukeMTMCReID, SyntheticPedestrians]
