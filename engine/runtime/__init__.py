"""Runtimes behind one protocol (engine.runtime.base.Backend): torch and onnxruntime."""

from __future__ import annotations

from engine.api import EngineError

BACKENDS = ("torch", "onnx")
# OnnxBackend.device names the provider in use; create_backend takes the device it came from.
PROVIDER_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt"}


def requested_device(backend) -> str:
    """The create_backend device that loads another model where this backend runs."""
    device = str(backend.device)
    return PROVIDER_DEVICES.get(device, device)


def create_backend(model: str, backend: str = "torch", device: str = "auto"):
    """Load a model folder into the named backend."""
    if backend == "torch":
        from engine.runtime.torch_backend import TorchBackend

        return TorchBackend.load(model, device)
    if backend == "onnx":
        try:
            from engine.runtime.onnx_backend import OnnxBackend
        except ModuleNotFoundError as error:
            raise EngineError("The ONNX Runtime backend is not available in this build.") from error
        return OnnxBackend.load(model, device)
    raise EngineError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
