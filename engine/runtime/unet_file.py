"""UNet-only releases over a base model, and the student timesteps they were distilled for.

DMD2 (Yin et al. 2024) ships its SDXL students as a UNet state dict that replaces the base
model's UNet: the one-step student runs once at timestep 399 from pure noise, the four-step
one at 999, 749, 499, 249. Such a file (diffusers keys, or original model.diffusion_model.*
keys) or a diffusers unet/ folder is loaded into the base's UNet architecture; its timesteps
come from a student.json beside it or from ModelOptions.student_timesteps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.sd_configs import UNET_PREFIX, infer_unet_config, sub_state
from engine.runtime.single_file import load_into, read_state_dict
from engine.untrusted import read_json_file

UNET_FILE_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
ORIGINAL_UNET_KEYS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")
STUDENT_FILE = "student.json"
MAX_STUDENT_STEPS = 16


def check_student_timesteps(timesteps, num_train_timesteps: int, source: str) -> list[int]:
    """Validated student timesteps: 1-16 integers in [0, num_train_timesteps)."""
    if (not isinstance(timesteps, list | tuple) or not 0 < len(timesteps) <= MAX_STUDENT_STEPS
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in timesteps)
            or not all(0 <= t < num_train_timesteps for t in timesteps)):
        raise ModelLoadError(f"The student timesteps in {source} must be 1 to "
                             f"{MAX_STUDENT_STEPS} whole numbers from 0 to "
                             f"{num_train_timesteps - 1}, such as 399 or 999,749,499,249.")
    return [int(t) for t in timesteps]


def student_json_beside(path: Path) -> dict:
    """The student.json next to a UNet file (or inside a UNet folder, or beside it), {} when
    there is none."""
    candidates = [path / STUDENT_FILE] if path.is_dir() else []
    candidates.append(path.parent / STUDENT_FILE)
    for candidate in candidates:
        if candidate.is_file():
            try:
                values = read_json_file(candidate)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"Could not read {candidate}: {error}") from error
            if not isinstance(values, dict):
                raise ModelLoadError(f"{candidate} is not a JSON object.")
            return values
    return {}


def unet_state_for(path: Path, base_unet, pooled_width: int | None) -> tuple[dict, dict]:
    """(diffusers-layout state dict, UNet config) of a UNet-only file over base_unet."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = read_state_dict(path)
    config = {key: value for key, value in dict(base_unet.config).items()
              if not key.startswith("_")}
    if not any(key.startswith(UNET_PREFIX) for key in state) and \
            any(key.startswith(ORIGINAL_UNET_KEYS) for key in state):
        state = {UNET_PREFIX + key: value for key, value in state.items()}
    if any(key.startswith(UNET_PREFIX) for key in state):  # the original layout
        config = infer_unet_config(sub_state(state, UNET_PREFIX), config, None, pooled_width)
        return convert_ldm_unet_checkpoint(state, config), config
    return {key.removeprefix("unet."): value for key, value in state.items()}, config


def load_unet_file(unet: str | Path, base_unet, pooled_width: int | None, dtype: torch.dtype):
    """The UNet of a UNet-only file or unet/ folder, in the base model's architecture."""
    from diffusers import UNet2DConditionModel

    path = Path(str(unet)).expanduser()
    if path.is_dir():
        from engine.runtime.loading import load_component

        folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
        return load_component(UNet2DConditionModel, folder, dtype)
    if path.suffix.lower() not in UNET_FILE_SUFFIXES or not path.is_file():
        raise ModelLoadError(f"The UNet {path} is not a .safetensors, .bin or .ckpt file or a "
                             "unet/ folder.")
    state, config = unet_state_for(path, base_unet, pooled_width)
    try:
        return load_into(UNet2DConditionModel, config, state, "UNet", dtype)
    except ModelLoadError as error:
        raise ModelLoadError(f"The UNet in {path.name} does not fit the base model's UNet; it was "
                             "made for another architecture.") from error


def apply_unet_options(parts, model: str, options, dtype: torch.dtype, device) -> None:
    """Replace parts' UNet with options.unet (checked against the text encoder and the
    autoencoder) and set the student timesteps: options', else the student.json beside the
    UNet; a replaced UNet names the base model as its teacher."""
    from engine.runtime.loading import check_fit

    config = dict(parts.student_config)
    if options.unet:
        pooled_width = getattr(parts.text_encoder, "pooled_size", None)
        unet = load_unet_file(options.unet, parts.unet, pooled_width, dtype)
        check_fit(unet, parts.vae, parts.text_encoder, Path(str(options.unet)))
        parts.unet = unet.to(device).eval().requires_grad_(False)
        config = {"teacher": str(model), **student_json_beside(Path(str(options.unet))
                                                               .expanduser())}
    if options.student_timesteps:
        config["timesteps"] = list(options.student_timesteps)
    if "timesteps" in config:
        config["timesteps"] = check_student_timesteps(
            config["timesteps"], parts.schedule.num_train_timesteps,
            "the student options" if options.student_timesteps
            else f"the student.json beside {options.unet}" if options.unet else "student.json")
    parts.student_config = config
