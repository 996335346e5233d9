"""ResNet-50 (He et al., CVPR 2016) in plain torch, torchvision's layout and parameter names.

Default weights: torchvision's published ImageNet state dict (IMAGENET1K_V1). Offline, pass the
file with ``--weights PATH``; online, ``--weights imagenet`` downloads it once into the cache and
checks the SHA-256 prefix in its name.
"""

from __future__ import annotations

from torch import nn

from . import Backbone

TORCHVISION_RESNET50_V1 = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(Backbone):
    name = "resnet50"
    description = (
        "ResNet-50 (torchvision ImageNet weights from --weights PATH, or downloaded with checksum), 2048-d"
    )
    # index into stages(): [stem, layer1, layer2, layer3, layer4]
    cuts = {"layer2": 3, "layer3": 4}
    default_cut = "layer3"
    out_channels = 2048

    def __init__(self, weights="imagenet", last_stride: int = 2) -> None:
        super().__init__(weights)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._cin = 64
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, last_stride)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, width: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self._cin != width * 4:
            down = nn.Sequential(
                nn.Conv2d(self._cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4)
            )
        layers = [Bottleneck(self._cin, width, stride, down)]
        self._cin = width * 4
        layers += [Bottleneck(self._cin, width) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        for stage in self.stages():
            x = stage(x)
        return x

    def imagenet_source(self) -> str:
        return TORCHVISION_RESNET50_V1
