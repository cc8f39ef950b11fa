"""The backend protocol: what the generator needs from a runtime (torch, onnxruntime).

All tensors crossing the protocol are torch tensors; a backend converts internally.
Latents are already multiplied by the autoencoder's scaling factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from engine.diffusion.schedule import NoiseSchedule
from engine.runtime.text import TextEmbedding


class Backend(Protocol):
    name: str  # "torch" or "onnx"
    device: str  # "cpu", "cuda", or the onnxruntime provider in use
    image_size: int  # output pixels (square)
    latent_size: int  # latent pixels (square)
    latent_channels: int
    conditioning_channels: int  # extra UNet input channels (sketch latent); 0 if none
    schedule: NoiseSchedule  # the model's alphas_cumprod and prediction type
    student_config: dict  # student.json, {} for a teacher
    model_dir: Path

    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        """Token states (and pooled vectors) for a batch of prompts."""

    def unet(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
             conditioning: torch.Tensor | None) -> torch.Tensor:
        """Raw model output (eps / v / x0) for noisy latents (B, C, h, w) at timesteps (B,)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, h, w)."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, 3, H, W) in [-1, 1]."""

    def load_teacher(self) -> Backend:
        """A student's teacher (student.json "teacher") on the same runtime and device."""

    def warm_up(self) -> None:
        """Run every stage once so the first real frame is not slow."""

    def synchronize(self) -> None:
        """Wait for queued device work (for honest stage timings)."""
