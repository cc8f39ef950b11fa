"""Tiny random control models that fit engine.pipeline.tiny's UNet, built offline, for tests
and the control bench."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CROSS_ATTENTION = 32  # the tiny pipeline's text width


def write_control_type(folder: Path, control_type: str | None) -> None:
    if control_type:
        (folder / "control.json").write_text(json.dumps({"type": control_type}))


def build_tiny_controlnet(folder: str | Path, *, control_type: str | None = "scribble",
                          cross_attention_dim: int = TINY_CROSS_ATTENTION,
                          pooled_text: bool = False, seed: int = 0) -> Path:
    """A random ControlNet for the tiny 32-px pipeline (4x4 latent). Its zero convolutions
    (the outputs and the control image embedding's last layer) get random weights too, so
    that the frame follows the control image from the first call."""
    from diffusers import ControlNetModel

    folder = Path(folder)
    torch.manual_seed(seed)
    options = {"class_embed_type": "projection",
               "projection_class_embeddings_input_dim": cross_attention_dim} if pooled_text else {}
    network = ControlNetModel(
        in_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
        conditioning_embedding_out_channels=(8, 8, 8, 16), **options,
    )
    randomize_zero_convolutions(network)
    network.save_pretrained(folder)
    write_control_type(folder, control_type)
    return folder


def build_tiny_adapter(folder: str | Path, *, control_type: str | None = "scribble",
                       seed: int = 0) -> Path:
    """A random T2I-Adapter whose feature pyramid (16 channels, then 32, at 2x2) fits the tiny
    UNet's down blocks."""
    from diffusers import T2IAdapter

    folder = Path(folder)
    torch.manual_seed(seed)
    # full_adapter_xl keeps both features at one resolution, as the tiny UNet's blocks need
    network = T2IAdapter(in_channels=3, channels=[16, 32], num_res_blocks=1,
                         downscale_factor=16, adapter_type="full_adapter_xl")
    network.save_pretrained(folder)
    write_control_type(folder, control_type)
    return folder


def build_controlnet_like(unet, latent_channels: int, folder: str | Path, *,
                          control_type: str | None = "scribble", seed: int = 0) -> Path:
    """A random ControlNet of the shape a ControlNet for this UNet has (its down blocks,
    widths and text width; a latent-only input), for benchmarks: random zero convolutions
    too, so that its residuals reach the UNet as real ones do."""
    import inspect

    from diffusers import ControlNetModel

    folder = Path(folder)
    torch.manual_seed(seed)
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    config = {name: value for name, value in unet.config.items()
              if name in accepted and name not in ("self", "conditioning_channels")}
    config["in_channels"] = latent_channels
    network = ControlNetModel(**config).to(next(unet.parameters()).dtype)
    randomize_zero_convolutions(network)
    network.save_pretrained(folder)
    write_control_type(folder, control_type)
    return folder


def randomize_zero_convolutions(network) -> None:
    """Random weights for a ControlNet's zero-initialised layers (its outputs and the control
    image embedding's last layer), so that an untrained one already steers the frame."""
    with torch.no_grad():
        for zero_conv in [*network.controlnet_down_blocks, network.controlnet_mid_block,
                          network.controlnet_cond_embedding.conv_out]:
            for parameter in zero_conv.parameters():
                parameter.normal_(0.0, 0.3)
