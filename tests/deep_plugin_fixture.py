"""A throw-away third-party *deep* plugin, installed into a temporary site dir by the tests.

Its module imports only hashbench's public modules (``hashbench.deep``, ``hashbench.hookspecs``), never
``hashbench_methods``: what a deep method published by someone else can rely on.
"""

import textwrap
from pathlib import Path

MODULE = "tinydeep_hashbench_plugin"

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A third-party deep hashing method: the backbone's top, a linear hash layer, identity
    cross-entropy on the relaxed code plus a quantisation term."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from hashbench.deep import DeepHashing, HashLayer
    from hashbench.hookspecs import hookimpl


    class TinyHead(nn.Module):
        def __init__(self, channels, bits, n_ids):
            super().__init__()
            self.hash = HashLayer(channels, bits)
            self.classifier = nn.Linear(bits, n_ids)

        def forward(self, pooled):
            pre = self.hash(pooled[:, 0])
            relaxed = torch.sigmoid(pre)
            return {"pre": pre, "relaxed": relaxed, "logits": self.classifier(relaxed)}


    class TinyDeep(DeepHashing):
        name = "tinydeep"
        description = "a third-party test method: top + linear hash layer, identity loss on the relaxed code"
        sampler = "pk"

        def __init__(self, bits, seed=0, epochs=1, lr=0.05, P=4, K=2, quant_weight=0.1, finetune="top"):
            super().__init__(
                bits,
                seed,
                epochs=epochs,
                lr=lr,
                head_lr_mult=10.0,
                weight_decay=5e-4,
                warmup_epochs=0.0,
                flip=True,
                finetune=finetune,
            )
            self.P, self.K = int(P), int(K)
            self.quant_weight = float(quant_weight)

        def build_head(self, channels, n_ids, train, context):
            return TinyHead(channels, self.bits, n_ids)

        def loss(self, out, targets):
            ce = F.cross_entropy(out["logits"], targets["ids"])
            quant = (((2 * out["relaxed"] - 1).abs() - 1) ** 2).mean()
            return ce + self.quant_weight * quant, {"ce": float(ce.detach()), "quant": float(quant.detach())}

        def code_layout(self, schema=None):
            half = self.bits // 2
            return {"first": (0, half), "second": (half, self.bits)}


    @hookimpl
    def hashbench_register_methods():
        return [TinyDeep]
    '''
)


def install_tinydeep_plugin(site: Path) -> None:
    """Write the plugin module and a dist-info declaring its `hashbench` entry point into ``site``."""
    (site / f"{MODULE}.py").write_text(PLUGIN_SOURCE)
    dist = site / f"{MODULE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinydeep-hashbench-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[hashbench]\ntinydeep = {MODULE}\n")
