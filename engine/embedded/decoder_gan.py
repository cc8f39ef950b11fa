"""An adversarial term for sharper decoders, and a sharpness measure to check it.

A decoder trained on L1 + MSE alone averages what it cannot resolve into blur (its
reconstructions keep about 64% of the real images' Laplacian energy here). A small
patch discriminator with hinge losses (Lim & Ye 2017, "Geometric GAN", as used for the
VQGAN/TAESD decoders) rewards locally plausible detail; the reconstruction loss keeps the
colours and shapes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DISCRIMINATOR_LR = 2e-4  # AdamW, betas (0.5, 0.999)


class PatchDiscriminator(nn.Module):
    """Strided convolutions to a grid of real/fake logits (one per ~16 px receptive field)."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        width_in = 3
        for index in range(layers):
            width_out = channels * 2**index
            blocks += [nn.Conv2d(width_in, width_out, 4, stride=2, padding=1),
                       nn.GroupNorm(8, width_out) if index else nn.Identity(),
                       nn.LeakyReLU(0.2)]
            width_in = width_out
        blocks.append(nn.Conv2d(width_in, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_hinge_loss(real_logits: torch.Tensor,
                             fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the decoder: -mean D(reconstruction)."""
    return -fake_logits.mean()


def laplacian_energy(images_uint8: np.ndarray) -> float:
    """Mean |4-neighbour Laplacian| of the grey images (N, H, W, 3): high-frequency detail."""
    grey = images_uint8.astype(np.float32).mean(axis=-1)
    laplacian = (4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
                 - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:])
    return float(np.abs(laplacian).mean())


def sharpness(images_uint8: np.ndarray, reference_uint8: np.ndarray) -> float:
    """Laplacian energy of images relative to reference images (1.0: as detailed; < 1:
    blurrier; > 1: more high-frequency content, e.g. noise)."""
    return laplacian_energy(images_uint8) / max(laplacian_energy(reference_uint8), 1e-9)
