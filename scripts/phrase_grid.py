"""Natural prompts, teacher beside student, for the README and the model cards.

python scripts/phrase_grid.py --teacher DIR --student DIR --out docs/NAME.png
-> 16 hand-written evaluation prompts (two per group, the same every time) in two blocks of
   eight columns; in each block the teacher (20-step DDIM + CFG 4) over the student at its
   own step count, seed 0, both matching the prompt to their vocabulary as the app does
   (--as-typed: a third row, the student drawing the prompt exactly as written); each column
   headed by its prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from model_grids import labelled_grid
from PIL import Image

PER_GROUP = 2
SKIPPED_GROUPS = ("flags",)  # the recognizer judges them; a 128-px grid shows them poorly


def pick_prompts(phrases: list[dict], per_group: int = PER_GROUP) -> list[str]:
    """The first per_group prompts of each group, in group order."""
    chosen, taken = [], {}
    for phrase in phrases:
        group = phrase["group"]
        if group not in SKIPPED_GROUPS and taken.get(group, 0) < per_group:
            chosen.append(phrase["prompt"])
            taken[group] = taken.get(group, 0) + 1
    return chosen


def main() -> int:
    from engine.api import GenerateRequest
    from engine.embedded.phrases import load_eval_phrases
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--as-typed", action="store_true",
                        help="add a row: the student drawing each prompt exactly as written")
    args = parser.parse_args()
    prompts = pick_prompts(load_eval_phrases())
    teacher = Generator(create_backend(args.teacher, "torch", "cpu"))
    student = Generator(create_backend(args.student, "torch", "cpu"))

    def row(generator: Generator, texts: list[str], **settings) -> list[np.ndarray]:
        return [generator.generate(GenerateRequest(prompt=text, seed=args.seed, **settings))[0]
                for text in texts]

    blocks = []
    for start in range(0, len(prompts), 8):
        texts = prompts[start:start + 8]
        rows = [row(teacher, texts, teacher_steps=args.teacher_steps, guidance=args.guidance),
                row(student, texts, steps=student.default_steps)]
        if args.as_typed:
            rows.append(row(student, texts, steps=student.default_steps, match_prompt=False))
        blocks.append(labelled_grid(rows, texts))
    width = max(block.width for block in blocks)
    grid = Image.new("RGB", (width, sum(block.height for block in blocks)), "white")
    top = 0
    for block in blocks:
        grid.paste(block, (0, top))
        top += block.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}: {len(prompts)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
