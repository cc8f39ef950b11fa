"""Masked edits: redraw an image only where a mask says and keep it elsewhere.

In latent space the kept region's x0 estimate is replaced by the image's own latent at every
step (blended latent diffusion, Avrahami et al., SIGGRAPH 2023), so the redrawn part is
sampled around the real surroundings; in pixel space the decoded frame is then laid over the
image through the mask, feathered, so the kept region stays the image's own pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.api import InvalidRequestError
from engine.diffusion.sampling import gaussian_blur

# Feather of the pixel composite, as a fraction of the image side (1.5 px at 128 px).
FEATHER = 1.5 / 128


def mask_weights(mask: np.ndarray) -> np.ndarray:
    """HxW grey uint8 -> HxW float32 in [0, 1]: 1 (white) redraws, 0 (black) keeps."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.ndim != 2 or min(mask.shape) < 1:
        raise InvalidRequestError("The mask must be an HxW grey uint8 image (white redraws, "
                                  "black keeps).")
    return mask.astype(np.float32) / 255


def resized_weights(weights: np.ndarray, size: int, feather: float = 0.0) -> torch.Tensor:
    """(1, 1, size, size) weights (area-averaged when shrinking), blurred by feather pixels."""
    image = Image.fromarray(np.ascontiguousarray(weights, dtype=np.float32))
    if image.size != (size, size):
        shrinking = size < max(image.size)
        image = image.resize((size, size), Image.BOX if shrinking else Image.BILINEAR)
    resized = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())[None, None]
    return gaussian_blur(resized, feather).clamp(0.0, 1.0)


def keep_outside(x0_fn, kept_latent: torch.Tensor, weights: np.ndarray):
    """x0_fn whose estimate is the kept latent where the weights (HxW, any size) are 0."""
    side = kept_latent.shape[-1]
    latent_weights = resized_weights(weights, side)

    def blended(x_t: torch.Tensor, t: int) -> torch.Tensor:
        x0 = x0_fn(x_t, t)
        redraw = latent_weights.to(x0)
        return redraw * x0 + (1 - redraw) * kept_latent.to(x0)

    return blended


def composite(frame: np.ndarray, kept: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 frame over the kept image (same size) where the weights say, feathered."""
    side = frame.shape[0]
    redraw = resized_weights(weights, side, FEATHER * side)[0, 0, :, :, None].numpy()
    mixed = redraw * frame.astype(np.float32) + (1 - redraw) * kept.astype(np.float32)
    return mixed.round().astype(np.uint8)
