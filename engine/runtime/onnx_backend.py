"""onnxruntime backend: the installed providers (TensorRT > CUDA > DirectML > CoreML >
OpenVINO > CPU), sessions created once and reused.

OnnxBackend.load(model) takes a model folder (its export is built in the user's cache folder
on first use; an earlier version's export in model_dir/onnx is read while current) or an
export folder with manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engine.api import EngineError, ModelLoadError
from engine.diffusion.schedule import NoiseSchedule
from engine.paths import cache_dir, unwritable_message
from engine.runtime import lower_torch_threads_for_onnx
from engine.runtime.loading import resolve_model_dir
from engine.runtime.onnx_export import (
    cache_dir_for,
    can_write_export,
    export_model,
    precision_of,
    resolve_export,
)
from engine.runtime.text import TextEmbedding, resolve_package_model_path

log = logging.getLogger("engine.runtime.onnx")

# Every provider the backend knows, in the order "auto" prefers them. Only the CPU and CUDA
# providers are tested on hardware here; DirectML (Windows GPUs), CoreML (Apple) and OpenVINO
# (Intel) are chosen by pick_providers alone and run fp32 graphs, as the CPU does.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider",
                  "CoreMLExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PROVIDER_ORDER[:2]  # fp16 graphs
CPU_PROVIDER = "CPUExecutionProvider"
# --device for onnx: the providers it may use, best first (the CPU runs what they cannot)
DEVICE_PROVIDERS = {
    "auto": PROVIDER_ORDER,
    "cpu": (CPU_PROVIDER,),
    "cuda": ("CUDAExecutionProvider", CPU_PROVIDER),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_PROVIDER),
    "directml": ("DmlExecutionProvider", CPU_PROVIDER),
    "coreml": ("CoreMLExecutionProvider", CPU_PROVIDER),
    "openvino": ("OpenVINOExecutionProvider", CPU_PROVIDER),
}
# A device whose own provider is missing: what it is called, and the runtime that brings it.
MISSING_RUNTIME = {
    "cuda": ("CUDA", "pip install onnxruntime-gpu (the gpu extra) in place of onnxruntime"),
    "tensorrt": ("CUDA", "pip install onnxruntime-gpu (the gpu extra) in place of onnxruntime"),
    "directml": ("DirectML", "on Windows, pip install onnxruntime-directml (the directml extra) "
                             "in place of onnxruntime"),
    "coreml": ("CoreML", "on macOS, pip install onnxruntime (its CoreML provider is built in)"),
    "openvino": ("OpenVINO", "pip install onnxruntime-openvino (the openvino extra) in place of "
                             "onnxruntime"),
}
THREADS_ENV = "DMD_ORT_THREADS"
SPIN_ENV = "DMD_ORT_SPIN"


class BrokenExportError(EngineError):
    """onnxruntime could not open a graph of an export folder (truncated, damaged)."""


class NoExportCacheError(EngineError):
    """A model has no current ONNX export and nowhere writable to put one."""


def import_ort():
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineError("onnxruntime is not installed; pip install onnxruntime "
                          "(or onnxruntime-gpu for CUDA).") from error
    return onnxruntime


def pick_providers(device: str = "auto", available: list[str] | None = None) -> list[str]:
    """Providers in priority order for an onnx --device (DEVICE_PROVIDERS), among those this
    onnxruntime offers (available: onnxruntime.get_available_providers()); a device whose
    provider is missing is one sentence naming the runtime to install."""
    if available is None:
        available = import_ort().get_available_providers()
    kind = device.split(":")[0]
    wanted = DEVICE_PROVIDERS.get(kind)
    if wanted is None:
        raise EngineError(f"Unknown device {device!r} for onnx; use "
                          f"{', '.join(DEVICE_PROVIDERS)}.")
    chosen = [provider for provider in wanted if provider in available]
    if kind in MISSING_RUNTIME and chosen[:1] in ([], [CPU_PROVIDER]):
        name, fix = MISSING_RUNTIME[kind]
        raise EngineError(f"{name} was requested but onnxruntime has no {name} provider; "
                          f"{fix}, or use --device cpu.")
    return chosen or [CPU_PROVIDER]


def tensorrt_cache_dir(export_folder: Path) -> Path:
    """TensorRT's engine cache for an export folder, in the user's cache folder."""
    key = hashlib.sha1(str(Path(export_folder).resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "tensorrt" / key


def gpu_index(device: str) -> int:
    """The GPU number of "cuda:N" / "tensorrt:N" (0 when none is given)."""
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise EngineError(f"Bad device {device!r}; write cuda:N with N a GPU number.")
    return int(index)


def default_threads() -> int:
    """Intra-op threads: $DMD_ORT_THREADS, else the physical core count (at most 8)."""
    # Measured on the 2-core Xeon (docs/benchmarks.md): one intra-op thread per physical core.
    if os.environ.get(THREADS_ENV, "").isdigit():
        return max(1, int(os.environ[THREADS_ENV]))
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    return max(1, min(int(cores), 8))


def spinning_allowed() -> bool:
    """Whether intra-op threads spin inside a run: $DMD_ORT_SPIN 0 turns it off (default on)."""
    value = os.environ.get(SPIN_ENV, "1").strip()
    if value not in ("0", "1"):
        raise EngineError(f"{SPIN_ENV} must be 0 or 1, not {value!r}.")
    return value == "1"


def load_tokenizer(source_dir: Path):
    """The tokenizer of a model folder: tokenizer/ or the text_encoder_package's folder."""
    from transformers import AutoTokenizer

    folder = source_dir / "tokenizer"
    if not folder.is_dir():
        index_path = source_dir / "model_index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        if not index.get("text_encoder_package"):
            raise ModelLoadError(f"{source_dir} has no tokenizer/ folder.")
        folder = resolve_package_model_path(index["text_encoder_package"])
    return AutoTokenizer.from_pretrained(str(folder))


class OnnxBackend:
    """Runs the four exported graphs with onnxruntime; tensors cross as torch CPU tensors."""

    name = "onnx"

    def __init__(self, folder: Path, manifest: dict, providers: list[str], threads: int,
                 gpu: int = 0):
        ort = import_ort()
        self.folder, self.manifest, self.threads, self.gpu = folder, manifest, threads, gpu
        self.model_dir = Path(manifest["source_model_dir"])
        self.image_size = int(manifest["image_size"])
        self.latent_size = int(manifest["latent_size"])
        self.latent_channels = int(manifest["latent_channels"])
        self.conditioning_channels = int(manifest["conditioning_channels"])
        self.pooled_text = bool(manifest["pooled_text"])
        self.text_config = manifest["text"]
        self.np_dtype = np.float16 if manifest["dtype"] == "float16" else np.float32
        self.precision = precision_of(manifest)
        self.name = "onnx-int8" if self.precision == "int8" else "onnx"
        self.schedule = NoiseSchedule.from_folder(self.model_dir / "scheduler")
        student_path = self.model_dir / "student.json"
        self.student_config = json.loads(student_path.read_text()) if student_path.is_file() \
            else {}
        self.tokenizer = load_tokenizer(self.model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin inside a run (measured 20% faster frames on 2 idle cores) but stop
        # when it ends, so the Python glue and the GUI thread get the cores between runs.
        # On cores that another busy process shares, spinning doubles frame times: such a
        # process should run niced (the Engine tab's trainer does), or set DMD_ORT_SPIN=0.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if spinning_allowed() else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        provider_args = [self.provider_options(p) for p in providers]
        self.sessions = {}
        for part, entry in manifest["files"].items():
            try:
                self.sessions[part] = ort.InferenceSession(
                    str(folder / entry["file"]), sess_options=options,
                    providers=list(zip(providers, provider_args, strict=True)))
            except Exception as error:  # onnxruntime raises its own types
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise BrokenExportError(f"The ONNX graph {folder / entry['file']} cannot be "
                                        f"loaded ({first[:200]}).") from error
        self.device = self.sessions["unet"].get_providers()[0]
        lower_torch_threads_for_onnx()
        log.info("onnx backend: %s, %d intra-op threads, %s graphs from %s", self.device,
                 threads, self.precision, folder)

    def provider_options(self, provider: str) -> dict:
        if provider == "TensorrtExecutionProvider":
            return {"device_id": self.gpu, "trt_fp16_enable": self.np_dtype == np.float16,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(tensorrt_cache_dir(self.folder))}
        if provider in ("CUDAExecutionProvider", "DmlExecutionProvider"):
            return {"device_id": self.gpu}
        return {}

    def load_teacher(self):
        """The student's teacher (student.json "teacher") on this runtime and device."""
        from engine.runtime import load_teacher_backend

        return load_teacher_backend(self)

    @classmethod
    def load(cls, model: str, device: str = "auto", threads: int | None = None,
             int8: bool = False) -> OnnxBackend:
        """Open (exporting first if needed) the ONNX graphs of a model or export folder: fp16
        on a GPU provider, fp32 on the CPU, or with int8 the CPU's quantized graphs."""
        if int8 and device.split(":")[0] not in ("auto", "cpu"):
            raise EngineError("int8 graphs run on the CPU; use --device cpu, or the onnx "
                              "backend (fp16) on a GPU.")
        providers, gpu = pick_providers("cpu" if int8 else device), gpu_index(device)
        precision = "int8" if int8 else "fp16" if providers[0] in GPU_PROVIDERS else "fp32"
        folder, manifest = resolve_export(model, precision)
        threads = threads or default_threads()
        if folder == Path(model).expanduser():  # an export folder given directly: the user's
            return cls(folder, manifest, providers, threads, gpu)
        if manifest is None:
            manifest = cls.export(model, folder, precision)
            return cls(folder, manifest, providers, threads, gpu)
        try:
            return cls(folder, manifest, providers, threads, gpu)
        except BrokenExportError as error:  # a cached export damaged since: rebuilt once
            log.warning("%s Deleting the export and exporting again.", error)
            cached = cache_dir_for(resolve_model_dir(model), precision)
            if folder == cached:
                shutil.rmtree(folder, ignore_errors=True)
            folder = cached  # an earlier version's export in the model folder stays as it is
            manifest = cls.export(model, folder, precision)
            return cls(folder, manifest, providers, threads, gpu)

    @staticmethod
    def export(model: str, folder: Path, precision: str) -> dict:
        """Export model into the cache folder, or NoExportCacheError when it is not writable."""
        if not can_write_export(folder):
            raise NoExportCacheError(f"No writable place for the ONNX export of {model}: "
                                     f"{unwritable_message(cache_dir(), 'cache')}.")
        log.warning("no current ONNX export of %s: exporting %s graphs into %s (once)",
                    model, precision, folder)
        start = time.perf_counter()
        manifest = export_model(model, folder, precision)
        log.warning("ONNX export done in %.1f s", time.perf_counter() - start)
        return manifest

    # -- protocol --------------------------------------------------------------------------
    def run(self, part: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[part].run(None, feeds)

    def floats(self, tensor: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=self.np_dtype)

    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=int(self.text_config["max_length"]),
                                return_tensors="np")
        feeds = {"input_ids": tokens["input_ids"].astype(np.int64)}
        if self.text_config["uses_attention_mask"]:
            feeds["attention_mask"] = tokens["attention_mask"].astype(np.int64)
        states, pooled = self.run("text_encoder", feeds)
        return TextEmbedding(torch.from_numpy(states), torch.from_numpy(pooled))

    def unet(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
             conditioning: torch.Tensor | None) -> torch.Tensor:
        sample = self.floats(x_t)
        if self.conditioning_channels:
            extra = np.zeros((sample.shape[0], self.conditioning_channels, *sample.shape[2:]),
                             self.np_dtype) if conditioning is None else self.floats(conditioning)
            sample = np.concatenate([sample, extra], axis=1)
        feeds = {"sample": sample,
                 "timestep": t.detach().cpu().numpy().astype(np.int64).reshape(-1),
                 "encoder_hidden_states": self.floats(text.token_states)}
        if self.pooled_text:
            feeds["class_labels"] = self.floats(text.pooled)
        return torch.from_numpy(self.run("unet", feeds)[0])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run("vae_encoder", {"images": self.floats(images)})[0])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run("vae_decoder", {"latents": self.floats(latents)})[0])

    def warm_up(self) -> None:
        text = self.encode_text(["warm up"])
        shape = (1, self.latent_channels, self.latent_size, self.latent_size)
        x_t = torch.zeros(shape)
        self.unet(x_t, torch.tensor([999]), text, None)
        self.decode(x_t)
        self.encode_image(torch.zeros(1, 3, self.image_size, self.image_size))

    def synchronize(self) -> None:
        """session.run is synchronous: outputs are on the host when it returns."""
