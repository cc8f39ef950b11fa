"""Export a model folder to ONNX: text encoder, UNet, autoencoder encoder and decoder.

Every graph has a dynamic batch axis (1 for live frames, 2 for the teacher's CFG batch).
The latent scale is folded into the autoencoder graphs: vae_encoder returns scaled latents,
vae_decoder takes scaled latents and returns images clamped to [-1, 1]. Tokenization stays
in Python (the tokenizer of the model folder); manifest.json describes everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from engine.api import EngineError, os_error_message
from engine.paths import cache_dir, writable_folder
from engine.runtime.loading import (
    PipelineParts,
    encode_latents,
    load_pipeline,
    resolve_model_dir,
)
from engine.runtime.text import encode_tokens
from engine.untrusted import read_json_file

OPSET = 17
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
WEIGHT_PARTS = ("unet", "vae", "text_encoder", "model_index.json", "student.json")
# fp32: the CPU default; fp16: CUDA / TensorRT; int8: fp32 graphs with int8 matrix products
# (engine/runtime/onnx_quantize.py), the fastest on small CPUs. Each has its own folder.
PRECISIONS = ("fp32", "fp16", "int8")
FOLDER_NAMES = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}
OWNER_FILE = ".owner"  # in a staging folder: the exporting process's id
STALE_STAGING_S = 3600  # a staging folder without an owner file is left alone this long


class TextGraph(torch.nn.Module):
    """input_ids[, attention_mask] -> (token_states, pooled), pooled as in pipeline/text.py."""

    def __init__(self, model: torch.nn.Module, is_clip: bool):
        super().__init__()
        self.model, self.is_clip = model, is_clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return encode_tokens(self.model, self.is_clip, input_ids, attention_mask)


class UnetGraph(torch.nn.Module):
    """(sample incl. conditioning channels, timestep, states[, class_labels]) -> raw output."""

    def __init__(self, unet: torch.nn.Module, pooled: bool):
        super().__init__()
        self.unet, self.pooled = unet, pooled

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None):
        labels = class_labels if self.pooled else None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         class_labels=labels).sample


class EncoderGraph(torch.nn.Module):
    """Images in [-1, 1] -> latents * scale (AutoencoderKL: posterior mean)."""

    def __init__(self, vae: torch.nn.Module, scale: float):
        super().__init__()
        self.vae, self.scale = vae, scale

    def forward(self, images):
        return encode_latents(self.vae, images) * self.scale


class DecoderGraph(torch.nn.Module):
    """Scaled latents -> images clamped to [-1, 1]."""

    def __init__(self, vae: torch.nn.Module, scale: float):
        super().__init__()
        self.vae, self.scale = vae, scale

    def forward(self, latents):
        return self.vae.decode(latents / self.scale).sample.clamp(-1, 1)


def source_fingerprint(model_dir: Path) -> str:
    """A hash of the weight files' names, sizes and mtimes: changes when a model is rewritten."""
    digest = hashlib.sha1()
    for name in WEIGHT_PARTS:
        path = model_dir / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.relative_to(model_dir)}:{stat.st_size}:"
                              f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def export_graph(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str],
                 outputs: list[str], opset: int) -> None:
    """TorchScript-based torch.onnx.export (dynamo=False): ~10x faster on diffusers models."""
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)


def spec(inputs: dict[str, tuple], outputs: dict[str, tuple]) -> dict:
    """Manifest entry: input and output shapes ("batch" for the dynamic axis)."""
    return {"inputs": {k: list(v) for k, v in inputs.items()},
            "outputs": {k: list(v) for k, v in outputs.items()}}


@torch.no_grad()
def export_parts(parts: PipelineParts, out: Path, fp16: bool = False, opset: int = OPSET,
                 device: str = "cpu") -> dict:
    """Write the four graphs of loaded parts into out/ and return the manifest (not written)."""
    dtype = torch.float16 if fp16 else torch.float32
    text, unet, vae = parts.text_encoder, parts.unet, parts.vae
    for module in (text.model, unet, vae):
        module.to(device, dtype)
    tokens, width = text.max_length, text.hidden_size
    size, channels = parts.latent_size, parts.latent_channels
    in_channels, pixels = int(unet.config.in_channels), parts.image_size
    ids = text.tokenize(["export"])
    text_inputs = ["input_ids"] if text.is_clip else ["input_ids", "attention_mask"]
    text_args = tuple(ids[name].to(device) for name in text_inputs)
    export_graph(TextGraph(text.model, text.is_clip), text_args, out / "text_encoder.onnx",
                 text_inputs, ["token_states", "pooled"], opset)
    unet_inputs = ["sample", "timestep", "encoder_hidden_states"]
    like = {"dtype": dtype, "device": device}
    unet_args = [torch.randn(1, in_channels, size, size, **like),
                 torch.tensor([999], dtype=torch.long, device=device),
                 torch.randn(1, tokens, width, **like)]
    if parts.uses_pooled_text:
        unet_inputs.append("class_labels")
        unet_args.append(torch.randn(1, width, **like))
    export_graph(UnetGraph(unet, parts.uses_pooled_text), tuple(unet_args), out / "unet.onnx",
                 unet_inputs, ["model_output"], opset)
    image = torch.rand(1, 3, pixels, pixels, **like) * 2 - 1
    export_graph(EncoderGraph(vae, parts.latent_scale), (image,), out / "vae_encoder.onnx",
                 ["images"], ["latents"], opset)
    latents = torch.randn(1, channels, size, size, **like)
    export_graph(DecoderGraph(vae, parts.latent_scale), (latents,), out / "vae_decoder.onnx",
                 ["latents"], ["images"], opset)
    pooled_input = {"class_labels": ("batch", width)} if parts.uses_pooled_text else {}
    text_spec = {name: ("batch", tokens) for name in text_inputs}
    return {
        "format_version": FORMAT_VERSION,
        "source_model_dir": str(parts.model_dir.resolve()),
        "source_fingerprint": source_fingerprint(parts.model_dir),
        "opset": opset,
        "dtype": "float16" if fp16 else "float32",  # of the weights and inputs
        "precision": "fp16" if fp16 else "fp32",
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "image_size": pixels,
        "latent_size": size,
        "latent_channels": channels,
        "conditioning_channels": parts.conditioning_channels,
        "latent_scale": parts.latent_scale,
        "latent_scale_in_graph": True,
        "pooled_text": parts.uses_pooled_text,
        "text": {"max_length": tokens, "hidden_size": width, "is_clip": text.is_clip,
                 "uses_attention_mask": not text.is_clip},
        "autoencoder": type(vae).__name__,
        "files": {
            "text_encoder": {"file": "text_encoder.onnx", **spec(
                text_spec, {"token_states": ("batch", tokens, width), "pooled": ("batch", width)})},
            "unet": {"file": "unet.onnx", **spec(
                {"sample": ("batch", in_channels, size, size), "timestep": ("batch",),
                 "encoder_hidden_states": ("batch", tokens, width), **pooled_input},
                {"model_output": ("batch", int(unet.config.out_channels), size, size)})},
            "vae_encoder": {"file": "vae_encoder.onnx", **spec(
                {"images": ("batch", 3, pixels, pixels)},
                {"latents": ("batch", channels, size, size)})},
            "vae_decoder": {"file": "vae_decoder.onnx", **spec(
                {"latents": ("batch", channels, size, size)},
                {"images": ("batch", 3, pixels, pixels)})},
        },
    }


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise EngineError(f"Unknown ONNX precision {precision!r}; use {', '.join(PRECISIONS)}.")


def precision_of(manifest: dict) -> str:
    """fp32, fp16 or int8 (manifests written before int8 existed only name their dtype)."""
    return manifest.get("precision") or ("fp16" if manifest.get("dtype") == "float16" else "fp32")


def export_model(model: str | Path, out: str | Path, precision: str = "fp32",
                 opset: int = OPSET) -> dict:
    """Export a model folder into out/ atomically (temporary folder, then rename)."""
    check_precision(precision)
    from engine.runtime import onnx_unsupported_reason

    reason = onnx_unsupported_reason(str(model))
    if reason:
        raise EngineError(f"{reason}; run this model with --backend torch.")
    fp16 = precision == "fp16"
    if opset < OPSET:
        raise EngineError(f"ONNX export needs opset {OPSET} or newer, not {opset}.")
    out = Path(out).expanduser()
    foreign = out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file()
    if foreign or (out.exists() and not out.is_dir()):
        raise EngineError(f"{out} exists and is not an ONNX export folder; pick another --out.")
    # fp16 graphs are traced on the GPU when there is one (CPU half kernels are slow).
    device = "cuda" if fp16 and torch.cuda.is_available() else "cpu"
    parts = load_pipeline(model, device=device, dtype=torch.float32)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as error:
        raise EngineError(f"ONNX export not written: {os_error_message(error, out, 'write')}"
                          ) from error
    try:
        staging.chmod(0o755)
        (staging / OWNER_FILE).write_text(str(os.getpid()))
        manifest = export_parts(parts, staging, fp16=fp16, opset=opset, device=device)
        if precision == "int8":
            from engine.runtime.onnx_quantize import quantize_export

            manifest = quantize_export(staging, manifest)
        for entry in manifest["files"].values():  # checked on load: a truncated copy differs
            entry["bytes"] = (staging / entry["file"]).stat().st_size
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / OWNER_FILE).unlink()
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, EngineError):
            raise
        if isinstance(error, OSError):
            raise EngineError(f"ONNX export not written: "
                              f"{os_error_message(error, out, 'write')}") from error
        raise EngineError(f"ONNX export of {model} failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}") from error
    return manifest


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (psutil where present, else signal 0)."""
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def sweep_staging(out: Path) -> list[Path]:
    """Delete the staging folders of exports into out that were killed midway: their owner
    process is gone (or, with no owner file, they are over an hour old). Returns them."""
    swept = []
    for folder in out.parent.glob(f".{out.name}-*"):
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
            stale = not (owner.isdigit() and process_alive(int(owner)))
        except OSError:
            try:
                stale = time.time() - folder.stat().st_mtime > STALE_STAGING_S
            except OSError:
                continue
        if folder.is_dir() and stale:
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
    return swept


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an export folder, or None when missing, unreadable or over the limits."""
    try:
        manifest = read_json_file(Path(folder) / MANIFEST)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_current(folder: Path, model_dir: Path, precision: str = "fp32") -> bool:
    """An export folder exists, is complete, matches the precision and the source weights."""
    manifest = read_manifest(folder)
    if not manifest or manifest.get("format_version") != FORMAT_VERSION:
        return False
    if precision_of(manifest) != precision:
        return False
    try:
        files = {folder / entry["file"]: entry.get("bytes")
                 for entry in manifest.get("files", {}).values()}
        if len(files) != 4 or not all(file.is_file() and size in (None, file.stat().st_size)
                                      for file, size in files.items()):
            return False  # a file missing or of another size than exported: truncated
    except (AttributeError, KeyError, TypeError, OSError):
        return False
    return manifest.get("source_fingerprint") == source_fingerprint(model_dir)


def cache_dir_for(model_dir: Path, precision: str = "fp32") -> Path:
    """Where the backends keep a model's export: the user's cache folder (engine.paths),
    onnx/<hash of the model folder>-onnx[-fp16|-int8], never the model folder itself."""
    check_precision(precision)
    key = hashlib.sha1(str(Path(model_dir).resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{key}-{FOLDER_NAMES[precision]}"


def model_folder_export(model_dir: Path, precision: str = "fp32") -> Path:
    """model_dir/onnx[-fp16|-int8], where earlier versions exported: still read while it is
    current, never written."""
    return Path(model_dir) / FOLDER_NAMES[precision]


def can_write_export(folder: Path) -> bool:
    """Whether an export can be written to folder: its parent can be made and written."""
    return writable_folder(folder.parent)


def resolve_export(model: str | Path, precision: str = "fp32") -> tuple[Path, dict | None]:
    """(export folder, manifest or None if it must be (re)built) for a model or export folder."""
    path = Path(model).expanduser()
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest is not None:
        return path, manifest  # an export folder passed directly
    model_dir = resolve_model_dir(str(model))
    earlier = model_folder_export(model_dir, precision)
    if is_current(earlier, model_dir, precision):
        return earlier, read_manifest(earlier)
    folder = cache_dir_for(model_dir, precision)
    with contextlib.suppress(OSError):
        sweep_staging(folder)
    return folder, read_manifest(folder) if is_current(folder, model_dir, precision) else None


@torch.no_grad()
def compare_export(model: str | Path, folder: str | Path, batch: int = 2,
                   seed: int = 0) -> dict[str, float]:
    """Max abs difference per graph between PyTorch fp32 and onnxruntime CPU (random inputs)."""
    import onnxruntime as ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise EngineError(f"{folder} has no {MANIFEST}.")
    parts = load_pipeline(model, device="cpu", dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    text = parts.text_encoder
    tokens = text.tokenize(["a red apple", "rocket"][:batch] * batch)
    tokens = {k: v[:batch] for k, v in tokens.items()}
    names = ["input_ids"] if text.is_clip else ["input_ids", "attention_mask"]
    size, pixels = parts.latent_size, parts.image_size
    in_channels = int(parts.unet.config.in_channels)
    unet_feeds = {"sample": randn(batch, in_channels, size, size),
                  "timestep": torch.tensor([999, 500][:batch] * batch)[:batch],
                  "encoder_hidden_states": randn(batch, text.max_length, text.hidden_size)}
    if parts.uses_pooled_text:
        unet_feeds["class_labels"] = randn(batch, text.hidden_size)
    cases = {
        "text_encoder": (TextGraph(text.model, text.is_clip), {k: tokens[k] for k in names}),
        "unet": (UnetGraph(parts.unet, parts.uses_pooled_text), unet_feeds),
        "vae_encoder": (EncoderGraph(parts.vae, parts.latent_scale),
                        {"images": torch.rand(batch, 3, pixels, pixels, generator=generator)
                         * 2 - 1}),
        "vae_decoder": (DecoderGraph(parts.vae, parts.latent_scale),
                        {"latents": randn(batch, parts.latent_channels, size, size)}),
    }
    differences = {}
    for part, (module, feeds) in cases.items():
        session = ort.InferenceSession(str(folder / manifest["files"][part]["file"]),
                                       providers=["CPUExecutionProvider"])
        expected = module(*feeds.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        differences[part] = max(float((torch.from_numpy(g) - e).abs().max())
                                for g, e in zip(got, expected, strict=True))
    return differences
