"""DMD losses: the DM gradient's direction and normalisation, a toy problem with a known
answer, the critic target, the GAN head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.diffusion.schedule import NoiseSchedule
from engine.distill.losses import (
    CriticDenoisingLoss,
    DistributionMatchingLoss,
    GanLoss,
    RegressionLoss,
)
from engine.distill.networks import GanClassifierHead

SCHEDULE = NoiseSchedule.from_config({"beta_schedule": "scaled_linear"})



def constant_x0(value: torch.Tensor):
    return lambda x_t, t: value.expand(x_t.shape[0], *value.shape[1:]).clone()


def test_dm_gradient_is_zero_when_scores_agree():
    x0 = torch.randn(3, 4, 8, 8, requires_grad=True)
    teacher = constant_x0(torch.randn(1, 4, 8, 8))
    rng = torch.Generator().manual_seed(0)
    loss = DistributionMatchingLoss(SCHEDULE)(x0, teacher, teacher, rng)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x0.grad) == 0


def test_dm_gradient_has_the_stated_normalisation_and_points_to_the_teacher():
    x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    x0_real = torch.randn(1, 4, 8, 8)
    x0_fake = torch.randn(1, 4, 8, 8)
    loss = DistributionMatchingLoss(SCHEDULE)(x0, constant_x0(x0_real), constant_x0(x0_fake),
                                              torch.Generator().manual_seed(0))
    loss.backward()
    # grad = (x0_fake - x0_real) / mean|x0 - x0_real| per sample, divided by numel (mse mean)
    normaliser = (x0.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = (x0_fake - x0_real) / normaliser / x0.numel()
    torch.testing.assert_close(x0.grad, expected, rtol=1e-5, atol=1e-9)
    # A gradient-descent step moves x0 away from the critic's x0, toward the teacher's x0.
    step = -x0.grad
    assert float((step * (x0_real - x0_fake)).sum()) > 0


def test_dm_timesteps_stay_inside_two_to_ninety_eight_percent():
    seen = []

    def recorder(x_t, t):
        seen.append(t.clone())
        return torch.zeros_like(x_t)

    loss = DistributionMatchingLoss(SCHEDULE)
    for seed in range(20):
        loss(torch.randn(64, 2), recorder, recorder, torch.Generator().manual_seed(seed))
    t = torch.cat(seen)
    assert int(t.min()) >= 20 and int(t.max()) <= 980
    assert int(t.min()) < 60 and int(t.max()) > 940


def test_dm_loss_survives_a_zero_normaliser():
    x0 = torch.zeros(2, 4, 2, 2, requires_grad=True)
    loss = DistributionMatchingLoss(SCHEDULE)(x0, constant_x0(torch.zeros(1, 4, 2, 2)),
                                              constant_x0(torch.ones(1, 4, 2, 2)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x0.grad).all()


def test_critic_target_follows_the_teacher_parameterisation():
    x0 = torch.randn(4, 4, 8, 8)
    for prediction_type in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule(SCHEDULE.alphas_cumprod, prediction_type)
        loss = CriticDenoisingLoss(schedule)
        x_t, t, target = loss.noisy_inputs(x0, torch.Generator().manual_seed(1))
        # A perfect model output (the target itself) reproduces x0 exactly through to_x0.
        torch.testing.assert_close(schedule.to_x0(target, x_t, t), x0.double().float(),
                                   rtol=1e-4, atol=1e-4)
        assert float(loss(lambda x_t, t, target=target: target, x0,
                          torch.Generator().manual_seed(1))) < 1e-12


def test_regression_and_gan_losses():
    a, b = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    assert float(RegressionLoss("l2")(a, 2 * b)) == pytest.approx(4.0)
    assert float(RegressionLoss("l1")(a, 2 * b)) == pytest.approx(2.0)
    gan = GanLoss(SCHEDULE, generator_weight=1e-3, critic_weight=1e-2)
    zero = torch.zeros(3)
    assert float(gan.critic_loss(zero, zero)) == pytest.approx(1e-2 * 2 * math.log(2))
    assert float(gan.generator_loss(zero)) == pytest.approx(1e-3 * math.log(2))


def test_the_gan_sees_real_and_student_samples_at_the_same_noise_level():
    gan = GanLoss(SCHEDULE)
    x0 = torch.full((2, 4, 2, 2), 0.5, requires_grad=True)
    x_t, t = gan.noisy_fake(x0, torch.Generator().manual_seed(3))
    draws = torch.Generator().manual_seed(3)
    expected_t = torch.randint(0, 1000, (2,), generator=draws)
    expected = SCHEDULE.add_noise(x0.detach(), torch.randn(x0.shape, generator=draws), expected_t)
    assert torch.equal(t, expected_t)
    torch.testing.assert_close(x_t.detach(), expected)
    x_t.sum().backward()  # the student's graph is kept: the generator learns through it
    torch.testing.assert_close(x0.grad, SCHEDULE.abar(t, x0).sqrt().expand_as(x0))
    real = gan.noisy_real(torch.zeros(2, 4, 2, 2), t, torch.Generator().manual_seed(4))
    noise = torch.randn((2, 4, 2, 2), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(real, (1 - SCHEDULE.abar(t, real)).sqrt() * noise)


@pytest.mark.parametrize(("feature_size", "channels"), [(8, 64), (4, 256), (2, 32), (1, 32),
                                                        (32, 64)])
def test_gan_head_gives_one_logit_per_sample(feature_size, channels):
    head = GanClassifierHead(channels, feature_size)
    logits = head(torch.randn(3, channels, feature_size, feature_size))
    assert logits.shape == (3,)
    if feature_size == 8:  # SD1.5 bottleneck: Conv4x4 s2 -> 4x4 -> Conv4x4 s4 -> 1x1
        assert head.layers[3].kernel_size == (4, 4) and head.layers[3].stride == (4, 4)


# -- a toy problem whose answer is known -----------------------------------------------------
MODES = torch.tensor([[1.5, 1.5], [1.5, -1.5], [-1.5, 1.5], [-1.5, -1.5]])
MODE_STD = 0.15


def analytic_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps of the exact score of a Gaussian mixture diffused to t (Tweedie)."""
    abar = SCHEDULE.abar(t, x_t).reshape(-1, 1)
    means = abar.sqrt()[:, None] * MODES[None]  # (B, K, 2)
    variance = abar * MODE_STD**2 + (1 - abar)  # (B, 1)
    log_weights = -((x_t[:, None] - means) ** 2).sum(-1) / (2 * variance)  # (B, K)
    responsibilities = log_weights.softmax(dim=1)
    score = -(responsibilities[..., None] * (x_t[:, None] - means)).sum(1) / variance
    return -(1 - abar).sqrt() * score


class TimeMlp(nn.Module):
    """eps(x_t, t) for 2-D points, conditioned on sqrt(abar) and sqrt(1 - abar)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = SCHEDULE.abar(t, x_t).reshape(-1, 1)
        return self.net(torch.cat([x_t, abar.sqrt(), (1 - abar).sqrt()], dim=1))


def nearest_mode_distance(points: torch.Tensor) -> float:
    return float(torch.cdist(points, MODES).min(dim=1).values.mean())


def test_dm_training_moves_a_toy_generator_onto_the_target_modes(one_thread):
    torch.manual_seed(0)
    generator_net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                                  nn.Linear(64, 2))
    with torch.no_grad():
        generator_net[-1].weight.mul_(0.1)  # start as a blob around the origin
    critic = TimeMlp()
    dm_loss = DistributionMatchingLoss(SCHEDULE)
    critic_loss = CriticDenoisingLoss(SCHEDULE)
    generator_opt = torch.optim.Adam(generator_net.parameters(), lr=1e-2)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    eval_z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(99))

    def teacher_x0(x_t, t):
        return SCHEDULE.to_x0(analytic_eps(x_t, t), x_t, t).float()

    def fake_x0(x_t, t):
        return SCHEDULE.to_x0(critic(x_t, t), x_t, t).float()

    with torch.no_grad():
        before = nearest_mode_distance(generator_net(eval_z))
    for step in range(300):
        for _ in range(2 if step else 50):  # a warm critic first, then TTUR 2
            samples = generator_net(torch.randn(256, 2, generator=rng)).detach()
            critic_opt.zero_grad()
            critic_loss(critic, samples, rng).backward()
            critic_opt.step()
        x0 = generator_net(torch.randn(256, 2, generator=rng))
        generator_opt.zero_grad()
        dm_loss(x0, teacher_x0, fake_x0, rng).backward()
        generator_opt.step()
    with torch.no_grad():
        after = nearest_mode_distance(generator_net(eval_z))
    assert before > 1.5
    assert after < 0.5 * before, (before, after)  # measured: 2.04 -> 0.63
