"""PyTorch backend: CPU fp32, or CUDA with fp16 weights, channels_last and SDPA attention."""

from __future__ import annotations

import re

import torch

from engine.api import EngineError
from engine.pipeline.loading import PipelineParts, encode_latents, load_pipeline
from engine.pipeline.text import TextEmbedding

TORCH_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


def pick_device(device: str = "auto") -> str:
    """auto -> cuda when PyTorch sees a GPU, else cpu; cpu, cuda and cuda:N are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not TORCH_DEVICE_PATTERN.match(device):
        raise EngineError(f"Unknown device {device!r} for torch; use auto, cpu or cuda.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("CUDA was requested but PyTorch sees no CUDA device; use --device cpu.")
    return device


class TorchBackend:
    """Runs the stages of a loaded pipeline with PyTorch."""

    name = "torch"

    def __init__(self, parts: PipelineParts, device: str):
        self.parts = parts
        self.device = device
        self.dtype = next(parts.unet.parameters()).dtype
        self.image_size = parts.image_size
        self.latent_size = parts.latent_size
        self.latent_channels = parts.latent_channels
        self.conditioning_channels = parts.conditioning_channels
        self.schedule = parts.schedule
        self.student_config = parts.student_config
        self.model_dir = parts.model_dir
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # live shapes repeat: time cuDNN's kernels once
            parts.unet.to(memory_format=torch.channels_last)
            parts.vae.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, model: str, device: str = "auto") -> TorchBackend:
        device = pick_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        return cls(load_pipeline(model, device=device, dtype=dtype), device)

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        return self.parts.text_encoder.encode(prompts)

    @torch.inference_mode()
    def unet(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
             conditioning: torch.Tensor | None) -> torch.Tensor:
        x_in = x_t.to(self.device, self.dtype)
        if self.conditioning_channels:
            if conditioning is None:
                conditioning = torch.zeros(x_in.shape[0], self.conditioning_channels,
                                           *x_in.shape[2:])
            x_in = torch.cat([x_in, conditioning.to(x_in)], dim=1)
        class_labels = text.pooled.to(self.device, self.dtype) if self.parts.uses_pooled_text \
            else None
        return self.parts.unet(
            x_in, t.to(self.device),
            encoder_hidden_states=text.token_states.to(self.device, self.dtype),
            class_labels=class_labels,
        ).sample

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        latents = encode_latents(self.parts.vae, images.to(self.device, self.dtype))
        return latents * self.parts.latent_scale

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents.to(self.device, self.dtype) / self.parts.latent_scale
        return self.parts.vae.decode(scaled).sample.clamp(-1, 1)

    def warm_up(self) -> None:
        text = self.encode_text(["warm up"])
        size, channels = self.latent_size, self.latent_channels
        x_t = torch.zeros(1, channels, size, size, device=self.device)
        self.unet(x_t, torch.tensor([999]), text, None)
        self.decode(x_t)
        self.encode_image(torch.zeros(1, 3, self.image_size, self.image_size))
        self.synchronize()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
