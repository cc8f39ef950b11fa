"""How closely an image follows a line sketch: stroke F1 within a pixel tolerance.

The image's edges are found as the dataset's sketches are drawn (engine/embedded/dataset.py:
Sobel colour gradients of a lightly blurred image, thinned to local maxima) but without the
random threshold, gaps and jitter. A sketch stroke counts as drawn when an image edge lies
within `tolerance` pixels of it (recall), an image edge counts as asked for when a stroke lies
that close (precision); F1 is their harmonic mean, averaged over the pairs. The tolerance
absorbs the sketches' jitter (up to 1.5 px).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.embedded.dataset import gradient_edges

EDGE_THRESHOLD = 0.35  # the middle of the dataset sketches' random 0.25-0.45
STROKE_BELOW = 128  # sketch pixels darker than this are strokes
TOLERANCE_PX = 2


def edge_map(image: np.ndarray) -> np.ndarray:
    """Boolean HxW edges of an HxWx3 uint8 image, found as the dataset's sketches are."""
    return gradient_edges(image, EDGE_THRESHOLD)


def stroke_f1(sketch: np.ndarray, image: np.ndarray, tolerance: int = TOLERANCE_PX) -> float:
    """F1 of the image's edges against the sketch's strokes (HxW or HxWx3 uint8 sketch);
    1.0 when both are empty, 0.0 when only one is."""
    strokes = (sketch if sketch.ndim == 2 else sketch.min(axis=-1)) < STROKE_BELOW
    edges = edge_map(image)
    if not strokes.any() or not edges.any():
        return float(strokes.any() == edges.any())
    near_edge = ndimage.distance_transform_edt(~edges) <= tolerance
    near_stroke = ndimage.distance_transform_edt(~strokes) <= tolerance
    recall = float(near_edge[strokes].mean())
    precision = float(near_stroke[edges].mean())
    return 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)


def mean_stroke_f1(sketches: np.ndarray, images: np.ndarray) -> float:
    """Mean stroke F1 over aligned (sketch, image) pairs, images resized to the sketches."""
    if images.shape[1:3] != sketches.shape[1:3]:
        from PIL import Image

        size = (sketches.shape[2], sketches.shape[1])
        images = np.stack([np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
                           for image in images])
    return float(np.mean([stroke_f1(s, i) for s, i in zip(sketches, images, strict=True)]))
