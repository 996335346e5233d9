"""A throw-away third-party plugin, installed into a temporary site dir by the tests."""

import textwrap
from pathlib import Path

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A third-party hashbench plugin: a method that hashes features with the sign of a fixed random
    projection of their first few dimensions (deliberately weak)."""
    import numpy as np

    from hashbench.hookspecs import hookimpl
    from hashbench.method import HashMethod, sign_to_bits


    class Throwaway(HashMethod):
        name = "throwaway"
        description = "a third-party test method: sign of a random projection"
        consumes = frozenset({"features"})

        def __init__(self, bits, seed=0, scale=1.0):
            super().__init__(bits, seed)
            self.scale = scale

        def fit(self, train, context=None):
            x = train.require("features")
            self.mean_ = x.mean(0)
            self.w_ = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits)) * self.scale
            return self

        def encode(self, view):
            return sign_to_bits((view.require("features") - self.mean_) @ self.w_)


    @hookimpl
    def hashbench_register_methods():
        return [Throwaway]
    '''
)


def install_throwaway_plugin(site: Path) -> None:
    """Write the plugin module and a dist-info declaring its `hashbench` entry point into ``site``."""
    (site / "throwaway_hashbench_plugin.py").write_text(PLUGIN_SOURCE)
    dist = site / "throwaway_hashbench_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-hashbench-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hashbench]\nthrowaway = throwaway_hashbench_plugin\n")
