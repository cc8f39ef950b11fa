"""Samplers as pure functions over a denoiser callable (k-diffusion style, no I/O).

x0_fn(x_t, t) returns the model's x0 estimate for a batch at integer timestep t.
noise_fn(shape) returns fresh standard normal noise (seeded by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from engine.diffusion.schedule import NoiseSchedule, eps_from_x0, timestep_tensor

X0Fn = Callable[[torch.Tensor, int], torch.Tensor]
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


def multistep_sample(x0_fn: X0Fn, x_start: torch.Tensor, timesteps: Sequence[int],
                     schedule: NoiseSchedule, noise_fn: NoiseFn,
                     first_x0: torch.Tensor | None = None) -> torch.Tensor:
    """Few-step consistency-style sampling (DMD2 sec. 4.5): predict x0, re-noise to the next t.
    first_x0, when given, is x0_fn(x_start, timesteps[0]) already computed."""
    x_t = x_start
    x0 = x_start
    for index, t in enumerate(timesteps):
        x0 = first_x0 if index == 0 and first_x0 is not None else x0_fn(x_t, t)
        if index + 1 < len(timesteps):
            next_t = timestep_tensor(timesteps[index + 1], x0.shape[0])
            x_t = schedule.add_noise(x0, noise_fn(tuple(x0.shape)).to(x0), next_t)
    return x0


def ddim_sample(x0_fn: X0Fn, x_start: torch.Tensor, timesteps: Sequence[int],
                schedule: NoiseSchedule) -> torch.Tensor:
    """Deterministic DDIM, eta = 0 (Song et al. 2021, eq. 12)."""
    x_t = x_start
    x0 = x_start
    for index, t in enumerate(timesteps):
        batch = x_t.shape[0]
        x0 = x0_fn(x_t, t)
        if index + 1 == len(timesteps):
            break
        abar_t = schedule.abar(timestep_tensor(t, batch), x_t)
        eps = eps_from_x0(x_t, x0, abar_t)
        abar_next = schedule.abar(timestep_tensor(timesteps[index + 1], batch), x_t)
        x_t = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
    return x0


def edit_start(edit_timesteps: Sequence[int], strength: float,
               num_train_timesteps: int = 1000) -> list[int]:
    """The tail of the edit list that img2img (SDEdit, Meng et al. 2022) runs at a strength.

    strength 1 -> the whole list (from pure noise); 0.5 -> entries at or below t=499;
    an empty list means the input is returned unchanged.
    """
    limit = round(strength * num_train_timesteps) - 1
    return [t for t in edit_timesteps if t <= limit]


def teacher_start(steps: int, strength: float) -> int:
    """Index into an N-step DDIM list where img2img starts: strength 1 -> 0, 0 -> N."""
    return steps - int(round(steps * strength))


def gaussian_blur(latents: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) latents over H and W, edges replicated; sigma
    in latent pixels (0: unchanged). The one-step frame's latents carry more fine detail than
    the teacher's (its x0 at t = 999 amplifies the UNet's noise 14.6x), which a blur of about
    half a latent pixel removes (docs/benchmarks.md, "The one-step blur")."""
    if sigma <= 0:
        return latents
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(latents.device, latents.dtype)
    channels = latents.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    padded = torch.nn.functional.pad(latents, (radius, radius, radius, radius), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, rows, groups=channels)
    return torch.nn.functional.conv2d(blurred, cols, groups=channels)
