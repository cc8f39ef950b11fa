"""Tiny random pipeline folders of each supported family, built offline, for tests and smoke
runs: SD 1.x (the default), SD 2.x (v-prediction, linear attention projections, 64-channel
attention heads scaled down) and SDXL (two text encoders, text_time added embedding)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl")
TEXT_WIDTH = 32  # each tiny CLIP encoder's hidden size
TINY_HEAD_DIM = 8  # SD 2.x / SDXL use 64-channel heads; the tiny ones 8
VAE_SCALING = {"sd1": 0.5, "sd2": 0.18215, "sdxl": 0.13025}


def write_char_tokenizer(folder: Path, max_length: int = 16, pad_token: str = "<|endoftext|>"
                         ) -> None:
    """A CLIP BPE tokenizer whose vocabulary is single characters (no merges); SD 2.x and
    SDXL's OpenCLIP tokenizers pad with "!", SD 1.x's with <|endoftext|>."""
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
        "unk_token": "<|endoftext|>", "pad_token": pad_token,
    }))


def tiny_clip(with_projection: bool = False, hidden_act: str = "quick_gelu"):
    """A random two-layer CLIP text model of TEXT_WIDTH over write_char_tokenizer's ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=100, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, hidden_act=hidden_act, projection_dim=TEXT_WIDTH,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_unet(family: str, in_channels: int, pooled_text: bool):
    """A random UNet (4x4 latent, two levels) with its family's attention layout."""
    from diffusers import UNet2DConditionModel

    options: dict = {"attention_head_dim": 4}
    if pooled_text:
        options.update(class_embed_type="projection",
                       projection_class_embeddings_input_dim=TEXT_WIDTH)
    if family in ("sd2", "sdxl"):  # heads of a fixed width, linear in/out projections
        options.update(attention_head_dim=(16 // TINY_HEAD_DIM, 32 // TINY_HEAD_DIM),
                       use_linear_projection=True)
    cross_attention_dim = TEXT_WIDTH
    if family == "sdxl":  # both encoders' states; pooled text + 6 size ids added to time
        cross_attention_dim = 2 * TEXT_WIDTH
        time_width = 8
        options.update(transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                       addition_time_embed_dim=time_width,
                       projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * time_width)
    return UNet2DConditionModel(
        sample_size=4, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        norm_num_groups=8, **options,
    )


def tiny_autoencoder(kind: str, scaling_factor: float):
    """A random 8x autoencoder: AutoencoderTiny ("tiny") or AutoencoderKL ("kl")."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if kind == "tiny":
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4, scaling_factor=1.0,
        )
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=scaling_factor,
    )


def build_tiny_pipeline(folder: str | Path, *, family: str = "sd1", in_channels: int = 4,
                        autoencoder: str | None = None, prediction_type: str | None = None,
                        pooled_text: bool = False, seed: int = 0,
                        student_timesteps: list[int] | None = None) -> Path:
    """Write a random 32x32-pixel pipeline folder of family "sd1", "sd2" or "sdxl": UNet
    (4x4 latent), autoencoder ("tiny" for sd1, else "kl" by default), CLIP text model(s);
    prediction_type defaults to the family's (v_prediction for sd2, else epsilon)."""
    from diffusers import DDPMScheduler

    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; use one of {', '.join(FAMILIES)}.")
    folder = Path(folder)
    autoencoder = autoencoder or ("tiny" if family == "sd1" else "kl")
    prediction_type = prediction_type or ("v_prediction" if family == "sd2" else "epsilon")
    torch.manual_seed(seed)
    open_clip_pad = "<|endoftext|>" if family == "sd1" else "!"
    tiny_clip(hidden_act="quick_gelu" if family != "sd2" else "gelu").save_pretrained(
        folder / "text_encoder")
    write_char_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>" if family != "sd2"
                         else open_clip_pad)
    if family == "sdxl":
        tiny_clip(with_projection=True, hidden_act="gelu").save_pretrained(
            folder / "text_encoder_2")
        write_char_tokenizer(folder / "tokenizer_2", pad_token=open_clip_pad)
    tiny_unet(family, in_channels, pooled_text).save_pretrained(folder / "unet")
    tiny_autoencoder(autoencoder, VAE_SCALING[family]).save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    index = {"_class_name": "DMDStudioPipeline", "image_size": 32}
    if family == "sdxl":
        index.update(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    if student_timesteps:
        (folder / "student.json").write_text(json.dumps({
            "timesteps": student_timesteps, "edit_timesteps": [999, 749, 499, 249],
            "teacher": "tiny", "method": "dmd2", "training_steps": 0, "metrics": {},
        }, indent=1))
    return folder
