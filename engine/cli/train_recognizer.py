"""`python -m engine train-recognizer`: train the emoji recognizer behind eval's recall."""

from __future__ import annotations

from pathlib import Path

from engine.api import EngineError
from engine.runtime.loading import ASSETS_DIR


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-recognizer",
        help="Train the emoji recognizer (one class per emoji, skin tones shared) that eval's "
             "recall and phrase scores use.")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (engine data)")
    parser.add_argument("--out", type=Path, required=True, help="recognizer folder to write")
    parser.add_argument("--vae", type=Path, default=ASSETS_DIR / "teacher" / "vae",
                        help="autoencoder whose round trips train it (default: the embedded one)")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.set_defaults(run=run)


def image_banks(images_uint8, vae_dir: Path, seed: int, size: int):
    """Clean renders, autoencoder round trips and JPEG copies, as [-1, 1] tensors at size."""
    import torch

    from engine.embedded.autoencoder import load_autoencoder, reconstruct
    from engine.eval.evaluator import images_to_tensor
    from engine.eval.recognizer import jpeg_bank, resize

    ae = load_autoencoder(vae_dir)
    with torch.no_grad():
        round_trip = reconstruct(ae, torch.from_numpy(images_uint8)).clamp(-1, 1)
    banks = [images_to_tensor(images_uint8), round_trip,
             images_to_tensor(jpeg_bank(images_uint8, seed))]
    return [resize(bank, size) for bank in banks]


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from engine.embedded.dataset import base_caption, load_dataset
    from engine.eval.recognizer import (
        RECOGNIZER_SIZE,
        augmented_accuracy,
        save_recognizer,
        train_recognizer,
    )

    if args.steps < 1 or args.batch < 2:
        raise EngineError("--steps must be positive and --batch at least 2.")
    if not (args.vae / "config.json").is_file():
        raise EngineError(f"No autoencoder in {args.vae} (config.json missing); pass --vae.")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    bases = [base_caption(c) for c in data.captions]
    classes = list(dict.fromkeys(bases))
    labels = torch.tensor([classes.index(b) for b in bases])
    print(f"{len(data)} images, {len(classes)} classes; preparing degraded copies ...",
          flush=True)
    banks = image_banks(data.images, args.vae, args.seed, RECOGNIZER_SIZE)
    model, losses = train_recognizer(
        banks, labels, classes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        progress=lambda r: tqdm(r, desc="recognizer", unit="step", mininterval=10))
    accuracy = augmented_accuracy(model, banks, labels, seed=args.seed + 1000)
    clean = augmented_accuracy(model, banks[:1], labels, seed=args.seed + 2000)
    info = {"steps": args.steps, "batch": args.batch, "lr": args.lr,
            "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "augmented_top1": accuracy["top1"], "augmented_top5": accuracy["top5"],
            "clean_degraded_top1": clean["top1"], "images": len(data),
            "vae": str(args.vae), "data": str(args.data)}
    save_recognizer(model, args.out, info)
    print(f"wrote {args.out}: {len(classes)} classes, top-1 {accuracy['top1']:.3f} / top-5 "
          f"{accuracy['top5']:.3f} on fresh degraded renders")
    return 0
