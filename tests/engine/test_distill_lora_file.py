"""`distill --lora-rank` also writes its student as a standard LoRA file that diffusers'
own loader accepts, fusing to the same weights as the engine's loader and the student."""

from __future__ import annotations

import torch

from engine.api import LoraChoice
from engine.runtime.lora_files import read_lora_file
from engine.runtime.torch_backend import TorchBackend
from tests.engine.test_distill_run import run_trainer, tiny_config


def diffusers_pipeline(folder):
    """A StableDiffusionPipeline built from the tiny teacher folder's parts."""
    from diffusers import (
        AutoencoderTiny,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    return StableDiffusionPipeline(
        vae=AutoencoderTiny.from_pretrained(folder / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=DDPMScheduler.from_pretrained(folder / "scheduler", steps_offset=1,
                                                 clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_a_lora_student_is_a_lora_file_that_diffusers_loads(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, lora_rank=2, regression_weight=0.0)
    assert run_trainer(config) == 2  # the last step
    lora_path = out / "lora" / "pytorch_lora_weights.safetensors"
    lora = read_lora_file(lora_path)
    assert {layer.component for layer in lora.layers} == {"unet"} and len(lora.layers) > 0
    assert any(layer.up.abs().max() > 0 for layer in lora.layers)  # trained, not the zero init

    ours = TorchBackend.load(str(tiny_model_dir), "cpu")
    ours.set_loras([LoraChoice(str(lora_path), 1.0)])
    pipe = diffusers_pipeline(tiny_model_dir)
    pipe.load_lora_weights(str(lora_path.parent))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    student = TorchBackend.load(str(out / "student"), "cpu").parts.unet.state_dict()
    theirs = pipe.unet.state_dict()
    checked = 0
    for key, value in ours.parts.unet.state_dict().items():
        torch.testing.assert_close(theirs[key], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(student[key].float(), value, rtol=0, atol=2e-3)  # fp16 copy
        checked += 1
    assert checked == len(theirs)
