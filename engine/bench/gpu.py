"""SD-1.5-shaped one-step frames/s at 512 px and SDXL-shaped ones at 1024 and 512 px, batch 1
(random weights): torch and onnxruntime (SD 1.5 only: SDXL runs on torch).

Variants: eager fp16 + SDPA + channels_last; one CUDA graph over UNet -> decode with the text
encoder eager, or over text encoder -> UNet -> decode; the same graphs over parts compiled by
torch.compile (inductor's default or max-autotune kernels); onnxruntime CUDA and TensorRT
providers. --arch tiny-sd and tiny-sdxl run the same setup on the tiny pipelines
(CPU-testable).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.api import EngineError, GenerateRequest
from engine.bench.sdxl_arch import ARCH_SIZES
from engine.bench.timing import machine_info, median_ms, peak_rss_mb

ARCHES = ("sd15", "tiny-sd", "sdxl", "tiny-sdxl")
GPU_ARCHES = ("sd15", "sdxl")  # a CPU run of these needs --force
# --compile choice -> torch.compile mode; the bench captures its own CUDA graph around the
# compiled parts, so inductor's cudagraphs stay off.
COMPILE_MODES = {"none": None, "default": "default", "max-autotune": "max-autotune-no-cudagraphs"}
PROMPT = "a photograph of an astronaut riding a horse"
log = logging.getLogger(__name__)


def build_sd15_folder(folder: Path) -> Path:
    """SD-1.5 shapes: UNet 4->4 ch (320, 640, 1280, 1280), CLIP-L/14 text, TAESD decoder."""
    from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.pipeline.tiny import write_char_tokenizer

    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )).half().save_pretrained(folder / "text_encoder")
    write_char_tokenizer(folder / "tokenizer", max_length=77)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).half().save_pretrained(
        folder / "unet")
    AutoencoderTiny().half().save_pretrained(folder / "vae")  # TAESD's configuration
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"image_size": 512}))
    (folder / "student.json").write_text(json.dumps({"timesteps": [999], "teacher": ""}))
    return folder


def build_arch_folder(arch: str, folder: Path, device: str = "cpu") -> Path:
    """The random-weight folder an arch measures (device: where big models initialise)."""
    from engine.bench.sdxl_arch import build_sdxl_folder, build_tiny_sdxl_folder

    if arch == "sd15":
        return build_sd15_folder(folder)
    if arch == "sdxl":
        return build_sdxl_folder(folder, device)
    if arch == "tiny-sdxl":
        return build_tiny_sdxl_folder(folder)
    from engine.pipeline.tiny import build_tiny_pipeline

    return build_tiny_pipeline(folder, student_timesteps=[999])


def resolve_device(arch: str, device: str, force: bool) -> str:
    """cuda when available; an SD-1.5- or SDXL-sized CPU run needs --force."""
    from engine.runtime.torch_backend import pick_device

    device = pick_device(device)
    if arch in GPU_ARCHES and device == "cpu" and not force:
        shape = "SD-1.5" if arch == "sd15" else "SDXL"
        raise EngineError(f"The {shape}-shaped benchmark needs CUDA (a frame takes seconds on a "
                          f"CPU); use --device cuda, --arch tiny-{arch.removesuffix('15')}, "
                          "or --force.")
    return device


def static_frame(backend, prompt: str, x_t: torch.Tensor, text_inside: bool):
    """(frame, set_prompt) for one student step at the top timestep from the noise x_t,
    decoded; frame() reads only tensors allocated here, so one CUDA graph can capture it.
    set_prompt(p) refreshes the text input in place: the token ids when the text encoder is
    inside the frame, else its states, encoded eagerly."""
    from engine.runtime.sdxl import pooled_text_kwargs
    from engine.runtime.text import encode_tokens

    parts, device, dtype = backend.parts, backend.device, backend.dtype
    encoder, schedule = parts.text_encoder, backend.schedule
    top = schedule.num_train_timesteps - 1
    abar = torch.tensor(float(schedule.alphas_cumprod[top]), device=device)
    x_t = x_t.to(device, dtype)
    extra = backend.conditioning_channels
    x_in = torch.cat([x_t, x_t.new_zeros(1, extra, *x_t.shape[2:])], 1) if extra else x_t
    t = torch.tensor([top], device=device)
    tokens = {key: value.to(device) for key, value in encoder.tokenize([prompt]).items()}
    token_ids = [ids.to(device) for ids in encoder.token_ids([prompt])] if encoder.is_clip \
        else []  # CLIP: each tokenizer's ids (SDXL has two)
    text = backend.encode_text([prompt])
    states, pooled = text.token_states.to(device, dtype), text.pooled.to(device, dtype)

    def set_prompt(new_prompt: str) -> None:
        if text_inside:
            for key, value in encoder.tokenize([new_prompt]).items():
                tokens[key].copy_(value)
            for ids, fresh_ids in zip(token_ids, encoder.token_ids([new_prompt]), strict=True):
                ids.copy_(fresh_ids)
        else:
            fresh = backend.encode_text([new_prompt])
            states.copy_(fresh.token_states)
            pooled.copy_(fresh.pooled)

    def frame() -> torch.Tensor:
        if text_inside and encoder.is_clip:
            text_states, text_pooled = (part.to(dtype) for part in encoder.encode_ids(*token_ids))
        elif text_inside:
            text_states, text_pooled = (part.to(dtype) for part in encode_tokens(
                encoder.model, False, tokens["input_ids"], tokens.get("attention_mask")))
        else:
            text_states, text_pooled = states, pooled
        text_kwargs = pooled_text_kwargs(parts.unet, text_pooled if parts.uses_pooled_text
                                         else None, parts.time_ids)
        output = parts.unet(x_in, t, encoder_hidden_states=text_states, **text_kwargs).sample
        x0 = schedule.output_to_x0(output.float(), x_t.float(), abar)
        return parts.vae.decode((x0 / parts.latent_scale).to(dtype)).sample.clamp(-1, 1)

    return frame, set_prompt


def captured(frame: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """Capture frame() in one CUDA graph as the torch backend does; returns a call that
    replays it and waits for the result."""
    from engine.runtime.cuda_graphs import capture_cuda_graph

    with torch.inference_mode():
        replay_graph, _ = capture_cuda_graph(frame, (), None)

    def replay() -> None:
        replay_graph()
        torch.cuda.synchronize()

    return replay


def bench_noise(backend) -> torch.Tensor:
    size, channels = backend.latent_size, backend.latent_channels
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))


def graph_variants(backend, repeats: int, prefix: str = "") -> list[dict]:
    """Frames replayed from CUDA graphs: a new prompt with the text encoder run eagerly, a
    new prompt with it inside the graph, and a brush stroke (the prompt unchanged)."""
    x_t = bench_noise(backend)
    results = []
    for text_inside in (False, True):
        name = prefix + "CUDA graph" + (", text inside" if text_inside else "")
        try:
            frame, set_prompt = static_frame(backend, PROMPT, x_t, text_inside)
            replay = captured(frame)

            def new_prompt(set_prompt=set_prompt, replay=replay) -> None:
                with torch.inference_mode():
                    set_prompt(PROMPT)
                replay()

            where = "tokens copied in, text encoder + UNet + decode in one graph" \
                if text_inside else "text eager; UNet + decode in one graph"
            results.append(variant(name, new_prompt, repeats, where))
            if not text_inside:
                results.append(variant(prefix + "CUDA graph, same prompt", replay, repeats,
                                       "a brush stroke: text states kept; the graph alone"))
        except Exception as error:  # noqa: BLE001 - report, keep measuring the others
            results.append(failed(name, error))
    return results


def compile_parts(backend, mode: str) -> float:
    """torch.compile the text model, UNet and decoder in place and compile them by running the
    bench's frames once (text eager and text inside); returns the seconds that took."""
    parts = backend.parts
    parts.unet.forward = torch.compile(parts.unet.forward, mode=mode)
    parts.vae.decoder.forward = torch.compile(parts.vae.decoder.forward, mode=mode)
    for model in getattr(parts.text_encoder, "models", (parts.text_encoder.model,)):
        model.forward = torch.compile(model.forward, mode=mode)
    start = time.perf_counter()
    with torch.inference_mode():
        for text_inside in (False, True):
            frame, _ = static_frame(backend, PROMPT, bench_noise(backend), text_inside)
            frame()
    if backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def variant(name: str, function: Callable[[], object], repeats: int, note: str = "") -> dict:
    frame_ms = median_ms(function, repeats, warm_up=3)
    log.info("%s: %.2f ms, %.1f frames/s (%s)", name, frame_ms, 1e3 / frame_ms, note)
    return {"variant": name, "frame_ms": frame_ms, "fps": 1e3 / frame_ms, "note": note}


def torch_variants(folder: Path, device: str, repeats: int, compile_mode: str,
                   size: int | None = None) -> list[dict]:
    """Eager, live-path, CUDA-graph and compiled frames; size: render at this many pixels
    (variant names then start with it)."""
    from engine.api import ModelOptions
    from engine.runtime.torch_backend import TorchBackend

    options = ModelOptions(size=size) if size else None
    backend = TorchBackend.load(str(folder), device, cuda_graphs=False, options=options)
    results = size_variants(backend, device, repeats, compile_mode)
    backend = None  # free the weights before the next variant
    release()
    if size:
        for result in results:
            result["variant"] = f"{size} px {result['variant']}"
    return results


def size_variants(backend, device: str, repeats: int, compile_mode: str) -> list[dict]:
    """torch_variants' measurements over one loaded backend."""
    from engine.pipeline.generator import Generator
    from engine.runtime.torch_backend import TorchBackend

    request = GenerateRequest(PROMPT, steps=1)

    def generate(generator: Generator) -> None:
        generator.clear_caches()
        generator.generate(request)

    backend.warm_up()
    eager = Generator(backend)
    precision = "fp16, SDPA, channels_last" if device.startswith("cuda") else "fp32"
    results = [variant("torch eager", lambda: generate(eager), repeats, precision)]
    if device.startswith("cuda"):
        try:  # the same weights with CUDA graphs per stage, as the live path runs them
            staged = TorchBackend(backend.parts, device)
            staged.warm_up()
            live = Generator(staged)
            results.append(variant("torch live path", lambda: generate(live), repeats,
                                   "the generator; CUDA graphs for: "
                                   + (", ".join(staged.graphed_stages()) or "none")))
        except Exception as error:  # noqa: BLE001
            results.append(failed("torch live path", error))
        staged = live = None
        results += graph_variants(backend, repeats, "torch ")
        if COMPILE_MODES[compile_mode]:
            name = f"torch.compile {compile_mode}"
            try:
                seconds = compile_parts(backend, COMPILE_MODES[compile_mode])
                compiled = graph_variants(backend, repeats, name + " + ")
                for result in compiled:
                    if result["fps"] > 0:
                        result["note"] += f" (compiled in {seconds:.0f} s)"
                results += compiled
            except Exception as error:  # noqa: BLE001
                results.append(failed(name, error))
    return results


def onnx_variants(folder: Path, device: str, repeats: int) -> list[dict]:
    import onnxruntime as ort

    from engine.pipeline.generator import Generator
    from engine.runtime.onnx_backend import OnnxBackend

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        targets = [(d, p) for d, p in (("cuda", "CUDAExecutionProvider"),
                                       ("tensorrt", "TensorrtExecutionProvider")) if p in available]
    else:
        targets = [("cpu", "CPUExecutionProvider")]
    results = []
    for target, provider in targets:
        try:
            backend = OnnxBackend.load(str(folder), target)
            backend.warm_up()
            generator = Generator(backend)
            request = GenerateRequest(PROMPT, steps=1)

            def generate(generator=generator, request=request) -> None:
                generator.clear_caches()
                generator.generate(request)

            results.append(variant(f"onnxruntime {provider}", generate, repeats,
                                   f"{backend.manifest['dtype']}, {backend.device}"))
            del generator, backend
        except Exception as error:  # noqa: BLE001
            results.append(failed(f"onnxruntime {provider}", error))
        release()
    return results


def failed(name: str, error: Exception) -> dict:
    message = str(error).splitlines()[0][:160] if str(error) else ""
    log.info("%s failed: %s: %s", name, type(error).__name__, message)
    return {"variant": name, "frame_ms": 0.0, "fps": 0.0,
            "note": f"failed: {type(error).__name__}: {message}"}


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def control_variants(folder: Path, device: str, repeats: int, control_type: str) -> list[dict]:
    """The one-step frame with a random ControlNet of the arch's shapes (control image cached,
    as while the prompt changes): eager, then with the live path's CUDA graphs."""
    from engine.bench.control import bench_drawing
    from engine.pipeline.generator import Generator
    from engine.pipeline.tiny_control import build_controlnet_like
    from engine.runtime.control import load_control
    from engine.runtime.torch_backend import TorchBackend

    results = []
    for graphs in (False, True) if device.startswith("cuda") else (False,):
        name = f"torch {'live path' if graphs else 'eager'} + {control_type} ControlNet"
        try:
            backend = TorchBackend.load(str(folder), device, cuda_graphs=graphs)
            control_dir = folder.parent / "controlnet"
            if not control_dir.is_dir():
                build_controlnet_like(backend.parts.unet, backend.latent_channels, control_dir,
                                      control_type=control_type)
            generator = Generator(backend, control=load_control(control_dir, backend))
            backend.warm_up()
            request = GenerateRequest(PROMPT, steps=1,
                                      control_image=bench_drawing(backend.image_size))

            def generate(generator=generator, request=request) -> None:
                generator.text_cache.entries.clear()  # as the plain variants: text encoded,
                generator.first_step_cache.entries.clear()  # the control image cached
                generator.generate(request)

            note = "control image embedded once; CUDA graphs for: " + (
                ", ".join(backend.graphed_stages()) or "none") if graphs else \
                "control image embedded once"
            results.append(variant(name, generate, repeats, note))
        except Exception as error:  # noqa: BLE001 - report, keep measuring the others
            results.append(failed(name, error))
        generator = backend = None
        release()
    return results


def bench_arch(arch: str, device: str = "auto", repeats: int = 20, force: bool = False,
               compile_mode: str = "default", backends: tuple[str, ...] = ("torch", "onnx"),
               work_dir: str | None = None, control: str | None = None) -> dict:
    """Build the random-weight arch in a temporary folder and measure every variant; control
    (scribble, lineart, canny): also the frame with a random ControlNet of its shapes."""
    if arch not in ARCHES:
        raise EngineError(f"Unknown --arch {arch!r}; choose one of {', '.join(ARCHES)}.")
    if compile_mode not in COMPILE_MODES:
        raise EngineError(f"Unknown --compile {compile_mode!r}; choose one of "
                          f"{', '.join(COMPILE_MODES)}.")
    device = resolve_device(arch, device, force)
    with tempfile.TemporaryDirectory(prefix="dmd-bench-", dir=work_dir) as tmp:
        folder = build_arch_folder(arch, Path(tmp) / arch, device)
        sizes = ARCH_SIZES.get(arch, (None,))  # None: the folder's own size
        variants = []
        if "torch" in backends:
            for size in sizes:
                variants += torch_variants(folder, device, repeats, compile_mode, size)
        if control and "torch" in backends:
            variants += control_variants(folder, device, repeats, control)
        if "onnx" in backends and arch in ARCH_SIZES:
            variants.append({"variant": "onnxruntime", "frame_ms": 0.0, "fps": 0.0,
                             "note": "not measured: the ONNX export does not cover SDXL"})
        elif "onnx" in backends:
            variants += onnx_variants(folder, device, repeats)
        image_size = sizes[0] or json.loads((folder / "model_index.json").read_text())[
            "image_size"]
    working = [v for v in variants if v["fps"] > 0]
    return {"arch": arch, "device": device, "image_size": image_size,
            "image_sizes": [size or image_size for size in sizes], "batch": 1,
            "dtype": "float16" if device.startswith("cuda") else "float32",
            "weights": "random", "repeats": repeats, "variants": variants,
            "best_fps": max((v["fps"] for v in working), default=0.0),
            "peak_rss_mb": peak_rss_mb(), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d")}
