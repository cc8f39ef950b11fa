"""Single-file ControlNets in the original release layout (Zhang et al. 2023's
control_v11p_sd15_scribble.pth and the like): a copy of the UNet's input blocks and middle
block (input_blocks.*, middle_block.*), the control image embedding (input_hint_block.*) and
the zero convolutions (zero_convs.*, middle_block_out.*), with or without a control_model.
prefix. The family (SD 1.x, SD 2.x, SDXL) is read from the key layout, the dimensions from
the tensor shapes (the same inference as single-file UNets), and the tensors are converted
with diffusers' public single-file helper, offline."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.sd_configs import (
    family_config,
    indices,
    infer_encoder_config,
    shape_of,
    sub_state,
)
from engine.runtime.single_file import CHECKPOINT_SUFFIXES, load_into, read_state_dict

CONTROL_PREFIX = "control_model."
# Keys every original-layout ControlNet has (after the prefix is removed).
CONTROLNET_KEYS = ("input_blocks.0.0.weight", "zero_convs.0.0.weight",
                   "input_hint_block.0.weight", "middle_block_out.0.weight")
ADDED_EMBEDDING = "label_emb.0.0.weight"  # SDXL's pooled text + size embedding


def is_control_file(path: Path) -> bool:
    """Whether path is a file with a checkpoint suffix (.safetensors, .ckpt, .pt, .pth)."""
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file()


def controlnet_state(state: dict, path: Path) -> dict:
    """The ControlNet's tensors in the original layout without the control_model. prefix;
    one sentence when the file holds another layout."""
    if any(key.startswith(CONTROL_PREFIX) for key in state):
        state = sub_state(state, CONTROL_PREFIX)
    if not all(key in state for key in CONTROLNET_KEYS):
        raise ModelLoadError(f"{path} is not a ControlNet in the original layout (no "
                             "input_hint_block, zero_convs and middle_block_out tensors); use "
                             "a ControlNet release file or a diffusers control model folder.")
    return state


def controlnet_family(state: dict) -> str:
    """"sdxl" (an added pooled-text embedding), "sd2" (linear attention projections) or
    "sd1" (1x1-convolution projections), from a ControlNet's original-layout keys."""
    if ADDED_EMBEDDING in state:
        return "sdxl"
    projection = next((value for key, value in state.items() if key.endswith(".proj_in.weight")),
                      None)
    return "sd2" if projection is not None and projection.ndim == 2 else "sd1"


def hint_widths(state: dict) -> list[int]:
    """The control image embedding's widths: the output channels of its first convolution and
    of each strided one (every fourth layer), the last (zero) convolution excluded."""
    layers = indices(state, r"input_hint_block\.(\d+)\.weight")
    return [int(state[f"input_hint_block.{layer}.weight"].shape[0])
            for layer in layers[:-1] if layer % 4 == 0]


def controlnet_config(state: dict, unet_config) -> dict:
    """ControlNetModel's config: the family config's UNet with the dimensions the tensors
    reveal, plus the control image's channels and embedding widths. unet_config: the base
    model's UNet config (SDXL's pooled text width comes from it)."""
    from diffusers import ControlNetModel

    family = controlnet_family(state)
    family_settings = family_config(family)
    pooled_width = None
    if family == "sdxl" and unet_config.get("addition_time_embed_dim"):
        pooled_width = (unet_config.projection_class_embeddings_input_dim
                        - 6 * unet_config.addition_time_embed_dim)
    encoder = infer_encoder_config(state, family_settings["unet"],
                                   family_settings.get("attention_head_width"), pooled_width)
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {name: value for name, value in encoder.items()
              if name in accepted and name != "self"}
    hint = shape_of(state, "input_hint_block.0.weight", "the control image embedding")
    config.update(conditioning_channels=int(hint[1]),
                  conditioning_embedding_out_channels=hint_widths(state))
    return config


def load_controlnet_file(path: Path, unet_config, dtype: torch.dtype):
    """A diffusers ControlNetModel from an original-layout ControlNet file (.safetensors, or
    .ckpt/.pth read by torch.load with weights_only=True)."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_TO_LDM_MAPPING,
        convert_controlnet_checkpoint,
    )

    state = controlnet_state(read_state_dict(path), path)
    config = controlnet_config(state, unet_config)
    converted = convert_controlnet_checkpoint(state, config)
    embedding = ("addition_embed_type" if config.get("addition_embed_type")
                 else "class_embed_type" if config.get("class_embed_type") else None)
    if embedding:  # the helper leaves the added / class embedding to its caller
        for new, old in DIFFUSERS_TO_LDM_MAPPING["controlnet"][embedding].items():
            if old in state:
                converted[new] = state[old]
    converted = {key: value for key, value in converted.items() if value is not None}
    return load_into(ControlNetModel, config, converted, "ControlNet", dtype)
