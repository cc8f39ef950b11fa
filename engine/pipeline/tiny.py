"""Tiny random pipeline folders, built offline, for tests and smoke runs.

family None is the engine's original tiny SD-style model (a character tokenizer, 32-wide
CLIP). "sd1", "sd2" and "sdxl" follow their family's real rules at toy widths, so that the
single-file loader's shape inference and shipped configs load them: CLIP's real tokenizer
and 64-channel text heads, 32 normalisation groups, SD 1.x's 8 attention heads, SD 2.x and
SDXL's 64-channel heads with linear projections, SD 2.x's v-prediction and "!" padding, and
SDXL's second encoder with projection and text_time added embedding.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl")
LEGACY_TEXT_WIDTH = 32  # the original tiny model's CLIP width
FAMILY_TEXT_WIDTH = 64  # one 64-channel head, as CLIP's heads are
HEAD_WIDTH = 64  # SD 2.x and SDXL attention heads are 64 channels wide
VAE_SCALING = {None: 0.5, "sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
FAMILY_CHANNELS = {"sd1": (32, 64), "sd2": (64, 128), "sdxl": (64, 128)}


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


def tiny_clip(family: str | None, with_projection: bool = False):
    """A random two-layer CLIP text model: the legacy 32-wide one over the character
    tokenizer, or a family's 64-wide one over CLIP's 49,408-token vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family is None:
        config = CLIPTextConfig(
            vocab_size=100, hidden_size=LEGACY_TEXT_WIDTH, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    else:
        from engine.runtime.clip_vocab import MAX_TOKENS, VOCAB_SIZE

        open_clip = with_projection or family == "sd2"
        config = CLIPTextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=FAMILY_TEXT_WIDTH, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=FAMILY_TEXT_WIDTH // HEAD_WIDTH,
            max_position_embeddings=MAX_TOKENS, bos_token_id=VOCAB_SIZE - 2,
            eos_token_id=VOCAB_SIZE - 1, pad_token_id=1,
            hidden_act="gelu" if open_clip else "quick_gelu", projection_dim=FAMILY_TEXT_WIDTH,
        )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_unet(family: str | None, in_channels: int, pooled_text: bool):
    """A random UNet (4x4 latent, two levels) with its family's attention layout."""
    from diffusers import UNet2DConditionModel

    text_width = LEGACY_TEXT_WIDTH if family is None else FAMILY_TEXT_WIDTH
    channels = FAMILY_CHANNELS.get(family, (16, 32))
    options: dict = {"attention_head_dim": 4, "norm_num_groups": 8}
    if family is not None:
        options.update(attention_head_dim=8, norm_num_groups=32)
    if family in ("sd2", "sdxl"):  # 64-channel heads, linear in/out projections
        options.update(attention_head_dim=tuple(width // HEAD_WIDTH for width in channels),
                       use_linear_projection=True)
    if pooled_text:
        options.update(class_embed_type="projection",
                       projection_class_embeddings_input_dim=text_width)
    cross_attention_dim = text_width
    if family == "sdxl":  # both encoders' states; pooled text + 6 size ids added to time
        cross_attention_dim = 2 * text_width
        time_width = 8
        options.update(transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                       addition_time_embed_dim=time_width,
                       projection_class_embeddings_input_dim=text_width + 6 * time_width)
    return UNet2DConditionModel(
        sample_size=4, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=channels, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        **options,
    )


def tiny_autoencoder(kind: str, family: str | None):
    """A random 8x autoencoder: AutoencoderTiny ("tiny") or AutoencoderKL ("kl"; 32 channels
    and 32 groups for a family model, as SD's own)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if kind == "tiny":
        return AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4, scaling_factor=1.0,
        )
    width, groups = (8, 4) if family is None else (32, 32)
    return AutoencoderKL(
        block_out_channels=(width,) * 4, norm_num_groups=groups, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=VAE_SCALING[family],
    )


def write_tokenizers(folder: Path, family: str | None) -> None:
    """tokenizer/ (and SDXL's tokenizer_2/): the character tokenizer, or CLIP's own."""
    if family is None:
        write_char_tokenizer(folder / "tokenizer")
        return
    from engine.runtime.clip_vocab import save_clip_tokenizer

    save_clip_tokenizer(folder / "tokenizer", "open_clip" if family == "sd2" else "clip")
    if family == "sdxl":
        save_clip_tokenizer(folder / "tokenizer_2", "open_clip")


def build_tiny_pipeline(folder: str | Path, *, family: str | None = None, in_channels: int = 4,
                        autoencoder: str | None = None, prediction_type: str | None = None,
                        pooled_text: bool = False, seed: int = 0,
                        student_timesteps: list[int] | None = None) -> Path:
    """Write a random 32x32-pixel pipeline folder: the original tiny model (family None) or a
    tiny "sd1", "sd2" or "sdxl"; UNet (4x4 latent), autoencoder ("tiny" for family None,
    else "kl" by default), CLIP text model(s); prediction_type defaults to the family's
    (v_prediction for sd2, else epsilon)."""
    from diffusers import DDPMScheduler

    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; use one of {', '.join(FAMILIES)}.")
    folder = Path(folder)
    autoencoder = autoencoder or ("tiny" if family is None else "kl")
    prediction_type = prediction_type or ("v_prediction" if family == "sd2" else "epsilon")
    torch.manual_seed(seed)
    tiny_clip(family).save_pretrained(folder / "text_encoder")
    if family == "sdxl":
        tiny_clip(family, with_projection=True).save_pretrained(folder / "text_encoder_2")
    write_tokenizers(folder, family)
    tiny_unet(family, in_channels, pooled_text).save_pretrained(folder / "unet")
    tiny_autoencoder(autoencoder, family).save_pretrained(folder / "vae")
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
