"""Outputs of a teacher run: the model folder (docs/model-format.md) and sample grids."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.embedded.atomic import atomic_save_folder
from engine.embedded.autoencoder import load_autoencoder, to_uint8
from engine.embedded.latents import TEXT_MAX_LENGTH, TEXT_PACKAGE
from engine.embedded.teacher import SCHEDULER_CONFIG
from engine.runtime.loading import PROMPTS_FILE


def model_index(image_size: int = 128, own_text_encoder: bool = False) -> dict:
    """The folder's model_index.json: MiniLM from its pip package, or the folder's own
    text_encoder/ and tokenizer/ (a latent pack's pruned copy)."""
    text = ({"text_encoder": ["transformers", "BertModel"],
             "tokenizer": ["transformers", "BertTokenizer"]} if own_text_encoder
            else {"text_encoder_package": TEXT_PACKAGE})
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        **text,
        "text_max_length": TEXT_MAX_LENGTH,
        "image_size": image_size,
    }


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def export_model_folder(unet, vae_dir: Path, out: Path, training: dict | None = None,
                        text_source: Path | None = None, prompts: list[str] | None = None
                        ) -> Path:
    """Save unet (e.g. the EMA copy) and the AE as fp16 safetensors in a model folder; with
    text_source (a latent pack) its text_encoder/ and tokenizer/ are copied in as well;
    prompts (the training captions) become its prompts.txt, the app's suggestions."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    vae = load_autoencoder(vae_dir)
    image_size = int(unet.config.sample_size) * 8

    def write(temp: Path) -> None:
        half_unet = _half_copy(unet)
        half_unet.save_pretrained(str(temp / "unet"), safe_serialization=True)
        vae.to(torch.float16).save_pretrained(str(temp / "vae"), safe_serialization=True)
        (temp / "scheduler").mkdir()
        (temp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
        if text_source is not None:
            for name in ("text_encoder", "tokenizer"):
                shutil.copytree(Path(text_source) / name, temp / name)
        index = model_index(image_size, own_text_encoder=text_source is not None)
        (temp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if prompts:
            (temp / PROMPTS_FILE).write_text("\n".join(sorted(set(prompts))) + "\n", "utf-8")
        if training:
            text = json.dumps(training, indent=1, sort_keys=True)
            (temp / "training.json").write_text(text + "\n")

    atomic_save_folder(Path(out), write)
    return Path(out)


def _half_copy(module: torch.nn.Module):
    return copy.deepcopy(module).to("cpu", torch.float16)


GRID_CAPTIONS = 8


def grid_ids(heldout: torch.Tensor, count: int = GRID_CAPTIONS) -> torch.Tensor:
    """The first `count` held-out entries, spread evenly over the held-out set."""
    ids = torch.nonzero(heldout).flatten()
    if len(ids) <= count:
        return ids
    return ids[torch.linspace(0, len(ids) - 1, count).round().long()]


@torch.no_grad()
def decode_latents(vae_dir: Path, latents: torch.Tensor) -> np.ndarray:
    ae = load_autoencoder(vae_dir)
    return to_uint8(ae.decode(latents.float().cpu() / ae.config.scaling_factor).sample)


def write_sample_grid(trainer, vae_dir: Path, folder: Path, steps: int = 20,
                      guidance: float = 4.0) -> Path:
    """Rows: real image, text-only sample, text+sketch sample; one column per caption."""
    from engine.embedded.teacher import sample_latents

    cache = trainer.cache
    ids = grid_ids(cache.heldout)
    unet = trainer.ema
    rows = [decode_latents(vae_dir, cache.latents[ids])]
    for use_sketch in (False, True):
        latents = sample_latents(unet, trainer.schedule, cache, ids, steps, guidance, use_sketch)
        rows.append(decode_latents(vae_dir, latents))
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{trainer.step}.png"
    temp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).save(temp)
    temp.replace(path)
    (folder / "captions.txt").write_text("\n".join(cache.captions[i] for i in ids.tolist()) + "\n")
    return path
