"""The mask of a "painted area only" edit: where the artist painted over the image, grown by a
margin so the model can redraw around the strokes, plus the mask of a restored recipe."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

MASK_CELLS = 32  # the painted area is grown on a grid of this many cells a side...
MASK_GROW = 2  # ...by this many cells (1/16 of the side: one latent pixel of a 128-px model)


def painted_area(alpha: np.ndarray, restored: np.ndarray | None = None) -> np.ndarray:
    """HxW uint8 stroke alpha -> HxW uint8 mask (255 redraws, 0 keeps): every grid cell a
    stroke touches, grown by MASK_GROW cells, with soft edges; at least `restored` (any size)
    where one is given."""
    side = alpha.shape[0]
    cells = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8)).resize(
        (MASK_CELLS, MASK_CELLS), Image.BOX)
    touched = cells.point(lambda value: 255 if value > 0 else 0)
    grown = touched.filter(ImageFilter.MaxFilter(2 * MASK_GROW + 1))
    softened = grown.resize((side, side), Image.BILINEAR).filter(
        ImageFilter.GaussianBlur(side / MASK_CELLS / 2))  # round the grid's corners
    mask = np.asarray(softened, dtype=np.uint8)
    if restored is not None:
        restored_image = Image.fromarray(np.ascontiguousarray(restored, dtype=np.uint8))
        mask = np.maximum(mask, np.asarray(restored_image.resize((side, side), Image.BILINEAR)))
    return mask
