"""A request's control for one frame, and the UNet call that adds a control model's
residuals (ControlNet, T2I-Adapter; engine/runtime/control.py) where it acts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ControlPlan:
    """A request's control for one frame: the control model's embedded control image, the
    image's key, and strength, start and end (fractions of the denoising schedule)."""

    embedded: tuple[torch.Tensor, ...]
    image_key: tuple
    strength: float
    start: float
    end: float

    @property
    def cache_key(self) -> tuple:
        return (self.image_key, self.strength, self.start, self.end)

    def acts_at(self, t: int, num_train_timesteps: int) -> bool:
        """Whether control acts at timestep t: its place in the schedule, 0 at the noisiest
        step (t = T - 1), is in [start, end); a student's n evenly spaced steps sit at i/n."""
        place = (num_train_timesteps - 1 - t) / num_train_timesteps
        return self.start <= place < self.end


def controlled_unet(backend, control_model, plan: ControlPlan | None):
    """backend.unet, with control_model's residuals at the timesteps plan acts on (None: the
    plain backend.unet)."""
    if plan is None:
        return backend.unet
    top = backend.schedule.num_train_timesteps

    def unet(x_in, t_in, text, conditioning):
        if not plan.acts_at(int(t_in[0]), top):
            return backend.unet(x_in, t_in, text, conditioning)
        residuals = control_model.residuals(plan.embedded, x_in, t_in, text.token_states,
                                            text.pooled, plan.strength)
        return backend.unet(x_in, t_in, text, conditioning, control=residuals)

    return unet
