"""SDXL-shaped random-weight folders for `bench --arch sdxl` (and a tiny one for CPU tests).

The shapes come from the shipped SDXL base config (assets/configs/sdxl.json): UNet
(320, 640, 1280) with transformer depths 1/2/10 and the text_time added embedding, CLIP ViT-L
and OpenCLIP ViT-bigG text encoders; a TAESDXL-shaped AutoencoderTiny decodes, as the live
path would. Frame speed does not depend on the weights, so random ones are measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# the sizes each SDXL arch measures, largest first (SDXL's native 1024; 512 as SDXL-Turbo)
ARCH_SIZES = {"sdxl": (1024, 512), "tiny-sdxl": (64, 32)}


def build_sdxl_folder(folder: Path, device: str = "cpu") -> Path:
    """Random fp16 SDXL-shaped pipeline folder, initialised on device (a GPU builds the 2.6B
    UNet in seconds)."""
    from diffusers import AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.runtime.clip_vocab import save_clip_tokenizer
    from engine.runtime.sd_configs import family_config

    config = family_config("sdxl")
    torch.manual_seed(0)
    with torch.device(device):
        first, second = (spec["config"] for spec in config["text_encoders"])
        CLIPTextModel(CLIPTextConfig(**first)).half().save_pretrained(folder / "text_encoder")
        CLIPTextModelWithProjection(CLIPTextConfig(**second)).half().save_pretrained(
            folder / "text_encoder_2")
        UNet2DConditionModel(**config["unet"]).half().save_pretrained(folder / "unet")
        AutoencoderTiny().half().save_pretrained(folder / "vae")  # TAESDXL's configuration
    save_clip_tokenizer(folder / "tokenizer", "clip")
    save_clip_tokenizer(folder / "tokenizer_2", "open_clip")
    DDPMScheduler(**config["scheduler"]).save_pretrained(folder / "scheduler")
    write_index(folder, config["image_size"])
    return folder


def build_tiny_sdxl_folder(folder: Path) -> Path:
    """The tiny random SDXL pipeline (engine.pipeline.tiny) as a one-step student."""
    from engine.pipeline.tiny import build_tiny_pipeline

    build_tiny_pipeline(folder, family="sdxl", autoencoder="tiny")
    write_index(folder, 32)
    return folder


def write_index(folder: Path, image_size: int) -> None:
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "image_size": image_size,
        "force_zeros_for_empty_prompt": True}))
    (folder / "student.json").write_text(json.dumps({"timesteps": [999], "teacher": ""}))
