"""Engines that run the frozen backbone trunk for the feature cache (``--engine``).

``auto``         the default: ``onnxruntime`` on the CPU where it is installed (a dependency of
                 hashbench), else ``torch`` (on CUDA, or without ONNX Runtime); :func:`resolve_engine`;
``torch``        eager PyTorch, channels-last (CPU or CUDA);
``onnxruntime``  the trunk exported to ONNX (``torch.onnx.export``, TorchScript exporter, dynamic batch)
                 and run by ONNX Runtime's CPU provider (``pip install onnxruntime onnx``): 2.3 to 3.9
                 times the images per second of extraction before engines, measured on two 2-core
                 machines (README, "Trunk engines");
``openvino``     the trunk converted by ``openvino.convert_model`` and compiled for the CPU with the
                 latency hint (``pip install openvino``).

Every engine uses as many threads as torch does (``torch.get_num_threads()``). The non-torch engines are
CPU only. Their maps equal eager torch's up to float32 rounding (max |difference| about 1e-5 on maps of
magnitude 3), i.e. at most one float16 step apart once stored (tests/test_engines.py checks it); the
engine is part of the trunk key (:class:`hashbench.keys.TrunkKey`), so maps of two engines never mix in
one cache entry and a row says which engine made its features.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import HashbenchError

ENGINES = ("torch", "onnxruntime", "openvino")
AUTO = "auto"  # --engine default: resolve_engine()
INSTALL = {"onnxruntime": "onnxruntime onnx", "openvino": "openvino"}

Engine = Callable[[torch.Tensor], np.ndarray]  # (B, 3, H, W) float32 -> (B, C, h, w) float16


def check_engine(name: str, device: torch.device | str = "cpu") -> None:
    """A known engine that can run on ``device`` and is installed; one-line error naming ``--engine``."""
    if name not in ENGINES:
        raise HashbenchError(f"--engine {name!r}: expected {AUTO} or one of {', '.join(ENGINES)}")
    if name != "torch" and torch.device(device).type != "cpu":
        raise HashbenchError(
            f"--engine {name} runs on the CPU only; with --device {device} use --engine torch"
        )
    if name == "onnxruntime":
        _require("onnxruntime", "onnx")
    elif name == "openvino":
        _require("openvino")


def resolve_engine(name: str, device: torch.device | str = "cpu") -> str:
    """The engine a run uses: ``auto`` is ``onnxruntime`` on the CPU when ONNX Runtime and ONNX are
    installed, else ``torch``; any other name is checked (:func:`check_engine`) and returned."""
    if name == AUTO:
        cpu = torch.device(device).type == "cpu"
        return "onnxruntime" if cpu and not _missing("onnxruntime", "onnx") else "torch"
    check_engine(name, device)
    return name


def _missing(*modules: str) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def _require(*modules: str) -> None:
    missing = _missing(*modules)
    if missing:
        raise HashbenchError(
            f"--engine needs {', '.join(missing)}: pip install {' '.join(missing)} (or use --engine torch)"
        )


def make_engine(name: str, trunk: nn.Module, input_size: tuple[int, int], device) -> Engine:
    """A function running ``trunk`` (eval mode, no gradients) on a batch with engine ``name``."""
    check_engine(name, device)
    trunk = trunk.eval()
    if name == "torch":
        module = trunk.to(device, memory_format=torch.channels_last)  # about 30 % faster on CPU

        def run_torch(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                y = module(x.to(device, memory_format=torch.channels_last))
            return y.to("cpu", torch.float16).numpy()

        return run_torch
    example = torch.zeros(2, 3, *input_size)
    threads = torch.get_num_threads()
    if name == "onnxruntime":
        session = _onnx_session(trunk, example, dynamic_batch=True)

        def run_ort(x: torch.Tensor) -> np.ndarray:
            return session.run(None, {"x": x.contiguous().numpy()})[0].astype(np.float16)

        return run_ort
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(trunk.float().to("cpu"), example_input=example)
    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {  # f32: where the CPU has bf16/AMX, OpenVINO would otherwise compute in bf16
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )

    def run_ov(x: torch.Tensor) -> np.ndarray:
        return np.asarray(compiled(x.contiguous().numpy())[0]).astype(np.float16)

    return run_ov


def _onnx_session(module: nn.Module, example: torch.Tensor, dynamic_batch: bool):
    """``module`` (float32, CPU) exported to ONNX (TorchScript exporter, opset 17, input ``x``, output
    ``y``; the batch axis dynamic or fixed at ``len(example)``) in an ONNX Runtime CPU session with as
    many threads as torch."""
    import onnxruntime as ort

    buf = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.float().to("cpu"),
            example,
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
            opset_version=17,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def batch_runner(name: str, module: nn.Module, example: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
    """``module`` (eval mode, float32, CPU; one tensor in, one tensor out) run by ONNX Runtime on
    batches of exactly ``len(example)`` rows: a function (N, ...) float array -> (N, ...) float32 array
    that pads its last batch. A fixed batch, so that a module whose graph depends on the batch size
    (strips stacked on the batch, say) is exported right. ``name``: ``onnxruntime`` (the one supported)."""
    if name != "onnxruntime":
        raise HashbenchError(f"--engine {name!r}: only onnxruntime runs these modules (or use torch)")
    check_engine(name)
    session = _onnx_session(module.eval(), example.float().contiguous(), dynamic_batch=False)
    batch = len(example)

    def run(x: np.ndarray) -> np.ndarray:
        out = None
        for s in range(0, len(x), batch):
            part = np.ascontiguousarray(x[s : s + batch], dtype=np.float32)
            n = len(part)
            if n < batch:
                part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), np.float32)])
            y = session.run(None, {"x": part})[0][:n]
            if out is None:
                out = np.empty((len(x), *y.shape[1:]), dtype=np.float32)
            out[s : s + n] = y
        return out if out is not None else np.empty((0,), np.float32)

    return run
