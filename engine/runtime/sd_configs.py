"""Model families of single-file Stable Diffusion checkpoints: detection from the key layout,
the shipped family configs (assets/configs) and the dimensions read from tensor shapes.

A checkpoint in the original (CompVis / Stability) layout keeps its UNet under
model.diffusion_model., its autoencoder under first_stage_model. and its text encoder(s)
under a prefix that names the family: SD 1.x's CLIP ViT-L under cond_stage_model.transformer.,
SD 2.x's OpenCLIP ViT-H under cond_stage_model.model., SDXL's CLIP ViT-L and OpenCLIP
ViT-bigG under conditioner.embedders.0.transformer. and conditioner.embedders.1.model.
Every dimension a tensor reveals (channels, input channels, layers, transformer depth,
cross-attention width, projection kind, text widths and depths) is read from the checkpoint
and overrides the family config, so fine-tunes, inpainting models and small test models load.
"""

from __future__ import annotations

import re

import torch

from engine.api import ModelLoadError
from engine.paths import ASSETS_ROOT
from engine.untrusted import read_json_file

CONFIG_DIR = ASSETS_ROOT / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
FAMILY_PREFIXES = (  # checked in this order: SDXL's also has a CLIP-L under embedders.0
    ("sdxl", "conditioner.embedders.1.model."),
    ("sd2", "cond_stage_model.model."),
    ("sd1", "cond_stage_model.transformer."),
)
FAMILY_TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
TEXT_HEAD_WIDTH = 64  # every CLIP text encoder SD uses has 64-channel attention heads


def detect_family(keys) -> str:
    """"sd1", "sd2" or "sdxl" from a checkpoint's key layout; ModelLoadError otherwise."""
    keys = list(keys)
    if not any(key.startswith(UNET_PREFIX) for key in keys):
        raise ModelLoadError("This checkpoint has no UNet in the original layout "
                             f"({UNET_PREFIX}*); it is not an SD 1.x, SD 2.x or SDXL checkpoint.")
    for family, prefix in FAMILY_PREFIXES:
        if any(key.startswith(prefix) for key in keys):
            return family
    raise ModelLoadError("This checkpoint's text encoder keys match no known layout (SD 1.x, "
                         "SD 2.x or SDXL); refiners and other models are not supported.")


def family_config(family: str) -> dict:
    """The shipped config of a family (assets/configs/<family>.json)."""
    path = CONFIG_DIR / f"{family}.json"
    try:
        return read_json_file(path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"The model config {path} is missing or damaged; reinstall "
                             "DMD Studio.") from error


def sub_state(state: dict, prefix: str) -> dict:
    """The tensors under prefix, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def indices(state: dict, pattern: str) -> list[int]:
    """Sorted distinct integers N of keys matching pattern (a regex with one (\\d+) group)."""
    compiled = re.compile(pattern)
    return sorted({int(match.group(1)) for key in state if (match := compiled.match(key))})


def shape_of(state: dict, key: str, what: str) -> torch.Size:
    if key not in state:
        raise ModelLoadError(f"This checkpoint lacks {what} ({key}); it is incomplete or not "
                             "a Stable Diffusion checkpoint.")
    return state[key].shape


def infer_unet_config(unet_state: dict, base: dict, head_width: int | None,
                      pooled_width: int | None) -> dict:
    """The family's UNet config with the dimensions unet_state (original layout, no prefix)
    reveals: infer_encoder_config's and the output channels."""
    config = infer_encoder_config(unet_state, base, head_width, pooled_width)
    config["out_channels"] = int(shape_of(unet_state, "out.2.weight", "the UNet's output")[0])
    return config


def infer_encoder_config(unet_state: dict, base: dict, head_width: int | None,
                         pooled_width: int | None) -> dict:
    """The family's UNet config with the dimensions of unet_state's input blocks (a UNet's or
    a ControlNet's, original layout, no prefix): input channels, block widths, layers per
    block, which levels attend and their transformer depth, cross-attention width, linear or
    1x1-conv projections, SDXL's added embedding width. head_width: channels per attention
    head (SD 2.x, SDXL), else the config's head count stays."""
    conv_in = shape_of(unet_state, "input_blocks.0.0.weight", "the UNet's input convolution")
    input_blocks = indices(unet_state, r"input_blocks\.(\d+)\.")
    downsamplers = [i for i in input_blocks if f"input_blocks.{i}.0.op.weight" in unet_state]
    levels = len(downsamplers) + 1
    layers = (len(input_blocks) - 1 - len(downsamplers)) // levels
    widths, down_types, depths = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        widths.append(int(shape_of(unet_state, f"input_blocks.{first}.0.out_layers.3.weight",
                                   "a UNet resnet")[0]))
        depth = len(indices(unet_state, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
        down_types.append("CrossAttnDownBlock2D" if depth else "DownBlock2D")
        depths.append(depth or 1)
    attention = [key for key in unet_state if key.endswith("attn2.to_k.weight")]
    if not attention:
        raise ModelLoadError("This checkpoint's UNet has no cross-attention layers.")
    proj_in = next(key for key in unet_state if key.endswith(".proj_in.weight"))
    config = dict(base)
    config.update(
        in_channels=int(conv_in[1]),
        block_out_channels=widths, layers_per_block=layers, down_block_types=down_types,
        up_block_types=["CrossAttnUpBlock2D" if kind.startswith("CrossAttn") else "UpBlock2D"
                        for kind in reversed(down_types)],
        transformer_layers_per_block=depths,
        cross_attention_dim=int(unet_state[attention[0]].shape[1]),
        use_linear_projection=unet_state[proj_in].ndim == 2,
    )
    if head_width:
        config["attention_head_dim"] = [max(1, width // head_width) for width in widths]
    if config.get("addition_embed_type") == "text_time":
        added = int(shape_of(unet_state, "label_emb.0.0.weight", "SDXL's added embedding")[1])
        config["projection_class_embeddings_input_dim"] = added
        config["addition_time_embed_dim"] = (added - int(pooled_width or 0)) // 6
    return config


def infer_vae_config(vae_state: dict, base: dict) -> dict:
    """The family's autoencoder config with the widths, depth and latent channels of
    vae_state (original layout, no prefix)."""
    levels = indices(vae_state, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelLoadError("This checkpoint has no autoencoder (first_stage_model.*); the "
                             "engine needs a checkpoint with its VAE baked in.")
    config = dict(base)
    config.update(
        block_out_channels=[int(shape_of(vae_state, f"encoder.down.{level}.block.0.conv2.weight",
                                         "an autoencoder block")[0]) for level in levels],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=len(indices(vae_state, r"encoder\.down\.0\.block\.(\d+)\.")),
        latent_channels=int(shape_of(vae_state, "decoder.conv_in.weight", "the decoder")[1]),
        in_channels=int(shape_of(vae_state, "encoder.conv_in.weight", "the encoder")[1]),
    )
    return config


def infer_clip_config(text_state: dict, base: dict, open_clip: bool,
                      penultimate: bool = False) -> dict:
    """The family's CLIP text config with the widths and depth of text_state: HF layout
    (embeddings.*, encoder.layers.N.*) or OpenCLIP layout (token_embedding, resblocks.N);
    penultimate: the UNet reads the layer before the last, which the model drops."""
    if open_clip:
        tokens = shape_of(text_state, "token_embedding.weight", "the text token embedding")
        positions = shape_of(text_state, "positional_embedding", "the text positions")
        depth = len(indices(text_state, r"transformer\.resblocks\.(\d+)\."))
        inner = shape_of(text_state, "transformer.resblocks.0.mlp.c_fc.weight", "a text layer")
    else:
        text_state = {key.removeprefix("text_model."): value for key, value in text_state.items()}
        tokens = shape_of(text_state, "embeddings.token_embedding.weight",
                          "the text token embedding")
        positions = shape_of(text_state, "embeddings.position_embedding.weight",
                             "the text positions")
        depth = len(indices(text_state, r"encoder\.layers\.(\d+)\."))
        inner = shape_of(text_state, "encoder.layers.0.mlp.fc1.weight", "a text layer")
    config = dict(base)
    config.update(vocab_size=int(tokens[0]), hidden_size=int(tokens[1]),
                  num_attention_heads=max(1, int(tokens[1]) // TEXT_HEAD_WIDTH),
                  max_position_embeddings=int(positions[0]), intermediate_size=int(inner[0]),
                  num_hidden_layers=depth - 1 if penultimate else depth)
    if "text_projection" in text_state:
        config["projection_dim"] = int(text_state["text_projection"].shape[1])
    return config
