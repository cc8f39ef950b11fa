"""`python -m engine data emoji|pack|phrases|vocabulary`: build the embedded dataset, its pack,
its phrases, and a model folder's vocabulary."""

from __future__ import annotations

from pathlib import Path

from engine.api import EngineError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="Build a training dataset (emoji: Noto Color Emoji glyphs, captions, sketches; "
             "pack: an emoji dataset pre-encoded into a small latent pack for a GPU machine).")
    parser.add_argument("source", choices=["emoji", "pack", "phrases", "vocabulary"],
                        help="emoji: render the dataset; pack: encode --data with --vae into a "
                             "latent pack (AE latents + a MiniLM pruned to the captions' "
                             "vocabulary, about 40 MB) that train-teacher --data and distill "
                             "--real-data accept where the images and the text-encoder package "
                             "are not installed; phrases: derive the names and keywords table "
                             "(--out FILE.json) from the CLDR annotations and emojibase npm "
                             "packages (--cldr, --emojibase: their extracted package folders); "
                             "vocabulary: write --out MODEL_DIR/vocabulary.safetensors, the "
                             "--data captions and their emoji's names and keywords as the "
                             "model's own sentence vectors, so that prompts in other words are "
                             "drawn as the nearest of them")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (replaced atomically)")
    parser.add_argument("--data", type=Path, default=Path("data/emoji"),
                        help="pack: the emoji dataset folder to encode (default data/emoji)")
    parser.add_argument("--vae", type=Path, default=Path("assets/models/teacher/vae"),
                        help="pack: the autoencoder that encodes it (default: the embedded one)")
    parser.add_argument("--font", type=Path, default=None,
                        help="color emoji font (default: the Debian fonts-noto-color-emoji file)")
    parser.add_argument("--cldr", type=Path, help="phrases: extracted cldr-annotations-full")
    parser.add_argument("--emojibase", type=Path, help="phrases: extracted emojibase-data")
    parser.add_argument("--limit", type=int, default=None, help="only the first N emoji (tests)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.source == "pack":
        return run_pack(args)
    if args.source == "phrases":
        return run_phrases(args)
    if args.source == "vocabulary":
        return run_vocabulary(args)
    from tqdm import tqdm

    from engine.embedded.dataset import build_dataset

    if args.out.exists() and not (args.out / "manifest.json").is_file():
        raise EngineError(f"{args.out} exists and is not a dataset folder; pick another --out.")
    manifest = build_dataset(args.out, args.font, args.limit,
                             progress=lambda items: tqdm(items, desc="emoji", unit="img"))
    print(f"wrote {manifest['count']} images ({manifest['train']} train, {manifest['heldout']} "
          f"held out, {manifest['skipped_empty']} empty glyphs skipped) to {args.out}")
    return 0


def run_pack(args) -> int:
    import torch

    from engine.embedded.autoencoder import load_autoencoder
    from engine.embedded.dataset import load_dataset
    from engine.embedded.latents import build_latent_cache, load_minilm
    from engine.embedded.pack import is_pack, write_pack

    if args.out.exists() and not is_pack(args.out):
        raise EngineError(f"{args.out} exists and is not a latent pack; pick another --out.")
    if not (args.vae / "config.json").is_file():
        raise EngineError(f"No autoencoder in {args.vae} (config.json missing); pass --vae.")
    data = load_dataset(args.data)
    print(f"encoding {len(data.captions)} images, sketches and captions ...", flush=True)
    text_encoder = load_minilm()
    cache = build_latent_cache(data, args.vae, text_encoder)
    manifest = write_pack(cache, text_encoder, args.out, {
        "image_size": int(data.images.shape[1]),
        "latent_scale": float(load_autoencoder(args.vae).config.scaling_factor),
        "vae": str(args.vae), "source": str(args.data)}, torch.from_numpy(data.images))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote a latent pack of {manifest['count']} images ({size / 2**20:.1f} MiB, "
          f"vocabulary {manifest['vocab_size']} tokens) to {args.out}")
    return 0


def run_phrases(args) -> int:
    import json
    import os

    from engine.embedded.dataset import load_dataset
    from engine.embedded.phrases import build_phrase_table

    if args.cldr is None or args.emojibase is None:
        raise EngineError("data phrases needs --cldr and --emojibase (extracted npm packages).")
    table = build_phrase_table(args.cldr, args.emojibase, load_dataset(args.data).captions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temp = args.out.with_name(f".{args.out.name}.tmp")
    temp.write_text(json.dumps(table, ensure_ascii=False, indent=0) + "\n")
    os.replace(temp, args.out)
    names = sum(len(e["names"]) for e in table["entries"])
    print(f"wrote {len(table['entries'])} emoji with {names} names to {args.out}")
    return 0


def run_vocabulary(args) -> int:
    import torch

    from engine.embedded.dataset import load_dataset
    from engine.embedded.phrases import load_phrase_table
    from engine.pipeline.vocabulary import VOCABULARY_FILE, vocabulary_pairs, write_vocabulary
    from engine.runtime import create_backend

    if not (args.out / "unet").is_dir():
        raise EngineError(f"{args.out} is not a model folder; data vocabulary --out takes the "
                          "model folder the vocabulary is for.")
    backend = create_backend(str(args.out), "torch", "cpu")
    pairs = vocabulary_pairs(list(load_dataset(args.data).captions), load_phrase_table())

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.cat([backend.encode_text(texts[start:start + 256]).pooled.cpu()
                          for start in range(0, len(texts), 256)])

    count = write_vocabulary(args.out / VOCABULARY_FILE, pairs, encode)
    print(f"wrote {count} entries to {args.out / VOCABULARY_FILE}")
    return 0
