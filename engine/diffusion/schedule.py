"""Noise schedule (DDPM alphas_cumprod) and the conversions between eps, v and x0."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.api import ModelLoadError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def betas_for(schedule: str, beta_start: float, beta_end: float, steps: int) -> torch.Tensor:
    """Betas of a DDPM schedule: linear, scaled_linear (SD) or squaredcos_cap_v2 (cosine)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if schedule == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999.
        def alpha_bar(t: float) -> float:
            return torch.cos(torch.tensor((t + 0.008) / 1.008 * torch.pi / 2)).item() ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ModelLoadError(f"Unsupported beta_schedule {schedule!r}; use linear, scaled_linear or "
                         "squaredcos_cap_v2.")


@dataclass(frozen=True)
class NoiseSchedule:
    """alphas_cumprod of a discrete DDPM schedule (float64) and the model's prediction type."""

    alphas_cumprod: torch.Tensor  # (T,) float64
    prediction_type: str = "epsilon"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        prediction_type = config.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ModelLoadError(f"Unsupported prediction_type {prediction_type!r}; the engine "
                                 "supports epsilon, v_prediction and sample.")
        if config.get("trained_betas"):
            betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
        else:
            betas = betas_for(
                config.get("beta_schedule", "scaled_linear"),
                float(config.get("beta_start", 0.00085)),
                float(config.get("beta_end", 0.012)),
                int(config.get("num_train_timesteps", 1000)),
            )
        return cls(torch.cumprod(1.0 - betas, dim=0), prediction_type)

    @classmethod
    def from_folder(cls, scheduler_dir: Path) -> NoiseSchedule:
        config_path = Path(scheduler_dir) / "scheduler_config.json"
        if not config_path.is_file():
            raise ModelLoadError(f"{config_path} is missing; a model folder needs scheduler/.")
        return cls.from_config(json.loads(config_path.read_text()))

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod[t] shaped (B, 1, 1, 1) in like's dtype and device."""
        t = t.to("cpu").long().reshape(-1)
        values = self.alphas_cumprod[t].to(device=like.device, dtype=like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x0): sqrt(abar) x0 + sqrt(1 - abar) noise (DDPM eq. 4)."""
        abar = self.abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 from the model output, computed in float32 at least (eps, v or sample)."""
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        out, x_t = model_output.to(dtype), x_t.to(dtype)
        return self.output_to_x0(out, x_t, self.abar(t, x_t))

    def output_to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor,
                     abar: torch.Tensor) -> torch.Tensor:
        """x0 from the model output given alphas_cumprod already on x_t's device (no host
        lookup, so a CUDA graph can capture it)."""
        if self.prediction_type == "epsilon":
            return x0_from_eps(x_t, model_output, abar)
        if self.prediction_type == "v_prediction":
            return x0_from_v(x_t, model_output, abar)
        return model_output

    def to_eps(self, model_output: torch.Tensor, x_t: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
        """eps from the model output (eps, v or sample), in float32 at least."""
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        out, x_t = model_output.to(dtype), x_t.to(dtype)
        abar = self.abar(t, x_t)
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * out + (1 - abar).sqrt() * x_t
        return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)  (DDPM eq. 15)."""
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v  (Salimans & Ho 2022, v-parameterisation)."""
    return abar.sqrt() * x_t - (1 - abar).sqrt() * v


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), the inverse of x0_from_eps."""
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def timestep_tensor(t: int, batch: int, device: torch.device | str | None = None
                    ) -> torch.Tensor:
    """Timestep t repeated for a batch: a (batch,) long tensor, the UNet's timestep input."""
    return torch.full((batch,), int(t), dtype=torch.long, device=device)


def student_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """Evenly spaced student timesteps from the top: 1 -> [999], 4 -> [999, 749, 499, 249]."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    top = num_train_timesteps - 1
    return [top - i * (num_train_timesteps // steps) for i in range(steps)]


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """DDIM timesteps with 'trailing' spacing (Lin et al. 2024): starts at T-1, ends near 0."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    stride = num_train_timesteps / steps
    return [int(round(num_train_timesteps - i * stride)) - 1 for i in range(steps)]
