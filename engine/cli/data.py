"""`python -m engine data emoji --out DIR`: build the embedded emoji dataset."""

from __future__ import annotations

from pathlib import Path

from engine.api import EngineError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="Build a training dataset (emoji: Noto Color Emoji glyphs, captions, sketches).")
    parser.add_argument("source", choices=["emoji"], help="dataset to build")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (replaced atomically)")
    parser.add_argument("--font", type=Path, default=None,
                        help="color emoji font (default: the Debian fonts-noto-color-emoji file)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N emoji (tests)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from tqdm import tqdm

    from engine.embedded.dataset import build_dataset

    if args.out.exists() and not (args.out / "manifest.json").is_file():
        raise EngineError(f"{args.out} exists and is not a dataset folder; pick another --out.")
    manifest = build_dataset(args.out, args.font, args.limit,
                             progress=lambda items: tqdm(items, desc="emoji", unit="img"))
    print(f"wrote {manifest['count']} images ({manifest['train']} train, {manifest['heldout']} "
          f"held out, {manifest['skipped_empty']} empty glyphs skipped) to {args.out}")
    return 0
