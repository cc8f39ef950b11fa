"""`bench --control`: what a control model (ControlNet or T2I-Adapter) adds to a live frame.

Figures, medians over repeats: the control image's preprocessing and embedding (paid once
per changed sketch), the control branch of one UNet call, and one-step frames without
control, with control while only the prompt changes (the embedding cached), and with a new
sketch every frame (a stroke per frame).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.api import GenerateRequest
from engine.bench.timing import machine_info, median_ms, peak_rss_mb

PROMPT = "a red apple"


def bench_drawing(size: int, row: int = 0) -> np.ndarray:
    """A dark diagonal stroke on white at size x size, moved down by row pixels."""
    image = np.full((size, size, 3), 255, np.uint8)
    for offset in range(size // 2):
        y = (size // 4 + offset + row) % size
        x = size // 4 + offset
        image[y:y + max(1, size // 64), x:x + max(1, size // 64)] = 0
    return image


def control_figures(generator, repeats: int) -> dict:
    """The control model's cost on this generator's backend (see the module docstring)."""
    from engine.pipeline.control_image import control_map, control_tensor

    backend, control = generator.backend, generator.control
    size = backend.image_size
    sketch = bench_drawing(size)
    embedded = control.embed(control_tensor(control_map(sketch, control.control_type)))
    text = backend.encode_text([PROMPT])
    x_t = torch.randn(1, backend.latent_channels, backend.latent_size, backend.latent_size,
                      generator=torch.Generator().manual_seed(0))
    t = torch.tensor([backend.schedule.num_train_timesteps - 1])

    def embed() -> None:
        control.embed(control_tensor(control_map(sketch, control.control_type)))
        backend.synchronize()

    def branch() -> None:
        control.residuals(embedded, x_t, t, text.token_states, text.pooled, 1.0)
        backend.synchronize()

    rows = iter(range(1, 10**9))

    def frame(with_control: bool, new_sketch: bool):
        def run() -> None:
            generator.first_step_cache.entries.clear()  # the UNet runs every frame
            image = bench_drawing(size, next(rows)) if new_sketch else sketch
            generator.generate(GenerateRequest(PROMPT, control_image=image if with_control
                                               else None))
        return run

    plain_ms = median_ms(frame(False, False), repeats, 1)
    same_ms = median_ms(frame(True, False), repeats, 1)
    stroke_ms = median_ms(frame(True, True), repeats, 1)
    return {"control_embed_ms": median_ms(embed, repeats, 1),
            "control_branch_ms": median_ms(branch, repeats, 1),
            "frame_ms": plain_ms, "frame_control_ms": same_ms,
            "frame_control_stroke_ms": stroke_ms,
            "control_per_frame_ms": same_ms - plain_ms,
            "control_cache_hits": generator.control_cache_hits,
            "control_cache_misses": generator.control_cache_misses}


def bench_control(model: str, control: str, device: str = "auto", repeats: int = 10,
                  threads: int | None = None, control_type: str | None = None) -> dict:
    """Load model with the control model (a folder or ControlNet file, or "tiny": a random
    ControlNet shaped for the model's UNet) on PyTorch and measure control_figures."""
    from engine.bench.runner import load_backend
    from engine.pipeline.generator import Generator
    from engine.pipeline.tiny_control import build_controlnet_like
    from engine.runtime.control import load_control

    backend, threads_used = load_backend(model, "torch", device, threads)
    with tempfile.TemporaryDirectory(prefix="dmd-control-") as work_dir:
        if control == "tiny":
            folder = build_controlnet_like(backend.parts.unet, backend.latent_channels,
                                           Path(work_dir) / "random-controlnet")
            label = "random ControlNet shaped for the model's UNet"
        else:
            folder, label = Path(control), str(control)
        control_model = load_control(folder, backend, control_type)
    backend.warm_up()
    generator = Generator(backend, control=control_model)
    parameters = sum(p.numel() for p in control_model.network.parameters())
    return {"model": str(backend.model_dir), "control": label, "kind": control_model.kind,
            "control_type": control_model.control_type, "control_parameters": parameters,
            "backend": backend.name, "device": backend.device, "threads": threads_used,
            "image_size": backend.image_size, "latent_size": backend.latent_size,
            "repeats": repeats, **control_figures(generator, repeats),
            "peak_rss_mb": peak_rss_mb(), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d")}


def control_report(report: dict) -> str:
    """A readable summary of bench_control's figures."""
    machine = report["machine"]
    lines = [
        f"{report['kind']} ({report['control']}, {report['control_type']}, "
        f"{report['control_parameters'] / 1e6:.1f}M parameters) on {report['model']}",
        f"{report['backend']} on {report['device']}, {report['threads']} threads, "
        f"{report['image_size']} px, medians of {report['repeats']}; cpu: {machine['cpu']}",
        f"control image preprocessing + embedding (per changed sketch): "
        f"{report['control_embed_ms']:.2f} ms",
        f"control branch, one UNet call: {report['control_branch_ms']:.2f} ms",
        f"one-step frame without control: {report['frame_ms']:.2f} ms",
        f"with control, sketch unchanged (embedding cached): {report['frame_control_ms']:.2f} ms"
        f" (+{report['control_per_frame_ms']:.2f} ms)",
        f"with control, a new stroke every frame: {report['frame_control_stroke_ms']:.2f} ms",
    ]
    return "\n".join(lines)
