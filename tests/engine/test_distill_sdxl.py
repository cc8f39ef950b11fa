"""Distilling from a tiny SDXL-shaped teacher (two text encoders, pooled text and size time
ids in every UNet call) with bf16, gradient checkpointing and a LoRA student."""

from __future__ import annotations

import numpy as np
import torch

from engine.api import GenerateRequest, LoraChoice
from engine.pipeline.generator import Generator
from engine.pipeline.tiny import build_tiny_pipeline
from engine.runtime.torch_backend import TorchBackend
from tests.engine.test_distill_run import run_trainer, tiny_config


def test_a_lora_student_of_an_sdxl_teacher_trains_in_bf16_loads_and_renders(tmp_path):
    teacher_dir = build_tiny_pipeline(tmp_path / "sdxl", family="sdxl")
    out = tmp_path / "run"
    config = tiny_config(teacher_dir, out, lora_rank=2, gradient_checkpointing=True,
                         precision="bf16", regression_pairs=2)
    assert run_trainer(config) == 2  # the last step
    assert (out / "student" / "text_encoder_2").is_dir()  # both encoders travel along

    student = TorchBackend.load(str(out / "student"), "cpu")
    assert student.parts.time_ids is not None and student.student_config["timesteps"] == [999]
    image, _ = Generator(student).generate(GenerateRequest(prompt="red apple", seed=1))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.std() > 0

    # the LoRA file over the teacher gives the student's UNet (student/ holds it in fp16)
    teacher = TorchBackend.load(str(teacher_dir), "cpu")
    before = {key: value.clone() for key, value in teacher.parts.unet.state_dict().items()}
    teacher.set_loras([LoraChoice(str(out / "lora" / "pytorch_lora_weights.safetensors"))])
    fused, saved = teacher.parts.unet.state_dict(), student.parts.unet.state_dict()
    changed = [key for key in fused if not torch.equal(fused[key], before[key])]
    assert changed and all("attn" in key for key in changed)  # the LoRA targets, trained
    for key, value in fused.items():
        torch.testing.assert_close(saved[key].float(), value, rtol=0, atol=2e-3)


def test_precision_bf16_means_bf16_autocast_and_a_bf16_teacher(tmp_path):
    from accelerate.state import AcceleratorState

    from engine.distill import build
    from engine.distill.config import DistillConfig

    AcceleratorState._reset_state(reset_partial_state=True)
    config = DistillConfig(teacher="t", out=str(tmp_path), device="cpu", precision="bf16")
    assert build.make_accelerator(config).mixed_precision == "bf16"
    assert build.teacher_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert build.teacher_dtype(torch.device("cpu"), "auto") == torch.float32
    AcceleratorState._reset_state(reset_partial_state=True)
