"""Choose a student's one-step latent blur (student.json "one_step_smoothing") on the
training split, so that the held-out scores of `python -m engine eval --steps 1` stay a test.

python scripts/one_step_smoothing.py --student DIR [--sigmas 0,0.3,...] [--count 256] [--write]
-> for each sigma: fd and alignment of one-step images for `count` training captions against
   their own training images (the evaluator's feature space); the lowest fd wins. --write
   stores it in DIR/student.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def training_ids(heldout: np.ndarray, count: int) -> list[int]:
    """`count` training-split indices spread evenly over the dataset (deterministic)."""
    ids = np.flatnonzero(~heldout)
    picks = np.linspace(0, len(ids) - 1, num=min(count, len(ids))).round().astype(int)
    return [int(ids[i]) for i in picks]


def score_sigmas(generator, data, sigmas: list[float], ids: list[int], evaluator,
                 pooled) -> list[dict]:
    """fd / alignment / top5 of one-step images at each blur sigma (the same noise)."""
    from engine.api import GenerateRequest
    from engine.eval.metrics import score_images

    captions, real = [data.captions[i] for i in ids], data.images[ids]
    rows = []
    for sigma in sigmas:
        generator.one_step_smoothing = sigma
        images = np.stack([generator.generate(GenerateRequest(caption, seed=index, steps=1))[0]
                           for index, caption in enumerate(captions)])
        rows.append({"sigma": sigma, **score_images(evaluator, images, pooled, real)})
    return rows


def write_smoothing(student: Path, sigma: float) -> None:
    from engine.cli.generate import write_atomic

    path = student / "student.json"
    config = json.loads(path.read_text())
    config["one_step_smoothing"] = sigma
    write_atomic(path, lambda temporary: temporary.write_text(json.dumps(config, indent=1)
                                                              + "\n"))


def main() -> int:
    from engine.embedded.dataset import load_dataset
    from engine.embedded.latents import encode_captions, load_minilm
    from engine.eval.evaluator import load_evaluator
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "emoji")
    parser.add_argument("--evaluator", type=Path, default=REPO / "assets/models/evaluator")
    parser.add_argument("--sigmas", default="0,0.3,0.4,0.5,0.6,0.7,0.8,1.0")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--write", action="store_true", help="store the best in student.json")
    args = parser.parse_args()
    sigmas = [float(value) for value in args.sigmas.split(",")]
    data = load_dataset(args.data)
    ids = training_ids(data.heldout, args.count)
    _, pooled = encode_captions(load_minilm(), [data.captions[i] for i in ids])
    generator = Generator(create_backend(str(args.student), args.backend, "cpu"))
    rows = score_sigmas(generator, data, sigmas, ids, load_evaluator(args.evaluator), pooled)
    for row in rows:
        print(json.dumps({key: round(value, 4) for key, value in row.items()}))
    best = min(rows, key=lambda row: row["fd"])["sigma"]
    print(f"lowest fd on {len(ids)} training captions: sigma {best}")
    if args.write:
        write_smoothing(args.student, best)
        print(f"wrote one_step_smoothing {best} to {args.student / 'student.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
