"""A fast decoder for live frames: a tiny autoencoder folder (AutoencoderTiny, as TAESD and
TAESDXL ship) that replaces the model's full VAE when decoding.

TAESD (madebyollin/taesd) decodes the SD-scaled latents as they are (its scaling_factor is
1.0), which is the space the backends pass latents in; so a frame's latents go to it
divided by its own scaling factor, exactly as to the model's VAE by theirs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.loading import load_autoencoder


def decoder_folder(folder: str | Path) -> Path:
    """The folder holding the decoder's config.json: the folder itself or its vae/."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"The decoder folder {path} does not exist.")
    for candidate in (path, path / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelLoadError(f"{path} has no config.json; a decoder is an AutoencoderTiny folder "
                         "such as TAESD's (config.json + weights).")


def load_fast_decoder(folder: str | Path, latent_channels: int, device: str,
                      dtype: torch.dtype) -> tuple[torch.nn.Module, float]:
    """(autoencoder, its scaling factor) from a decoder folder, checked against the model's
    latent channels."""
    vae = load_autoencoder(decoder_folder(folder), dtype)
    channels = int(vae.config.latent_channels)
    if channels != latent_channels:
        raise ModelLoadError(f"The decoder in {folder} takes {channels}-channel latents but the "
                             f"model makes {latent_channels}-channel ones; use the decoder made "
                             "for this model family (TAESD for SD 1.x/2.x, TAESDXL for SDXL).")
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    return vae.to(device).eval().requires_grad_(False), scale
