"""Single-file checkpoints (.safetensors, or .ckpt read with safe unpickling): SD 1.x, SD 2.x
and SDXL in the original key layout, converted with diffusers' public single-file helpers
into models built from the shipped family configs (engine/runtime/sd_configs.py), offline."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import torch

from engine.api import ModelLoadError, os_error_message
from engine.diffusion.schedule import NoiseSchedule
from engine.runtime.clip_vocab import clip_tokenizer
from engine.runtime.sd_configs import (
    FAMILY_TITLES,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_family,
    family_config,
    infer_clip_config,
    infer_unet_config,
    infer_vae_config,
    sub_state,
)
from engine.runtime.text import quiet_transformers

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # .bin: torch's state dicts (UNet files)
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")  # whole models


def is_checkpoint_file(model: str | Path) -> bool:
    """Whether model names an existing file with a checkpoint suffix."""
    path = Path(str(model)).expanduser()
    return path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a .ckpt/.pt/.pth/.bin read by torch.load with
    weights_only=True (a file that needs pickled code is refused, never run)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Could not open {path}: it does not exist.")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except OSError as error:
            raise ModelLoadError(os_error_message(error, path)) from error
        except Exception as error:  # safetensors reports damage with its own error type
            raise ModelLoadError(f"{path} is not a complete safetensors file (truncated or "
                                 "damaged).") from error
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        state = read_pickled_checkpoint(path)
    else:
        raise ModelLoadError(f"{path} is not a checkpoint file; use .safetensors or .ckpt.")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} holds no tensors.")
    return tensors


def read_pickled_checkpoint(path: Path) -> dict:
    """A .ckpt's state dict (its "state_dict" entry when it wraps one) via safe unpickling."""
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(f"{path} contains pickled code, which the engine refuses to run; "
                             "use a .safetensors version of this model.") from error
    except OSError as error:
        raise ModelLoadError(os_error_message(error, path)) from error
    except Exception as error:  # truncated zip archives and bad pickles raise many types
        raise ModelLoadError(f"{path} is not a complete checkpoint (truncated or "
                             "damaged).") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} holds no state dict.")
    return loaded


def load_into(model_class, config: dict, state: dict, what: str, dtype: torch.dtype):
    """A diffusers model of config with exactly state's tensors (built on the meta device,
    so no random initialisation is spent on weights that are replaced)."""
    with torch.device("meta"):
        model = model_class(**config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # tensors of other shapes
        raise ModelLoadError(f"The {what} in this checkpoint does not fit its layout (tensors "
                             "of other shapes).") from error
    if missing or unexpected:
        raise ModelLoadError(f"The {what} in this checkpoint does not fit its layout "
                             f"({len(missing)} tensors missing, {len(unexpected)} unexpected).")
    return model.to(dtype)


def load_clip(text_state: dict, config: dict, with_projection: bool, dtype: torch.dtype):
    """A transformers CLIP text model (with projection: SDXL's second) from HF-layout keys."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    quiet_transformers()
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    clip_config = CLIPTextConfig(**config)
    with torch.device("meta"):
        wrapped = hasattr(model_class(clip_config), "text_model")  # transformers >= 5.6 flattens
    text_state = {key.removeprefix("text_model."): value for key, value in text_state.items()}
    text_state.pop("embeddings.position_ids", None)
    if wrapped:
        text_state = {key if key == "text_projection.weight" else f"text_model.{key}": value
                      for key, value in text_state.items()}
    model, info = model_class.from_pretrained(None, config=clip_config, state_dict=text_state,
                                              dtype=dtype, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if not key.endswith("position_ids")]
    if missing or info["unexpected_keys"]:
        raise ModelLoadError(f"The text encoder in this checkpoint does not fit its layout "
                             f"({len(missing)} tensors missing, "
                             f"{len(info['unexpected_keys'])} unexpected).")
    return model


def build_text_encoder(state: dict, spec: dict, device, dtype: torch.dtype):
    """(CLIP text model, its tokenizer) for one entry of a family config's text_encoders."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )

    prefix, open_clip = spec["prefix"], spec["kind"] == "open_clip"
    penultimate = bool(spec.get("penultimate"))
    config = infer_clip_config(sub_state(state, prefix), spec["config"], open_clip, penultimate)
    if open_clip:
        sizes = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
        text_state = convert_open_clip_checkpoint(sizes, state, prefix=prefix)
    else:
        text_state = convert_ldm_clip_checkpoint(state, prefix)
    if penultimate:  # SD 2.x reads the penultimate layer: the last one is not part of it
        depth = config["num_hidden_layers"]
        text_state = {key: value for key, value in text_state.items()
                      if not key.startswith(f"text_model.encoder.layers.{depth}.")}
        text_state.pop("text_projection.weight", None)
    model = load_clip(text_state, config, bool(spec.get("with_projection")), dtype)
    return model.to(device), clip_tokenizer(spec["kind"])


def load_single_file(path: str | Path, device, dtype: torch.dtype, size: int | None = None):
    """PipelineParts of a single-file SD 1.x / 2.x / SDXL checkpoint; size overrides the
    family's native image size."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    from engine.runtime.loading import assemble_parts
    from engine.runtime.sdxl import DualTextEncoder
    from engine.runtime.text import TextEncoder

    path = Path(str(path)).expanduser()
    state = read_state_dict(path)
    family = detect_family(state)
    config = family_config(family)
    encoders = [build_text_encoder(state, spec, device, dtype)
                for spec in config["text_encoders"]]
    if family == "sdxl":
        tokenizers, models = zip(*((tok, model) for model, tok in encoders), strict=True)
        text_encoder = DualTextEncoder(tokenizers, models,
                                       bool(config.get("force_zeros_for_empty_prompt")))
        pooled_width = text_encoder.pooled_size
    else:
        model, tokenizer = encoders[0]
        text_encoder, pooled_width = TextEncoder(tokenizer, model), None
    unet_config = infer_unet_config(sub_state(state, UNET_PREFIX), config["unet"],
                                    config.get("attention_head_width"), pooled_width)
    image_size = int(size or config["image_size"])
    unet_config["sample_size"] = image_size // 8
    unet = load_into(UNet2DConditionModel, unet_config,
                     convert_ldm_unet_checkpoint(state, unet_config), "UNet", dtype)
    vae_config = infer_vae_config(sub_state(state, VAE_PREFIX), config["vae"])
    vae = load_into(AutoencoderKL, vae_config, convert_ldm_vae_checkpoint(state, vae_config),
                    "autoencoder", dtype)
    del state
    parts = assemble_parts(path, text_encoder, unet, vae,
                           NoiseSchedule.from_config(config["scheduler"]),
                           image_size=image_size, device=device, student_config={})
    parts.family = FAMILY_TITLES[family]
    return parts
