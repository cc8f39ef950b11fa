"""Test helper: write a diffusers folder as a single-file checkpoint in the original
(CompVis / Stability) key layout, the inverse of the conversion the engine loads with."""

from __future__ import annotations

import json
from pathlib import Path

import torch

RESNET_NAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"),
                ("time_emb_proj", "emb_layers.1"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
VAE_ATTENTION_NAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                       ("to_out.0", "proj_out"))
OPEN_CLIP_LAYER_NAMES = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                         ("mlp.fc2", "mlp.c_proj"))


def renamed(name: str, pairs) -> str:
    for new, old in pairs:
        name = name.replace(new, old)
    return name


def unet_to_original(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> model.diffusion_model.* keys."""
    per_level = config["layers_per_block"] + 1  # resnets + the downsampler's slot
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0",
             "class_embedding.linear_2": "label_emb.0.2"}
    original = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        parts = key.split(".")
        if module in fixed:
            name = f"{fixed[module]}.{leaf}"
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "downsamplers":
                name = f"input_blocks.{(block + 1) * per_level}.0.op.{rest[-1]}"
            else:
                slot = 1 + block * per_level + index
                sub = "0" if kind == "resnets" else "1"
                name = f"input_blocks.{slot}.{sub}." + ".".join(rest)
                name = renamed(name, RESNET_NAMES) if kind == "resnets" else name
        elif parts[0] == "mid_block":
            slot = {"resnets": 2 * int(parts[2]), "attentions": 1}[parts[1]]
            name = f"middle_block.{slot}." + ".".join(parts[3:])
            name = renamed(name, RESNET_NAMES) if parts[1] == "resnets" else name
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            if kind == "upsamplers":
                attends = config["up_block_types"][block].startswith("CrossAttn")
                name = (f"output_blocks.{block * per_level + per_level - 1}."
                        f"{2 if attends else 1}.conv.{rest[-1]}")
            else:
                sub = "0" if kind == "resnets" else "1"
                name = f"output_blocks.{block * per_level + index}.{sub}." + ".".join(rest)
                name = renamed(name, RESNET_NAMES) if kind == "resnets" else name
        else:
            raise KeyError(key)
        original["model.diffusion_model." + name] = value
    return original


def vae_to_original(state: dict, config: dict) -> dict:
    """diffusers AutoencoderKL keys -> first_stage_model.* keys."""
    levels = len(config["block_out_channels"])
    original = {}
    for key, value in state.items():
        name = key.replace("conv_norm_out", "norm_out")
        parts = name.split(".")
        if parts[1] == "down_blocks":
            if parts[3] == "downsamplers":
                name = f"encoder.down.{parts[2]}.downsample.{'.'.join(parts[5:])}"
            else:
                name = f"encoder.down.{parts[2]}.block.{parts[4]}.{'.'.join(parts[5:])}"
        elif parts[1] == "up_blocks":
            level = levels - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                name = f"decoder.up.{level}.upsample.{'.'.join(parts[5:])}"
            else:
                name = f"decoder.up.{level}.block.{parts[4]}.{'.'.join(parts[5:])}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            name = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
        elif parts[1] == "mid_block":
            name = renamed(f"{parts[0]}.mid.attn_1.{'.'.join(parts[4:])}", VAE_ATTENTION_NAMES)
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        original["first_stage_model." + name.replace("conv_shortcut", "nin_shortcut")] = value
    return original


def clip_to_original(state: dict, prefix: str) -> dict:
    """A transformers CLIPTextModel's keys under prefix + "text_model." (HF layout)."""
    return {prefix + "text_model." + key.removeprefix("text_model."): value
            for key, value in state.items() if not key.endswith("position_ids")}


def open_clip_to_original(state: dict, prefix: str, extra_layer: bool) -> dict:
    """A transformers CLIP text model's keys in OpenCLIP's layout under prefix; extra_layer
    adds the last layer SD 2.x's original model has (the UNet reads the one before it)."""
    state = {key.removeprefix("text_model."): value for key, value in state.items()
             if not key.endswith("position_ids")}
    width = state["embeddings.token_embedding.weight"].shape[1]
    original = {prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
                prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
                prefix + "ln_final.weight": state["final_layer_norm.weight"],
                prefix + "ln_final.bias": state["final_layer_norm.bias"]}
    projection = state.get("text_projection.weight")
    original[prefix + "text_projection"] = (projection.T.contiguous() if projection is not None
                                            else torch.randn(width, width))
    depth = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("encoder.layers."))
    layers = [{key.split(".", 3)[3]: value for key, value in state.items()
               if key.startswith(f"encoder.layers.{index}.")} for index in range(depth)]
    if extra_layer:
        layers.append({key: torch.randn_like(value) for key, value in layers[-1].items()})
    for index, layer in enumerate(layers):
        base = f"{prefix}transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            original[base + f"attn.in_proj_{kind}"] = torch.cat(
                [layer[f"self_attn.{name}_proj.{kind}"] for name in ("q", "k", "v")])
        for key, value in layer.items():
            if not key.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                original[base + renamed(key, OPEN_CLIP_LAYER_NAMES)] = value
    return original


def component_state(folder: Path, part: str) -> tuple[dict, dict]:
    """(state dict, config) of a diffusers / transformers component folder."""
    from safetensors.torch import load_file

    weights = next(path for path in folder.joinpath(part).glob("*.safetensors"))
    return load_file(str(weights)), json.loads((folder / part / "config.json").read_text())


def folder_to_original(folder: Path, family: str) -> dict:
    """Every tensor of a tiny pipeline folder of family sd1 / sd2 / sdxl in the original
    single-file layout."""
    unet, unet_config = component_state(folder, "unet")
    vae, vae_config = component_state(folder, "vae")
    text, _ = component_state(folder, "text_encoder")
    original = {**unet_to_original(unet, unet_config), **vae_to_original(vae, vae_config)}
    if family == "sd1":
        original.update(clip_to_original(text, "cond_stage_model.transformer."))
    elif family == "sd2":
        original.update(open_clip_to_original(text, "cond_stage_model.model.", True))
    else:
        text_2, _ = component_state(folder, "text_encoder_2")
        original.update(clip_to_original(text, "conditioner.embedders.0.transformer."))
        original.update(open_clip_to_original(text_2, "conditioner.embedders.1.model.", False))
    return original


def write_single_file(folder: Path, family: str, path: Path) -> Path:
    """folder_to_original written as a .safetensors file."""
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in
               folder_to_original(folder, family).items()}, str(path))
    return path


def controlnet_to_original(state: dict, config: dict, prefix: str = "control_model.") -> dict:
    """diffusers ControlNetModel keys -> the original ControlNet release layout under prefix:
    the UNet-shaped encoder as a UNet's input and middle blocks, the control image embedding
    as input_hint_block.N (convolutions at even N), the zero convolutions as zero_convs.N.0
    and middle_block_out.0."""
    hint_blocks = 1 + max((int(key.split(".")[2]) for key in state
                           if key.startswith("controlnet_cond_embedding.blocks.")), default=-1)
    encoder, original = {}, {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "controlnet_cond_embedding":
            layer = {"conv_in": 0, "conv_out": 2 * hint_blocks + 2}.get(parts[1])
            layer = 2 * int(parts[2]) + 2 if layer is None else layer
            original[f"input_hint_block.{layer}.{parts[-1]}"] = value
        elif parts[0] == "controlnet_down_blocks":
            original[f"zero_convs.{parts[1]}.0.{parts[2]}"] = value
        elif parts[0] == "controlnet_mid_block":
            original[f"middle_block_out.0.{parts[1]}"] = value
        else:
            encoder[key] = value
    unet_keys = unet_to_original(encoder, config)
    original.update({key.removeprefix("model.diffusion_model."): value
                     for key, value in unet_keys.items()})
    return {prefix + key: value for key, value in original.items()}


def write_controlnet_file(folder: Path, path: Path, prefix: str = "control_model.") -> Path:
    """A diffusers ControlNet folder written as one original-layout file: .safetensors, or
    a torch pickle (.pth) of a plain state dict."""
    from safetensors.torch import load_file, save_file

    config = json.loads((folder / "config.json").read_text())
    weights = next(folder.glob("*.safetensors"))
    original = {key: value.contiguous() for key, value in
                controlnet_to_original(load_file(str(weights)), config, prefix).items()}
    if path.suffix == ".safetensors":
        save_file(original, str(path))
    else:
        torch.save(original, path)
    return path
