"""A tiny random SD-style pipeline folder, built offline, for tests and smoke runs."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def write_char_tokenizer(folder: Path, max_length: int = 16) -> None:
    """A CLIP BPE tokenizer whose vocabulary is single characters (no merges)."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + "!?.,'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))


def build_tiny_pipeline(folder: str | Path, *, in_channels: int = 4, autoencoder: str = "tiny",
                        prediction_type: str = "epsilon", pooled_text: bool = False,
                        seed: int = 0, student_timesteps: list[int] | None = None) -> Path:
    """Write a random 32x32-pixel pipeline: UNet (4x4 latent), autoencoder, CLIP text model."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    hidden = 32
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))
    text_model.save_pretrained(folder / "text_encoder")
    write_char_tokenizer(folder / "tokenizer")
    unet_options = {"class_embed_type": "projection",
                    "projection_class_embeddings_input_dim": hidden} if pooled_text else {}
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=hidden,
        attention_head_dim=4, norm_num_groups=8, **unet_options,
    )
    unet.save_pretrained(folder / "unet")
    if autoencoder == "tiny":
        vae = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4, scaling_factor=1.0,
        )
    else:
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.5,
        )
    vae.save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DMDStudioPipeline",
                                                         "image_size": 32}, indent=1))
    if student_timesteps:
        (folder / "student.json").write_text(json.dumps({
            "timesteps": student_timesteps, "edit_timesteps": [999, 749, 499, 249],
            "teacher": "tiny", "method": "dmd2", "training_steps": 0, "metrics": {},
        }, indent=1))
    return folder
