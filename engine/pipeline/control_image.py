"""Control images in the polarity and preprocessing a control model was trained on.

Scribble, line-art and canny ControlNets and T2I-Adapters all read white lines on black.
The canvas draws dark strokes on white, so a drawing is inverted; an image that already is
a control map (mostly dark) is kept as it is. scribble: hard, binary lines; lineart: the
lines' grey levels kept; canny: the edges of any image (Canny 1986), computed here.
"""

from __future__ import annotations

import numpy as np
import torch

# Canny's hysteresis thresholds on the 3x3 Sobel gradient magnitude of 0-255 grey levels, the
# values the canny ControlNets' training data was made with (low 100, high 200).
CANNY_LOW, CANNY_HIGH = 100.0, 200.0
SCRIBBLE_THRESHOLD = 128  # inverted grey above it is a line


def grey_levels(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW float32 luma (ITU-R BT.601) in 0..255."""
    return image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def lines_on_black(grey: np.ndarray) -> np.ndarray:
    """Lines white on black: a drawing on a light background is inverted; a mostly dark image
    (already a control map) is kept."""
    return 255.0 - grey if np.median(grey) >= 128 else grey


def sobel_gradients(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of an HxW image by 3x3 Sobel kernels, edges replicated."""
    padded = np.pad(grey, 1, mode="edge")
    height, width = grey.shape

    def window(row: int, column: int) -> np.ndarray:
        return padded[row:row + height, column:column + width]

    gradient_x = (window(0, 2) + 2 * window(1, 2) + window(2, 2)
                  - window(0, 0) - 2 * window(1, 0) - window(2, 0))
    gradient_y = (window(2, 0) + 2 * window(2, 1) + window(2, 2)
                  - window(0, 0) - 2 * window(0, 1) - window(0, 2))
    return gradient_x, gradient_y


def thinned(magnitude: np.ndarray, gradient_x: np.ndarray, gradient_y: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel only where its gradient magnitude is the largest
    of its two neighbours across the edge (direction rounded to 0, 45, 90 or 135 degrees)."""
    angle = (np.rad2deg(np.arctan2(gradient_y, gradient_x)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45) % 4).astype(np.int64)  # 0: x, 1: diagonal, 2: y, 3: anti
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}  # (row, column) across the edge
    kept = np.zeros_like(magnitude, dtype=bool)
    for index, (row, column) in steps.items():
        ahead = padded[1 + row:1 + row + height, 1 + column:1 + column + width]
        behind = padded[1 - row:1 - row + height, 1 - column:1 - column + width]
        kept |= (sector == index) & (magnitude >= ahead) & (magnitude > behind)
    return np.where(kept, magnitude, 0.0)


def grown(mask: np.ndarray) -> np.ndarray:
    """mask and its 8 neighbours (one step of a 3x3 dilation)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    result = mask.copy()
    for row in range(3):
        for column in range(3):
            result |= padded[row:row + height, column:column + width]
    return result


def canny_edges(image: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH
                ) -> np.ndarray:
    """Canny's edge detector (Canny 1986): Sobel gradients, non-maximum suppression, and
    hysteresis (weak edges kept where connected to strong ones). HxWx3 uint8 -> HxW bool."""
    gradient_x, gradient_y = sobel_gradients(grey_levels(image))
    magnitude = thinned(np.hypot(gradient_x, gradient_y), gradient_x, gradient_y)
    weak, edges = magnitude >= low, magnitude >= high
    while True:  # grow the strong edges along weak ones until nothing changes
        more = grown(edges) & weak
        if np.array_equal(more, edges):
            return edges
        edges = more


def control_map(image: np.ndarray, control_type: str) -> np.ndarray:
    """An HxWx3 uint8 RGB image -> the HxW uint8 white-on-black map control_type wants."""
    if control_type == "canny":
        return canny_edges(image).astype(np.uint8) * 255
    lines = lines_on_black(grey_levels(image))
    if control_type == "scribble":
        return np.where(lines > SCRIBBLE_THRESHOLD, 255, 0).astype(np.uint8)
    if control_type == "lineart":
        return lines.round().clip(0, 255).astype(np.uint8)
    raise ValueError(f"unknown control type {control_type!r}")


def control_tensor(control: np.ndarray) -> torch.Tensor:
    """An HxW uint8 control map -> (1, 3, H, W) float in [0, 1], as control models read it."""
    grey = torch.from_numpy(control.astype(np.float32) / 255.0)
    return grey.expand(3, *grey.shape).unsqueeze(0).contiguous()
