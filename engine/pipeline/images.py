"""Image helpers of the pipeline: uint8 arrays in, checked, resized, to and from tensors."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

from engine.api import InvalidRequestError


def image_key(image: np.ndarray) -> str:
    """A digest of an image's pixels and shape, the key of the caches that hold its encodings."""
    return hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()


def to_rgb_array(image: np.ndarray, what: str) -> np.ndarray:
    """Accept HxW grey, HxWx3 RGB or HxWx4 RGBA uint8 (alpha composited on white)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise InvalidRequestError(f"The {what} must be an HxWx3 uint8 image.")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255
        return (image[:, :, :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    if image.shape[2] != 3:
        raise InvalidRequestError(f"The {what} must have 3 colour channels.")
    return image


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 (or HxW) at size x size (Lanczos; the same array when it already is)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def image_to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWx3 -> (1, 3, size, size) float in [-1, 1]."""
    image = resized(image, size)
    array = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    return array.unsqueeze(0)


def tensor_to_image(images: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> HxWx3 uint8."""
    array = ((images[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()
