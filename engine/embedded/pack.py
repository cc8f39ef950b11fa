"""Latent pack: a dataset pre-encoded for one autoencoder, small enough to carry to a GPU box.

A pack folder holds the scaled AE latents of every image and sketch (fp16), the split flags,
the captions, and a copy of MiniLM whose word-embedding table keeps only the wordpieces the
captions' phrasings (engine/embedded/phrases.py, rebuilt from the phrase table on load and
checked against the digest in the manifest) and the evaluation prompts use
(text_encoder/ + tokenizer/, fp16). Half of MiniLM's weights are that table, so
the pack is about 40 MB for the emoji set instead of the 194 MB of images plus the 90 MB
text-encoder package, and a machine without either can train the teacher and distill from it.
Pruning keeps tokenisation exact: WordPiece picks the longest matching piece, every piece a
text used is kept, and no kept piece is longer than one that was dropped for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.api import EngineError
from engine.embedded.atomic import atomic_save_folder
from engine.embedded.latents import (
    TEXT_MAX_LENGTH,
    LatentCache,
    caption_phrasings,
    encode_captions,
    encode_phrasings,
)
from engine.embedded.phrases import excluded_prompts

PACK_KIND = "dmd-studio-latent-pack"
PACK_VERSION = 3  # 2: probe images for the encoder check; 3: phrasings, eval prompts' words
PROBE_IMAGES = 2  # images kept in the pack to check an autoencoder's encoder against
PROBE_TOLERANCE = 0.05  # max |latent difference| (unit-variance latents, fp16 storage)
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def is_pack(folder: Path | str | None) -> bool:
    """Whether folder is a latent pack (its manifest says so)."""
    if folder is None:
        return False
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("kind") == PACK_KIND
    except (OSError, ValueError):
        return False


def used_token_ids(text_encoder, texts: list[str]) -> list[int]:
    """Sorted ids of every token the texts tokenise to, plus the tokenizer's special tokens."""
    tokens = text_encoder.tokenize(texts)["input_ids"]
    ids = set(tokens.flatten().tolist()) | set(text_encoder.tokenizer.all_special_ids)
    return sorted(ids)


def write_pruned_text_encoder(text_encoder, texts: list[str], folder: Path) -> int:
    """Save text_encoder/ and tokenizer/ (a BERT-family model) keeping only the vocabulary the
    texts use; returns the new vocabulary size."""
    tokenizer, model = text_encoder.tokenizer, text_encoder.model
    if not hasattr(model, "embeddings") or not hasattr(tokenizer, "vocab"):
        raise EngineError("Only a BERT-family (WordPiece) text encoder can be pruned into a pack.")
    kept_ids = used_token_ids(text_encoder, texts)
    pruned = copy.deepcopy(model).to("cpu", torch.float32)
    table = pruned.get_input_embeddings().weight.detach()[torch.tensor(kept_ids)].clone()
    pad_id = kept_ids.index(tokenizer.pad_token_id)
    pruned.set_input_embeddings(torch.nn.Embedding.from_pretrained(table, freeze=False,
                                                                   padding_idx=pad_id))
    pruned.config.vocab_size = len(kept_ids)
    pruned.config.pad_token_id = pad_id
    pruned.half().save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(parents=True)
    pieces = tokenizer.convert_ids_to_tokens(kept_ids)
    (tokenizer_dir / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    source = Path(tokenizer.name_or_path)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, tokenizer_dir / name)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": type(tokenizer).__name__.removesuffix("Fast"),
             "do_lower_case": bool(getattr(tokenizer, "do_lower_case", True))}))
    check_pruned_tokenizer(text_encoder, texts, tokenizer_dir, kept_ids)
    return len(kept_ids)


def check_pruned_tokenizer(text_encoder, texts: list[str], tokenizer_dir: Path,
                           kept_ids: list[int]) -> None:
    """An error unless the pruned tokenizer gives every text the full one's ids (remapped):
    a word that is [UNK] in full may split into kept pieces once longer ones are gone."""
    from transformers import AutoTokenizer

    pruned = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    remap = torch.tensor(kept_ids)
    full = text_encoder.tokenize(texts)["input_ids"]
    ids = pruned(texts, padding="max_length", max_length=full.shape[1], truncation=True,
                 return_tensors="pt")["input_ids"]
    if ids.shape != full.shape or not torch.equal(remap[ids], full):
        raise EngineError("The pruned vocabulary tokenises some captions differently from "
                          "the full one; this dataset cannot be packed.")


def write_pack(cache: LatentCache, text_encoder, folder: Path, meta: dict,
               probe_images: torch.Tensor) -> dict:
    """Write cache (latents, flags, captions), a pruned text encoder and the first images
    (uint8 NHWC, whose latents check a --vae later) as a pack folder."""
    tensors = {"latents": cache.latents.half().contiguous(),
               "sketch_latents": cache.sketch_latents.half().contiguous(),
               "heldout": cache.heldout.contiguous(), "variant": cache.variant.contiguous(),
               "probe_images": probe_images[:PROBE_IMAGES].contiguous()}
    manifest = {"kind": PACK_KIND, "version": PACK_VERSION, "count": len(cache),
                "text_max_length": text_encoder.max_length, **meta}

    phrases = caption_phrasings(list(cache.captions))
    manifest["phrases_sha256"] = phrases_digest(phrases)

    def write(temp: Path) -> None:
        save_file(tensors, str(temp / "latents.safetensors"))
        # the evaluation prompts' wordpieces too, so that eval tokenises them as MiniLM does
        texts = [text for texts in phrases for text in texts] + sorted(excluded_prompts())
        manifest["vocab_size"] = write_pruned_text_encoder(text_encoder, texts + [""], temp)
        (temp / "captions.json").write_text(json.dumps(cache.captions, ensure_ascii=False))
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    atomic_save_folder(Path(folder), write)
    return manifest


def phrases_digest(phrases: list[list[str]]) -> str:
    """sha256 of the phrasings, so that a pack notices a phrase table changed since."""
    return hashlib.sha256(json.dumps(phrases, ensure_ascii=False).encode()).hexdigest()


def pack_manifest(folder: Path) -> dict:
    if not is_pack(folder):
        raise EngineError(f"{folder} is not a latent pack (no manifest.json of kind "
                          f"{PACK_KIND!r}); make one with `python -m engine data pack`.")
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    if manifest.get("version") != PACK_VERSION:
        raise EngineError(f"The latent pack {folder} was made by another version of `data "
                          "pack`; make it again.")
    return manifest


def pack_tensor(folder: Path, name: str) -> torch.Tensor:
    """One tensor of the pack, read alone (the file holds all latents)."""
    with safe_open(str(Path(folder) / "latents.safetensors"), framework="pt") as tensors:
        return tensors.get_tensor(name)


def check_pack_vae(folder: Path, vae_dir: Path) -> None:
    """An error unless vae_dir's encoder gives the pack's latents (its probe images encoded
    again match): any copy or precision of the same encoder passes, whatever its decoder."""
    from engine.embedded.autoencoder import encode_images, load_autoencoder

    pack_manifest(folder)
    probes = pack_tensor(folder, "probe_images")
    ae = load_autoencoder(vae_dir)
    latents = encode_images(ae, probes) * float(ae.config.scaling_factor)
    with safe_open(str(Path(folder) / "latents.safetensors"), framework="pt") as tensors:
        stored = tensors.get_slice("latents")[:len(probes)].float()  # the probes' rows only
    if latents.shape != stored.shape or (latents - stored).abs().max() > PROBE_TOLERANCE:
        raise EngineError(f"The latent pack {folder} was encoded with another autoencoder than "
                          f"{vae_dir}; pass the --vae it was made with or remake the pack.")


def load_pack_text_encoder(folder: Path, device: str = "cpu"):
    from engine.runtime.text import load_text_encoder

    manifest = pack_manifest(folder)
    return load_text_encoder(Path(folder), None, manifest.get("text_max_length", TEXT_MAX_LENGTH),
                             device, torch.float32)


def pack_captions(folder: Path, split: str = "train") -> list[str]:
    """The captions of one split ("train", "heldout" or "all"), in pack order."""
    captions = json.loads((Path(folder) / "captions.json").read_text(encoding="utf-8"))
    if split == "all":
        return captions
    heldout = pack_tensor(folder, "heldout").tolist()
    chosen = [c for c, held in zip(captions, heldout, strict=True) if held == (split == "heldout")]
    if not chosen:
        raise EngineError(f"The latent pack {folder} has no {split} images.")
    return chosen


def load_pack_latents(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(latents, sketch latents, captions) of the training split, float32, for distillation."""
    pack_manifest(folder)
    tensors = load_file(str(Path(folder) / "latents.safetensors"))
    train = ~tensors["heldout"].bool()
    captions = pack_captions(folder)
    return tensors["latents"][train].float(), tensors["sketch_latents"][train].float(), captions


def load_pack(folder: Path, device: str = "cpu") -> LatentCache:
    """The pack as a LatentCache; its captions' phrasings come from the phrase table (as when
    the pack was made: checked by digest) and are encoded with its pruned text encoder."""
    folder = Path(folder)
    manifest = pack_manifest(folder)
    tensors = load_file(str(folder / "latents.safetensors"))
    captions = pack_captions(folder, "all")
    phrases = caption_phrasings(captions)
    if phrases_digest(phrases) != manifest.get("phrases_sha256"):
        raise EngineError(f"The phrase table changed since the latent pack {folder} was made; "
                          "make the pack again (python -m engine data pack).")
    text_encoder = load_pack_text_encoder(folder, device)
    states, pooled, starts, counts = encode_phrasings(text_encoder, phrases)
    null_states, null_pooled = encode_captions(text_encoder, [""])
    return LatentCache(tensors["latents"].float(), tensors["sketch_latents"].float(),
                       states, pooled, null_states[0], null_pooled[0],
                       tensors["heldout"].bool(), tensors["variant"].bool(), captions,
                       starts, counts)
