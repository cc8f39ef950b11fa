"""`python -m engine train-evaluator`: train the domain evaluator used by `engine eval`."""

from __future__ import annotations

from pathlib import Path

from engine.api import EngineError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-evaluator",
        help="Train the emoji evaluator (CNN image encoder aligned to MiniLM caption vectors).")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (engine data)")
    parser.add_argument("--out", type=Path, required=True, help="evaluator folder to write")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from engine.embedded.dataset import load_dataset
    from engine.embedded.latents import encode_captions, load_minilm
    from engine.eval.evaluator import save_evaluator, train_evaluator
    from engine.eval.metrics import alignment_scores, image_features

    if args.steps < 1 or args.batch < 2:
        raise EngineError("--steps must be positive and --batch at least 2.")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    train = ~data.heldout
    if train.sum() < 2 or data.heldout.sum() < 1:
        raise EngineError("The dataset needs at least two training and one held-out image.")
    _, pooled = encode_captions(load_minilm(), list(data.captions))
    model, losses = train_evaluator(
        data.images[train], pooled[torch.from_numpy(train)], steps=args.steps,
        batch=min(args.batch, int(train.sum())), lr=args.lr, seed=args.seed,
        progress=lambda r: tqdm(r, desc="evaluator", unit="step"))
    _, image_emb = image_features(model, data.images[data.heldout])
    with torch.no_grad():
        text_emb = model.embed_texts(pooled[torch.from_numpy(data.heldout)])
    heldout = alignment_scores(image_emb, text_emb)
    info = {"steps": args.steps, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "heldout_real": heldout, "data": str(args.data)}
    save_evaluator(model, args.out, info)
    print(f"wrote {args.out}: loss {info['final_loss']:.3f}, held-out real alignment "
          f"{heldout['alignment']:.3f}, top5 {heldout['top5']:.3f}")
    return 0
