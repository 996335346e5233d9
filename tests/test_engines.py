"""Trunk engines (``--engine``): maps equal eager torch's within float16 rounding, keys and errors.

The ONNX Runtime and OpenVINO tests skip where those packages are not installed (``pip install -e
.[engines]``); the ``market`` test reads real Market-1501 images and skips without them.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from hashbench.backbones import to_tensor
from hashbench.backbones.mobilenetv2 import MobileNetV2
from hashbench.engines import ENGINES, check_engine, make_engine, resolve_engine
from hashbench.errors import HashbenchError
from hashbench.features import FeatureCache, prefetched, trunk_key
from hashbench.keys import TrunkKey, digest_of
from hashbench_datasets.synthetic import SyntheticPedestrians


def _installed(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


NON_TORCH = [
    pytest.param(
        "onnxruntime",
        marks=pytest.mark.skipif(not _installed("onnxruntime", "onnx"), reason="onnxruntime not installed"),
    ),
    pytest.param(
        "openvino", marks=pytest.mark.skipif(not _installed("openvino"), reason="openvino not installed")
    ),
]


@pytest.fixture(scope="module")
def mobilenet():
    return MobileNetV2().load_weights().eval()


def fp16_steps(a: np.ndarray, b: np.ndarray) -> float:
    """The largest difference of two float16 arrays in float16 steps at their magnitude.

    Magnitudes are floored at 2**-6 (a step of 2**-16, about 1.5e-5): below it, float32's own rounding
    in another kernel order (about 1e-5 absolute on maps of magnitude 3) is more than a float16 step.
    """
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    magnitude = np.maximum(np.maximum(np.abs(a32), np.abs(b32)), 2.0**-6)
    spacing = np.spacing(magnitude.astype(np.float16)).astype(np.float32)
    return float((np.abs(a32 - b32) / spacing).max())


def assert_maps_agree(engine: str, mobilenet, images, input_size) -> None:
    x = to_tensor(images, input_size)
    ref = make_engine("torch", mobilenet.trunk("block13"), input_size, "cpu")(x)
    out = make_engine(engine, mobilenet.trunk("block13"), input_size, "cpu")(x)
    assert out.dtype == np.float16 and out.shape == ref.shape == (
        len(images),
        96,
        *(s // 16 for s in input_size),
    )
    assert float(np.abs(ref.astype(np.float32)).max()) > 1.0  # real activations, not zeros
    # float32 rounding of another kernel order: at most one float16 step apart once stored
    assert fp16_steps(out, ref) <= 1.0, engine
    assert np.mean(out != ref) < 0.05  # and most values identical (about 3 % differ by one step)


@pytest.mark.parametrize("engine", NON_TORCH)
def test_maps_equal_torch_within_float16_rounding(engine, mobilenet):
    data = SyntheticPedestrians(n_train_ids=4, n_test_ids=4)
    records = data.splits()["train"][:10]  # 10: a batch size the exported graph was not traced with
    assert_maps_agree(engine, mobilenet, list(data.open_images(records)), (256, 128))


@pytest.mark.market
@pytest.mark.parametrize("engine", NON_TORCH)
def test_maps_equal_torch_on_market_images(engine, mobilenet, market_root):
    from hashbench_datasets.market1501 import Market1501

    market = Market1501(market_root)
    splits = market.splits()
    records = splits["query"][:16] + splits["gallery"][:16] + splits["train"][:16]
    assert_maps_agree(engine, mobilenet, list(market.open_images(records)), (256, 128))


def test_unknown_engine_and_cuda_are_one_line_errors():
    with pytest.raises(
        HashbenchError, match=r"--engine 'tensorrt': expected auto or one of torch, onnxruntime"
    ):
        check_engine("tensorrt")
    with pytest.raises(HashbenchError, match=r"--engine 'tensorrt'"):
        resolve_engine("tensorrt")
    for engine in ENGINES[1:]:
        with pytest.raises(HashbenchError, match=f"--engine {engine} runs on the CPU only"):
            check_engine(engine, "cuda")
    check_engine("torch", "cuda")  # torch runs anywhere; whether CUDA exists is --device's business


def test_engine_is_part_of_the_key_and_torch_keys_are_unchanged():
    key = TrunkKey("synthetic", "d", "mobilenetv2", "w", "block13", (128, 64), "t")
    assert key.engine == "torch" and "engine" not in key.spec()
    legacy = {k: v for k, v in asdict(key).items() if k != "engine"}
    assert key.digest() == digest_of(legacy)  # caches and rows made before engines existed still match
    other = replace(key, engine="onnxruntime")
    assert other.spec()["engine"] == "onnxruntime" and other.digest() != key.digest()


def test_auto_is_onnxruntime_on_the_cpu_where_installed_else_torch(monkeypatch):
    import importlib.util

    have = _installed("onnxruntime", "onnx")
    assert resolve_engine("auto") == ("onnxruntime" if have else "torch")
    assert resolve_engine("auto", "cuda") == "torch"  # the CPU engines never run on CUDA
    assert resolve_engine("torch") == "torch" and resolve_engine("auto", torch.device("cpu")) in ENGINES
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == "onnxruntime" else real(m, *a)
    )
    assert resolve_engine("auto") == "torch"  # the fallback where ONNX Runtime is missing


def test_a_default_run_records_its_resolved_engine(tmp_path):
    """The default (auto) run's config names the engine it resolved to; --engine torch records none."""
    from hashbench.pipeline import Pipeline, RunConfig

    base = dict(dataset="synthetic", dataset_options={"n_train_ids": 4, "n_test_ids": 4}, device="cpu")
    auto = Pipeline.setup(RunConfig(**base, cache_dir=tmp_path))
    torch_run = Pipeline.setup(RunConfig(**base, cache_dir=tmp_path, engine="torch"))
    assert auto.engine == resolve_engine("auto") and torch_run.engine == "torch"
    assert "engine" not in torch_run.base_config and torch_run.keys.trunk.engine == "torch"
    if auto.engine != "torch":
        assert auto.base_config["engine"] == auto.engine == auto.keys.trunk.engine
        assert auto.keys.trunk.digest() != torch_run.keys.trunk.digest()


def test_cache_entries_of_two_engines_are_apart(tmp_path, mobilenet):
    """Maps of another engine are another cache entry (never mixed into torch's), and equal them."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    data = SyntheticPedestrians(n_train_ids=4, n_test_ids=4)
    splits = {"train": data.splits()["train"][:20]}
    cache = FeatureCache(tmp_path)
    maps = {}
    for engine in ("torch", "onnxruntime"):
        key = trunk_key(data, mobilenet, "block13", (64, 32), engine)
        arrays, _ = cache.trunk_maps(
            data, splits, mobilenet, "block13", (64, 32), "cpu", batch_size=8, progress=False, key=key
        )
        maps[engine] = np.asarray(arrays["train"])
        assert (cache.trunk_dir(key) / "manifest.json").is_file()
    keys = [trunk_key(data, mobilenet, "block13", (64, 32), e) for e in ("torch", "onnxruntime")]
    assert cache.trunk_dir(keys[0]) != cache.trunk_dir(keys[1])
    assert fp16_steps(maps["onnxruntime"], maps["torch"]) <= 1.0


def test_prefetched_keeps_order_raises_and_stops():
    out = list(prefetched(iter([[1, 2], [3], [4, 5, 6]]), lambda b: sum(b)))
    assert out == [(2, 3), (1, 3), (3, 15)]

    def failing(batch):
        if batch == [3]:
            raise OSError("bad image 3")
        return batch

    with pytest.raises(OSError, match="bad image 3"):
        list(prefetched(iter([[1], [2], [3], [4]]), failing))
    seen = []

    def source():
        for i in range(100):
            seen.append(i)
            yield [i]

    gen = prefetched(source(), lambda b: b)
    assert next(gen) == (1, [0])
    gen.close()  # the worker stops: at most the batch in flight was read beyond the one consumed
    assert len(seen) <= 3


def test_cli_rejects_an_unknown_engine(tmp_path, capsys):
    from hashbench.cli import main

    code = main(["run", "--dataset", "synthetic", "--engine", "tensorrt", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--engine 'tensorrt'" in err[0]
    assert not (tmp_path / "r" / "results.csv").exists()


def test_torch_engine_matches_the_trunk_module(mobilenet):
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = mobilenet.trunk("block13")(x).to(torch.float16).numpy()
    assert np.array_equal(make_engine("torch", mobilenet.trunk("block13"), (64, 32), "cpu")(x), ref)
