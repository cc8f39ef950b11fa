"""Runtimes behind one protocol (engine.runtime.base.Backend): torch and onnxruntime."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

from engine.api import (
    BACKENDS,
    ONNX_BACKENDS,
    EngineError,
    InvalidRequestError,
    LoraChoice,
    ModelOptions,
)

# "auto" picks onnxruntime on a CPU for a UNet up to this size (about 100M fp32 parameters):
# its export takes seconds and its frames are ~2x faster than eager torch there
# (docs/benchmarks.md); bigger models would spend minutes and gigabytes exporting first.
AUTO_ONNX_MAX_UNET_BYTES = 400 * 2**20
# OnnxBackend.device names the provider in use; create_backend takes the device it came from.
PROVIDER_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                    "TensorrtExecutionProvider": "tensorrt", "DmlExecutionProvider": "directml",
                    "CoreMLExecutionProvider": "coreml", "OpenVINOExecutionProvider": "openvino"}
ONNX_ONLY_DEVICES = ("tensorrt", "directml", "coreml", "openvino")  # "auto" picks onnx for them

log = logging.getLogger("engine.runtime")
_torch_threads_before_onnx: list[int] = []  # torch's count before an onnx backend lowered it


def lower_torch_threads_for_onnx() -> None:
    """One torch thread for the onnx generator's glue ops (tensors of a few k elements stall
    for milliseconds in an OpenMP pool whenever another process holds a core)."""
    import torch

    if torch.get_num_threads() > 1:
        _torch_threads_before_onnx.append(torch.get_num_threads())
        torch.set_num_threads(1)


def restore_torch_threads() -> None:
    """Give torch back the threads an onnx backend took, for a torch backend loaded after it."""
    import torch

    if _torch_threads_before_onnx and torch.get_num_threads() == 1:
        torch.set_num_threads(_torch_threads_before_onnx[0])
    _torch_threads_before_onnx.clear()


def requested_device(backend) -> str:
    """The create_backend device that loads another model where this backend runs."""
    device = str(backend.device)
    return PROVIDER_DEVICES.get(device, device)


def load_teacher_backend(backend):
    """The backend of a student's teacher (its student.json "teacher"): the same runtime on
    the device the student runs on."""
    teacher_id = str(backend.student_config.get("teacher") or "")
    if not teacher_id:
        raise InvalidRequestError("This student's student.json names no teacher to compare with.")
    return create_backend(teacher_id, backend.name, requested_device(backend))


def onnx_unsupported_reason(model: str, options: ModelOptions | None = None) -> str | None:
    """Why the ONNX export cannot run this model as asked (an SDXL-family model, a replaced
    UNet or other load options), or None when it can."""
    from engine.runtime.loading import resolve_model_dir
    from engine.runtime.single_file import is_checkpoint_file

    if is_checkpoint_file(model):
        return "The ONNX export needs a model folder, not a single-file checkpoint"
    if options is not None and options.changes_model:
        return "The ONNX export covers a model as its folder stores it, without load options"
    folder = resolve_model_dir(model)
    if (folder / "text_encoder_2").is_dir():
        return "The ONNX export does not cover SDXL's second text encoder and size conditioning"
    return None


def choose_backend(model: str, device: str = "auto", options: ModelOptions | None = None) -> str:
    """What "auto" means for this model and device: onnx on a CPU for a small model (or an
    onnx export folder) or on a device only onnx has, torch on CUDA, MPS or for a big model."""
    from engine.runtime.loading import resolve_model_dir
    from engine.runtime.torch_backend import pick_device

    if device.split(":")[0] in ONNX_ONLY_DEVICES:
        return "onnx"
    if pick_device(device) != "cpu" or importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    if onnx_unsupported_reason(model, options):
        return "torch"
    folder = resolve_model_dir(model)
    if (folder / "manifest.json").is_file() and not (folder / "unet").is_dir():
        return "onnx"
    weights = [path for path in Path(folder, "unet").glob("*") if path.suffix in
               (".safetensors", ".bin")]
    size = sum(path.stat().st_size for path in weights)
    return "onnx" if 0 < size <= AUTO_ONNX_MAX_UNET_BYTES else "torch"


def torch_instead(model: str, device: str, options: ModelOptions | None, notice: str):
    """The torch backend, with a logged notice of why it runs instead of onnx."""
    log.warning(notice)
    runtime = create_backend(model, "torch", device, options=options)
    runtime.notice = notice
    return runtime


def torch_only_reason(model: str, backend: str, options: ModelOptions | None, control: bool,
                      loras: Sequence[LoraChoice], decoder: str | None) -> str | None:
    """Why only PyTorch can run this request to load (control models, LoRAs, a fast decoder,
    or what onnx_unsupported_reason names), or None when the onnx backends can."""
    if control:
        return (f"The {backend} backend does not run control models (ControlNet, T2I-Adapter) "
                "yet")
    if loras or decoder:
        return "LoRAs and a fast decoder run on the PyTorch backend"
    return onnx_unsupported_reason(model, options)


def create_backend(model: str, backend: str = "torch", device: str = "auto",
                   onnx_threads: int | None = None, options: ModelOptions | None = None,
                   control: bool = False, loras: Sequence[LoraChoice] = (),
                   decoder: str | None = None):
    """Load a model into the named backend ("auto": see choose_backend); onnx_threads sets
    onnxruntime's intra-op threads (default: one per physical core); options: see ModelOptions.
    control: a control model (ControlNet, T2I-Adapter) will run with it; loras and decoder:
    LoRAs to fuse and a fast decoder folder. What only PyTorch runs makes auto choose torch
    and onnx fall back to torch with a logged notice."""
    if backend not in ("auto", "torch", *ONNX_BACKENDS):
        raise EngineError(f"Unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}.")
    onnx_only_device = device.split(":")[0] in ONNX_ONLY_DEVICES
    reason = None
    if backend != "torch" and (control or loras or decoder or not onnx_only_device):
        reason = torch_only_reason(model, backend, options, control, loras, decoder)
    torch_device = "auto" if onnx_only_device else device
    if backend == "auto":
        backend = "torch" if reason else choose_backend(model, device, options)
    if backend == "torch":
        runtime = load_torch_backend(model, torch_device if reason else device, options)
    elif reason:
        runtime = torch_instead(model, torch_device, options, f"{reason}; running PyTorch instead.")
    else:
        return load_onnx_backend(model, device, onnx_threads, backend, options)
    if loras:
        runtime.set_loras(list(loras))
    if decoder:
        runtime.set_decoder(decoder)
    return runtime


def load_torch_backend(model: str, device: str, options: ModelOptions | None):
    from engine.runtime.torch_backend import TorchBackend

    restore_torch_threads()
    return TorchBackend.load(model, device, options=options)


def load_onnx_backend(model: str, device: str, onnx_threads: int | None, backend: str,
                      options: ModelOptions | None):
    """An OnnxBackend, or torch with a notice when the export cache cannot be written."""
    try:
        from engine.runtime.onnx_backend import NoExportCacheError, OnnxBackend
    except ModuleNotFoundError as error:
        raise EngineError("The ONNX Runtime backend is not available in this build.") from error
    try:
        return OnnxBackend.load(model, device, onnx_threads, int8=backend == "onnx-int8")
    except NoExportCacheError as error:  # a read-only model folder and home
        return torch_instead(model, device, options, f"{error} Running PyTorch instead.")
