"""Sample grids of a model on the emoji held-out split, for docs/ and model cards.

python scripts/model_grids.py --model DIR --out docs/NAME [--teacher-steps 50 --guidance 4]
-> docs/NAME-heldout.png: the real held-out image over four seeds, for 8 held-out captions;
   docs/NAME-sketch.png: held-out sketch, real image and two seeds drawn from caption+sketch.
Without --teacher-steps the model runs as a student (--steps, default 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]

COLUMNS = 8
LABEL_HEIGHT = 14


def heldout_columns(data, count: int = COLUMNS) -> list[int]:
    """count held-out entries spread evenly over the held-out split (as the training grids)."""
    ids = np.flatnonzero(data.heldout)
    return ids[np.linspace(0, len(ids) - 1, count).round().astype(int)].tolist()


def labelled_grid(rows: list[list[np.ndarray]], captions: list[str]) -> Image.Image:
    """Rows of equally sized RGB images, with a caption strip over each column."""
    size = rows[0][0].shape[0]
    grid = Image.new("RGB", (size * len(captions), LABEL_HEIGHT + size * len(rows)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for column, caption in enumerate(captions):
        text = caption if len(caption) <= 20 else caption[:19] + "."
        draw.text((column * size + 2, 1), text, fill="black", font=font)
    for row_index, row in enumerate(rows):
        for column, image in enumerate(row):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=2)
            grid.paste(Image.fromarray(image), (column * size, LABEL_HEIGHT + row_index * size))
    return grid


def write_grid(rows: list[list[np.ndarray]], captions: list[str], out: Path) -> None:
    """labelled_grid saved as a PNG at out (its folder made), and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, captions).save(out)
    print(f"wrote {out}")


def main() -> int:
    from engine.api import GenerateRequest
    from engine.embedded.dataset import load_dataset
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True, help="path prefix of the two PNGs")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "emoji")
    parser.add_argument("--teacher-steps", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    data = load_dataset(args.data)
    generator = Generator(create_backend(args.model, "torch", "cpu"))
    ids = heldout_columns(data)
    captions = [data.captions[i] for i in ids]

    def draw(prompt: str, seed: int, sketch: np.ndarray | None = None) -> np.ndarray:
        if sketch is not None and sketch.ndim == 2:
            sketch = np.repeat(sketch[..., None], 3, axis=2)
        request = GenerateRequest(prompt=prompt, seed=seed, steps=args.steps, sketch=sketch,
                                  teacher_steps=args.teacher_steps, guidance=args.guidance)
        return generator.generate(request)[0]

    real = [data.images[i] for i in ids]
    samples = [[draw(c, seed) for c in captions] for seed in range(args.seeds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid([real, *samples], captions).save(f"{args.out}-heldout.png")
    sketches = [data.sketches[i] for i in ids]
    sketched = [[draw(c, seed, s) for c, s in zip(captions, sketches, strict=True)]
                for seed in range(2)]
    labelled_grid([sketches, real, *sketched], captions).save(f"{args.out}-sketch.png")
    print(f"wrote {args.out}-heldout.png and {args.out}-sketch.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
