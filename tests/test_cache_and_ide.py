"""The feature cache (reuse, key, resume) and the IDE stage (training helps, resume is exact)."""

import json

import numpy as np
import pytest
import torch

from hashbench.backbones import resolve_weights
from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.errors import HashbenchError
from hashbench.features import FeatureCache, resolve_device
from hashbench.ide import IDEConfig, train_ide
from hashbench.training import warmup_cosine
from hashbench_datasets.synthetic import SyntheticPedestrians

SIZE = (64, 32)


@pytest.fixture(scope="module")
def setup():
    data = SyntheticPedestrians(n_train_ids=12, n_test_ids=4, images_per_id=6)
    backbone = MobileNetV2().load_weights()
    return data, data.splits(), backbone


def test_second_call_reuses_the_cache(setup, tmp_path):
    data, splits, backbone = setup
    cache = FeatureCache(tmp_path)
    maps, info = cache.trunk_maps(data, splits, backbone, "block13", SIZE, progress=False)
    assert maps["train"].shape == (len(splits["train"]), 96, 4, 2) and maps["train"].dtype == np.float16
    assert info["extract_s"] > 0
    again, info2 = cache.trunk_maps(data, splits, backbone, "block13", SIZE, progress=False)
    assert info2["extract_s"] == 0 and info2["key"] == info["key"]
    assert np.array_equal(again["query"], maps["query"])
    # another input size, cut or dataset option is another key
    _, other = cache.trunk_maps(data, {"query": splits["query"]}, backbone, "block10", SIZE, progress=False)
    assert other["key"] != info["key"]


def test_killed_extraction_resumes_where_it_stopped(setup, tmp_path, monkeypatch):
    data, splits, backbone = setup
    recs = {"train": splits["train"]}
    full, _ = FeatureCache(tmp_path / "a").trunk_maps(
        data, recs, backbone, "block13", SIZE, progress=False, batch_size=4
    )
    # kill the extraction after 68 images (rows are committed every 16 batches = 64 rows)
    original = SyntheticPedestrians.open_images

    def dying(self, records):
        for i, im in enumerate(original(self, records)):
            if i == 68:
                raise KeyboardInterrupt
            yield im

    monkeypatch.setattr(SyntheticPedestrians, "open_images", dying)
    cache = FeatureCache(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        cache.trunk_maps(data, recs, backbone, "block13", SIZE, progress=False, batch_size=4)
    folder = next((tmp_path / "b" / "trunk").iterdir())
    assert (
        not (folder / "train.npy").exists() and json.loads((folder / "train.rows").read_text())["rows"] == 64
    )
    seen = []

    def counting(self, records):
        seen.append(len(records))
        return original(self, records)

    monkeypatch.setattr(SyntheticPedestrians, "open_images", counting)
    resumed, info = cache.trunk_maps(data, recs, backbone, "block13", SIZE, progress=False, batch_size=4)
    assert seen == [len(recs["train"]) - 64]  # only the rest was read
    assert info["extracted_n"] == len(recs["train"]) - 64  # and the images/s of the log count only it
    assert np.array_equal(resumed["train"], full["train"])


def test_ide_training_learns_and_resumes_exactly(setup, tmp_path, monkeypatch):
    import hashbench.ide as ide

    data, splits, backbone = setup
    maps, _ = FeatureCache(tmp_path).trunk_maps(
        data, {"train": splits["train"]}, backbone, "block13", SIZE, progress=False
    )
    pids = np.array([r.pid for r in splits["train"]])
    cfg = IDEConfig(epochs=4, batch_size=16, lr=0.05)
    model, history = train_ide(maps["train"], pids, backbone.top("block13"), 1280, cfg, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["acc"] > history[0]["acc"]

    # killed right after the checkpoint of epoch 2 ...
    save = ide._atomic_save

    def save_then_die(obj, path):
        save(obj, path)
        if obj["epoch"] == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(ide, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_ide(maps["train"], pids, backbone.top("block13"), 1280, cfg, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(ide, "_atomic_save", save)
    # ... and resumed: epochs 3-4 only, ending with exactly the uninterrupted weights
    resumed, hist = train_ide(
        maps["train"], pids, backbone.top("block13"), 1280, cfg, checkpoint=ckpt, progress=False
    )
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def test_device_and_weight_sources():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(HashbenchError, match="--device"):
        resolve_device("tpu")
    with pytest.raises(HashbenchError, match="no such file"):
        resolve_weights("/nonexistent/weights.pth", None)


def test_url_weights_are_downloaded_once_and_checked(tmp_path, monkeypatch):
    import hashlib

    payload = tmp_path / "payload.pth"
    torch.save({"x": torch.zeros(1)}, payload)
    good = hashlib.sha256(payload.read_bytes()).hexdigest()[:8]
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        data = payload.read_bytes()
        if hash_prefix and not hashlib.sha256(data).hexdigest().startswith(hash_prefix):
            raise RuntimeError("invalid hash value")
        open(dst, "wb").write(data)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    path = resolve_weights(f"https://example.invalid/models/net-{good}.pth", tmp_path)
    assert path.read_bytes() == payload.read_bytes()
    resolve_weights(f"https://example.invalid/models/net-{good}.pth", tmp_path)
    assert calls == [(f"https://example.invalid/models/net-{good}.pth", good)]  # cached the second time
    with pytest.raises(HashbenchError, match="download failed"):
        resolve_weights("https://example.invalid/models/net-deadbeef.pth", tmp_path)
    assert not (tmp_path / "weights" / "net-deadbeef.pth").exists()
