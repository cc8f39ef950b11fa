"""`python -m engine smoothing`: choose a student's one-step latent blur (student.json
"one_step_smoothing") on training captions, so that the held-out scores of
`python -m engine eval --steps 1` stay a test, and optionally write it into student.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from engine.api import BACKENDS, EngineError
from engine.runtime.loading import ASSETS_DIR

DEFAULT_SIGMAS = "0,0.3,0.4,0.5,0.6,0.7,0.8,1.0"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "smoothing",
        help="Choose a student's one-step latent blur on training captions (lowest fd); "
             "--write stores it in its student.json.")
    parser.add_argument("--student", type=Path, required=True,
                        help="student model folder (with student.json)")
    parser.add_argument("--data", type=Path, default=Path("data/emoji"),
                        help="emoji dataset folder (python -m engine data emoji)")
    parser.add_argument("--evaluator", type=Path, default=ASSETS_DIR / "evaluator",
                        help="evaluator folder (default: the shipped one)")
    parser.add_argument("--sigmas", default=DEFAULT_SIGMAS,
                        help=f"blur sigmas to try, in latent pixels (default {DEFAULT_SIGMAS})")
    parser.add_argument("--count", type=int, default=256,
                        help="training captions to score, spread over the dataset (default 256)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--write", action="store_true",
                        help="store the sigma with the lowest fd in STUDENT/student.json")
    parser.set_defaults(run=run)


def parse_sigmas(text: str) -> list[float]:
    """"0,0.5,0.6" -> [0.0, 0.5, 0.6]: finite, not negative, at least one."""
    try:
        sigmas = [float(part) for part in text.split(",")]
    except ValueError:
        raise EngineError(f"--sigmas {text!r} must be numbers separated by commas, "
                          "e.g. 0,0.5,0.6.") from None
    if not all(math.isfinite(sigma) and sigma >= 0 for sigma in sigmas):
        raise EngineError(f"--sigmas {text!r} must be finite and not negative.")
    return sigmas


def training_ids(heldout: np.ndarray, count: int) -> list[int]:
    """`count` training-split indices spread evenly over the dataset (deterministic)."""
    ids = np.flatnonzero(~np.asarray(heldout, bool))
    if len(ids) == 0:
        return []
    picks = np.linspace(0, len(ids) - 1, num=min(count, len(ids))).round().astype(int)
    return [int(ids[i]) for i in picks]


def score_sigmas(generator, captions: list[str], real: np.ndarray, sigmas: list[float],
                 evaluator, pooled) -> list[dict]:
    """fd / alignment / top5 of one-step images at each blur sigma, from the same noise
    (caption i at seed i), against the captions' own images."""
    from engine.api import GenerateRequest
    from engine.eval.metrics import score_images

    rows = []
    for sigma in sigmas:
        generator.one_step_smoothing = sigma
        images = np.stack([generator.generate(GenerateRequest(caption, seed=index, steps=1))[0]
                           for index, caption in enumerate(captions)])
        rows.append({"sigma": sigma, **score_images(evaluator, images, pooled, real)})
    return rows


def write_smoothing(student: Path, sigma: float) -> None:
    """Set student.json "one_step_smoothing", keeping every other key (written atomically)."""
    from engine.cli.generate import write_atomic

    path = Path(student) / "student.json"
    config = json.loads(path.read_text())
    config["one_step_smoothing"] = sigma
    write_atomic(path, lambda temporary: temporary.write_text(json.dumps(config, indent=1)
                                                              + "\n"))


def run(args) -> int:
    from engine.embedded.dataset import load_dataset
    from engine.embedded.latents import encode_captions, load_minilm
    from engine.eval.evaluator import load_evaluator
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    sigmas = parse_sigmas(args.sigmas)
    if args.count < 2:
        raise EngineError("--count must be at least 2 (fd compares sets of images).")
    if not (args.student / "student.json").is_file():
        raise EngineError(f"{args.student} has no student.json: --student takes a distilled "
                          "student's model folder.")
    evaluator = load_evaluator(args.evaluator)
    data = load_dataset(args.data)
    ids = training_ids(data.heldout, args.count)
    if len(ids) < 2:
        raise EngineError(f"{args.data} has fewer than two training images to score on.")
    captions = [data.captions[i] for i in ids]
    _, pooled = encode_captions(load_minilm(), captions)
    generator = Generator(create_backend(str(args.student), args.backend, args.device))
    rows = score_sigmas(generator, captions, data.images[ids], sigmas, evaluator, pooled)
    for row in rows:
        print(json.dumps({key: round(value, 4) for key, value in row.items()}))
    best = min(rows, key=lambda row: row["fd"])["sigma"]
    print(f"lowest fd on {len(ids)} training captions: sigma {best}")
    if args.write:
        write_smoothing(args.student, best)
        print(f"wrote one_step_smoothing {best} to {args.student / 'student.json'}")
    return 0
