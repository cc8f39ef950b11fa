"""Classifier-free guidance (Ho & Salimans 2022): one denoiser, conditional and unconditional."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.diffusion.schedule import NoiseSchedule, x0_from_eps

# model(x_in, t_in) -> raw output (eps / v / x0) of a doubled batch, unconditional half first.
DoubledModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + s (eps_cond - eps_uncond) (Ho & Salimans 2022, eq. 6; s = 1: no guidance)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_x0(model: DoubledModel, schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor,
           scale: float) -> torch.Tensor:
    """x0 of x_t at timesteps t (B,) under guidance scale s, in float32 at least: the model
    runs once on [x_t; x_t], its outputs become eps, are guided, and give x0 (DDPM eq. 15)."""
    x_in, t_in = torch.cat([x_t, x_t]), torch.cat([t, t])
    output = model(x_in, t_in)
    eps_uncond, eps_cond = schedule.to_eps(output, x_in.to(output.device), t_in).chunk(2)
    eps = guided_eps(eps_uncond, eps_cond, scale)
    return x0_from_eps(x_t.to(eps), eps, schedule.abar(t, eps))
