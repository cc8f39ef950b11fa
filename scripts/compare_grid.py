"""Teacher vs student side by side: same held-out captions, same seeds, same noise.

python scripts/compare_grid.py --teacher DIR --student DIR --out docs/NAME.png
-> rows: the real held-out image, then for each seed the teacher (50-step DDIM + CFG 4),
   the student at 1, 2 and 4 steps (each count on the student's own schedule: student.json
   "timesteps" for its default count); 8 held-out captions as columns.
   With --sketch each column also gets the held-out sketch as conditioning (top row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from model_grids import heldout_columns, write_grid

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from engine.api import GenerateRequest
    from engine.embedded.dataset import load_dataset
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "emoji")
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sketch", action="store_true", help="condition on held-out sketches")
    args = parser.parse_args()
    data = load_dataset(args.data)
    teacher = Generator(create_backend(args.teacher, "torch", "cpu"))
    student = Generator(create_backend(args.student, "torch", "cpu"))
    ids = heldout_columns(data)
    captions = [data.captions[i] for i in ids]
    sketches = [np.repeat(data.sketches[i][..., None], 3, axis=2) if args.sketch else None
                for i in ids]

    def row(generator: Generator, seed: int, **settings) -> list[np.ndarray]:
        return [generator.generate(GenerateRequest(prompt=caption, seed=seed, sketch=sketch,
                                                   **settings))[0]
                for caption, sketch in zip(captions, sketches, strict=True)]

    rows = [sketches] if args.sketch else []
    rows.append([data.images[i] for i in ids])
    for seed in range(args.seeds):
        rows.append(row(teacher, seed, teacher_steps=args.teacher_steps, guidance=args.guidance))
        rows.extend(row(student, seed, steps=steps) for steps in (1, 2, 4))
    write_grid(rows, captions, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
