"""Golden slices: each sampler on the tiny seed-0 model gives the same latents as before."""

from __future__ import annotations

import pytest
import torch

from engine.diffusion.sampling import ddim_sample, multistep_sample
from engine.diffusion.schedule import ddim_timesteps
from engine.pipeline.generator import Generator
from engine.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return Generator(TorchBackend.load(str(tiny_model_dir), "cpu"))


def first_row(latents: torch.Tensor) -> torch.Tensor:
    return latents[0, 0, 0].double()


def test_ddim_with_guidance_golden_slice(generator, one_thread):
    text, uncond = generator.encode_prompt("red apple"), generator.encode_prompt("")
    x_start = generator.noise_source(5)((1, 4, 4, 4))
    latents = ddim_sample(generator.x0_function(text, None, uncond, 3.0), x_start,
                          ddim_timesteps(4), generator.schedule)
    expected = torch.tensor([26.325863, 6.127847, -20.500694, -27.093580], dtype=torch.float64)
    torch.testing.assert_close(first_row(latents), expected, atol=1e-4, rtol=1e-5)


def test_four_step_student_sampler_golden_slice(generator, one_thread):
    noise = generator.noise_source(5)
    x_start = noise((1, 4, 4, 4))
    latents = multistep_sample(generator.x0_function(generator.encode_prompt("red apple"), None),
                               x_start, [999, 749, 499, 249], generator.schedule, noise)
    expected = torch.tensor([26.308065, 12.652518, -15.222937, -20.858224], dtype=torch.float64)
    torch.testing.assert_close(first_row(latents), expected, atol=1e-4, rtol=1e-5)


def test_one_step_student_sampler_golden_slice(generator, one_thread):
    noise = generator.noise_source(5)
    x_start = noise((1, 4, 4, 4))
    latents = multistep_sample(generator.x0_function(generator.encode_prompt("red apple"), None),
                               x_start, [999], generator.schedule, noise)
    expected = torch.tensor([27.415688, 6.280490, -21.417466, -26.314648], dtype=torch.float64)
    torch.testing.assert_close(first_row(latents), expected, atol=1e-4, rtol=1e-5)
