"""Built-in hashing method plugins of hashbench (import name ``hashbench_methods``).

Registered through the ``hashbench`` entry-point group exactly like a third-party plugin.
"""

from hashbench.hookspecs import hookimpl


@hookimpl
def hashbench_register_methods():
    from .csq import CSQ
    from .ctf import CtF
    from .dbh import DBH
    from .deepssh import DeepSSH
    from .dpsh import DPSH
    from .dsh import DSH
    from .greedyhash import GreedyHash
    from .hashnet import HashNet
    from .itq import ITQ
    from .ksh import KSH
    from .lsh import LSH
    from .pdh import PDH
    from .sdh import SDH

    return [LSH, ITQ, KSH, SDH, DBH, PDH, DeepSSH, DPSH, DSH, HashNet, GreedyHash, CSQ, CtF]
