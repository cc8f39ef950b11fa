"""Random LoRA files for the tiny pipelines (diffusers / PEFT and kohya naming) and a tiny
fast decoder folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.runtime.lora import find_module
from engine.runtime.lora_files import write_lora_file

# attention projections, a 3x3 conv of a ResNet and a CLIP text-encoder projection
TINY_UNET_TARGETS = ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                     "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
                     "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                     "down_blocks.0.resnets.0.conv1")
TINY_TEXT_TARGETS = ("text_model.encoder.layers.0.self_attn.q_proj",)


def random_layers(components: dict[str, torch.nn.Module], rank: int = 2, seed: int = 0,
                  text: bool = True) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{(component, module): (down, up)} of a random LoRA for the tiny UNet (and text
    encoder), sized from the modules' weights; conv layers get conv kernels."""
    generator = torch.Generator().manual_seed(seed)
    targets = [("unet", name) for name in TINY_UNET_TARGETS]
    if text:
        targets += [("text_encoder", name) for name in TINY_TEXT_TARGETS]
    layers = {}
    for component, name in targets:
        weight = find_module(components[component], name).weight
        down_shape = (rank, *weight.shape[1:])
        up_shape = (weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else []))
        layers[(component, name)] = (torch.randn(down_shape, generator=generator) * 0.3,
                                     torch.randn(up_shape, generator=generator) * 0.3)
    return layers


def write_kohya(path: Path, layers: dict, alpha: float) -> Path:
    """The same layers in kohya naming: lora_unet_<path with _>.lora_down.weight, .alpha;
    lora_te1_ / lora_te2_ for SDXL's two text encoders, lora_te_ for one."""
    two_encoders = any(component == "text_encoder_2" for component, _ in layers)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if two_encoders else "lora_te_",
                "text_encoder_2": "lora_te2_"}
    tensors = {}
    for (component, module), (down, up) in layers.items():
        name = prefixes[component] + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def write_peft(path: Path, layers: dict, alpha: float) -> Path:
    return write_lora_file(path, layers, alpha)


def merged_by_hand(components: dict[str, torch.nn.Module], loras: list[tuple[dict, float, float]]
                   ) -> dict[tuple[str, str], torch.Tensor]:
    """{(component, module): W + sum weight * alpha / rank * up @ down} for (layers, alpha,
    weight) LoRAs, computed directly from the tensors."""
    merged = {}
    for layers, alpha, weight in loras:
        for (component, module), (down, up) in layers.items():
            key = (component, module)
            base = merged.get(key, find_module(components[component], module).weight.detach()
                              .clone().float())
            rank = down.shape[0]
            product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
            merged[key] = base + weight * alpha / rank * product.reshape(base.shape)
    return merged


def write_tiny_decoder(folder: Path, seed: int) -> Path:
    """A random AutoencoderTiny folder shaped like the tiny pipelines' (a stand-in for TAESD)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                    num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
                    scaling_factor=1.0).save_pretrained(folder)
    return folder
