"""Noise schedule and parameterisation conversions against values computed by hand."""

import math

import pytest
import torch

from engine.diffusion.sampling import edit_start, teacher_start
from engine.diffusion.schedule import (
    NoiseSchedule,
    ddim_timesteps,
    eps_from_x0,
    student_timesteps,
    x0_from_eps,
    x0_from_v,
)


def sd_schedule(prediction_type="epsilon"):
    return NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                      "beta_end": 0.012, "num_train_timesteps": 1000,
                                      "prediction_type": prediction_type})


def test_sd_alphas_cumprod_matches_published_values():
    schedule = sd_schedule()
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, rel=1e-9)
    assert schedule.alphas_cumprod[999].item() == pytest.approx(0.0047, abs=1e-4)


def test_x0_from_eps_by_hand():
    # abar = 0.25: x0 = (x_t - sqrt(0.75) eps) / 0.5
    x_t, eps, abar = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.25])
    expected = (1.0 - math.sqrt(0.75) * 0.5) / 0.5
    assert x0_from_eps(x_t, eps, abar).item() == pytest.approx(expected)
    assert eps_from_x0(x_t, torch.tensor([expected]), abar).item() == pytest.approx(0.5)


def test_x0_from_v_by_hand():
    # abar = 0.64: x0 = 0.8 x_t - 0.6 v
    x_t, v, abar = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.64])
    assert x0_from_v(x_t, v, abar).item() == pytest.approx(0.8 * 2.0 - 0.6 * 1.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_to_x0_recovers_the_clean_sample_from_the_exact_prediction(prediction_type):
    schedule = sd_schedule(prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 2, generator=generator)
    noise = torch.randn(3, 4, 2, 2, generator=generator)
    t = torch.tensor([10, 500, 990])
    x_t = schedule.add_noise(x0, noise, t)
    abar = schedule.abar(t, x0)
    exact = {"epsilon": noise, "sample": x0,
             "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[prediction_type]
    torch.testing.assert_close(schedule.to_x0(exact, x_t, t), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(schedule.to_eps(exact, x_t, t), noise, atol=1e-3, rtol=1e-3)


def test_unknown_prediction_type_is_a_clear_error():
    from engine.api import ModelLoadError

    with pytest.raises(ModelLoadError, match="prediction_type"):
        NoiseSchedule.from_config({"prediction_type": "flow"})


def test_timestep_lists():
    assert student_timesteps(1) == [999]
    assert student_timesteps(2) == [999, 499]
    assert student_timesteps(4) == [999, 749, 499, 249]
    assert ddim_timesteps(50)[0] == 999 and ddim_timesteps(50)[-1] == 19
    assert len(set(ddim_timesteps(50))) == 50


def test_edit_start_maps_strength_to_the_list_tail():
    edit = [999, 749, 499, 249]
    assert edit_start(edit, 1.0) == edit
    assert edit_start(edit, 0.5) == [499, 249]
    assert edit_start(edit, 0.3) == [249]
    assert edit_start(edit, 0.1) == []
    assert teacher_start(50, 1.0) == 0 and teacher_start(50, 0.0) == 50
