"""Masked edits of emoji images, for README/docs: what "Painted area only" keeps and redraws.

python scripts/masked_edit_grid.py --data data/emoji --out docs/masked-edit.png
-> one row per image: the image, the area redrawn (a disc, tinted magenta), two-step masked edits
   ("red heart" at strength 1 and 0.7, "star" at 1), and the unmasked edit at 1 for contrast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from model_grids import write_grid

REPO = Path(__file__).resolve().parents[1]


IMAGES = ("house", "cat face", "grinning face")
TINT = (255, 0, 255)
EDITS = (("red heart", 1.0, True), ("red heart", 0.7, True), ("star", 1.0, True),
         ("red heart", 1.0, False))


def disc_mask(size: int) -> np.ndarray:
    """A disc over the upper left of the image: 255 inside (redraw), 0 outside (keep)."""
    rows, columns = np.mgrid[:size, :size]
    centre, radius = size * 0.31, size * 0.23
    return (((rows - centre) ** 2 + (columns - centre) ** 2) < radius**2).astype(np.uint8) * 255


def main() -> int:
    from engine.api import GenerateRequest
    from engine.embedded.dataset import load_dataset
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend
    from engine.runtime.loading import default_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data/emoji")
    parser.add_argument("--model", default=None, help="default: the embedded student")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = load_dataset(args.data)
    generator = Generator(create_backend(str(args.model or default_model()), "auto"))
    rows = []
    for caption in IMAGES:
        image = data.images[data.captions.index(caption)]
        mask = disc_mask(image.shape[0])
        tint = (0.5 * image + 0.5 * np.array(TINT)).astype(np.uint8)
        row = [image, np.where(mask[..., None] > 0, tint, image)]
        for prompt, strength, masked in EDITS:
            request = GenerateRequest(prompt, seed=args.seed, steps=2, init_image=image,
                                      strength=strength, mask=mask if masked else None)
            row.append(generator.generate(request)[0])
        rows.append(row)
    captions = ["image", "area redrawn"] + [
        f"{prompt} {strength:g}" + ("" if masked else " unmasked")
        for prompt, strength, masked in EDITS]
    write_grid(rows, captions, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
