"""DMD / DMD2 losses as small callable classes (EDM style: settings in __init__, loss in __call__).

Denoisers are passed as callables so the losses run on any network (UNets, toy MLPs):
    x0_fn(x_t, t) -> x0 estimate, float32       (teacher with CFG, fake score)
    model_fn(x_t, t) -> raw output in the schedule's parameterisation (eps, v or x0)
Random draws take an explicit torch.Generator (CPU), so a run can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.diffusion.schedule import NoiseSchedule

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def random_timesteps(batch: int, low: int, high: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Integer timesteps drawn uniformly from {low, ..., high} (inclusive), on the CPU."""
    return torch.randint(low, high + 1, (batch,), generator=generator)


def random_noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (device-independent), moved next to x."""
    return torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)


class DistributionMatchingLoss:
    """The distribution matching loss of DMD (Yin et al. 2024a, eq. 7-8) on the student.

    Eq. 7: the gradient of the reverse KL between the student's and the data distribution is
    the fake minus the real score at a noised student sample; eq. 8 writes it in x0 space,
    (x0_fake - x0_real), normalised per sample by mean |x0 - x0_real|. The surrogate
    0.5 * mse(x0, stopgrad(x0 - grad)) has exactly grad / numel as its gradient.
    """

    def __init__(self, schedule: NoiseSchedule, min_t_fraction: float = 0.02,
                 max_t_fraction: float = 0.98):
        self.schedule = schedule
        steps = schedule.num_train_timesteps
        self.min_t = int(round(min_t_fraction * steps))  # 20 for 1000 steps
        self.max_t = min(int(round(max_t_fraction * steps)), steps - 1)  # 980

    @torch.no_grad()
    def dm_gradient(self, x0: torch.Tensor, real_x0_fn: X0Fn, fake_x0_fn: X0Fn,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """DMD eq. 7-8: the normalised DM gradient in x0 space, float32, no graph."""
        x0_detached = x0.detach().float()
        t = random_timesteps(x0.shape[0], self.min_t, self.max_t, generator)
        noise = random_noise_like(x0_detached, generator)
        x_t = self.schedule.add_noise(x0_detached, noise, t)
        x0_fake = fake_x0_fn(x_t, t).float()  # score of the student's distribution
        x0_real = real_x0_fn(x_t, t).float()  # teacher with CFG: score of the data
        reduce_dims = tuple(range(1, x0.dim()))
        normaliser = (x0_detached - x0_real).abs().mean(dim=reduce_dims, keepdim=True)  # (B,1,..)
        # A zero normaliser (x0 already equals the teacher's x0) gives 0/0 or x/0: such a
        # sample contributes no gradient instead of NaN or a float32-max step.
        return torch.nan_to_num((x0_fake - x0_real) / normaliser, nan=0.0, posinf=0.0,
                                neginf=0.0)

    def __call__(self, x0: torch.Tensor, real_x0_fn: X0Fn, fake_x0_fn: X0Fn,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        grad = self.dm_gradient(x0, real_x0_fn, fake_x0_fn, generator)
        x0 = x0.float()
        target = (x0 - grad).detach()
        return 0.5 * F.mse_loss(x0, target, reduction="mean")


class CriticDenoisingLoss:
    """The fake score's denoising loss on detached student samples (DMD sec. 3.2).

    t ~ U{0 .. T-1}; the target is in the teacher's parameterisation (eps for epsilon
    teachers, v for v-prediction, x0 for sample), so the critic stays a copy of the teacher.
    """

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def noisy_inputs(self, x0: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for detached samples x0."""
        x0 = x0.detach().float()
        t = random_timesteps(x0.shape[0], 0, self.schedule.num_train_timesteps - 1, generator)
        noise = random_noise_like(x0, generator)
        x_t = self.schedule.add_noise(x0, noise, t)
        return x_t, t, self.target(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Regression target of the schedule's prediction type (Salimans & Ho 2022 for v)."""
        prediction_type = self.schedule.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "v_prediction":
            abar = self.schedule.abar(t, x0)
            return abar.sqrt() * noise - (1 - abar).sqrt() * x0
        return x0

    @staticmethod
    def loss_from_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.float(), target.float(), reduction="mean")

    def __call__(self, model_fn: ModelFn, x0: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        x_t, t, target = self.noisy_inputs(x0, generator)
        return self.loss_from_output(model_fn(x_t, t), target)


class RegressionLoss:
    """The regression loss of DMD sec. 3.3 on cached teacher noise-image pairs, in latents.

    The paper uses LPIPS; LPIPS needs pretrained VGG/AlexNet weights that cannot be fetched
    offline, and it is defined on decoded pixels (a VAE decode per step). A latent L2 (or L1)
    needs no weights, costs nothing, and anchors the coarse layout just as well early on.
    """

    def __init__(self, distance: str = "l2"):
        if distance not in ("l2", "l1"):
            raise ValueError(f"unknown regression distance {distance!r}")
        self.distance = distance

    def __call__(self, x0_student: torch.Tensor, x0_reference: torch.Tensor) -> torch.Tensor:
        x0_student, x0_reference = x0_student.float(), x0_reference.float()
        if self.distance == "l1":
            return F.l1_loss(x0_student, x0_reference)
        return F.mse_loss(x0_student, x0_reference)


class GanLoss:
    """The GAN objective of DMD2 (Yin et al. 2024b, sec. 4.3), non-saturating.

    A classifier head on the critic's trunk tells noised real latents from noised student
    samples; the student is trained to be classified as real.
    """

    def __init__(self, schedule: NoiseSchedule, generator_weight: float = 1e-3,
                 critic_weight: float = 1e-2):
        self.schedule = schedule
        self.generator_weight = generator_weight  # w_g: 1e-3 for SD1.5, 3e-3 for ImageNet
        self.critic_weight = critic_weight

    def noisy_fake(self, x0: torch.Tensor, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t) of student samples at t ~ U{0 .. T-1}, keeping their graph (DMD2 sec. 4.3)."""
        t = random_timesteps(x0.shape[0], 0, self.schedule.num_train_timesteps - 1, generator)
        return self.schedule.add_noise(x0, random_noise_like(x0, generator), t), t

    def noisy_real(self, real_x0: torch.Tensor, t: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Real latents noised at the student samples' timesteps t (DMD2 sec. 4.3)."""
        return self.schedule.add_noise(real_x0, random_noise_like(real_x0, generator), t)

    def critic_loss(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """critic: weight * (softplus(l_fake) + softplus(-l_real)), mean over the batch."""
        loss = F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()
        return self.critic_weight * loss

    def generator_loss(self, logits_fake: torch.Tensor) -> torch.Tensor:
        """generator: w_g * softplus(-l_fake), mean over the batch."""
        return self.generator_weight * F.softplus(-logits_fake.float()).mean()
