"""Emoji recognizer: a small CNN classifier with one class per emoji (skin tones share one).

It judges whether a generated image shows the emoji that was asked for (recall metrics in
`eval`). Trained with cross-entropy (label smoothing, Szegedy et al. 2016, eq. in sec. 7) on
renders degraded as generated images are: round trips through the shipped autoencoder, JPEG,
blur, down- and up-scaling, shifts, scaling, rotation, colour jitter and noise.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from engine.api import EngineError
from engine.eval.evaluator import conv_block, images_to_tensor

RECOGNIZER_SIZE = 48


@dataclass
class RecognizerConfig:
    """Architecture and class names (saved as config.json next to the weights)."""

    classes: list[str] = field(default_factory=list)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    image_size: int = RECOGNIZER_SIZE


class Recognizer(nn.Module):
    """Strided conv blocks, global average pooling, a linear classifier."""

    def __init__(self, config: RecognizerConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for width in config.widths:
            layers.append(conv_block(c_in, width))
            c_in = width
        self.backbone = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, len(config.classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of images in [-1, 1] at any size (resized to image_size)."""
        if images.shape[-1] != self.config.image_size:
            images = F.interpolate(images, size=self.config.image_size, mode="bilinear",
                                   antialias=True, align_corners=False)
        return self.classifier(self.backbone(images).mean((2, 3)))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def jpeg_bank(images_uint8: np.ndarray, seed: int, quality: tuple[int, int] = (15, 60)
              ) -> np.ndarray:
    """Every image once through JPEG at a seeded random quality."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images_uint8)
    for index, image in enumerate(images_uint8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=int(rng.integers(*quality)))
        out[index] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (sigma per image, 7 taps)."""
    n, c, h, w = images.shape
    taps = torch.arange(-3, 4, dtype=images.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = F.pad(images.reshape(1, n * c, h, w), (3, 3, 3, 3), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, 7), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 7, 1), groups=n * c)
    return flat.view(n, c, h, w)


def degrade(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random geometry (white fill), blur, resolution loss, colour jitter and noise."""
    n, size = len(images), images.shape[-1]
    angle = _uniform(n, -0.2, 0.2, g)
    scale = _uniform(n, 0.8, 1.2, g)
    shift = _uniform(2 * n, -0.15, 0.15, g).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # sample 1 - x with zero padding so that what enters from outside is white
    images = 1 - F.grid_sample(1 - images, grid, align_corners=False)
    blurred = torch.rand(n, generator=g) < 0.4
    if blurred.any():
        sigma = _uniform(int(blurred.sum()), 0.3, 1.6, g)
        images[blurred] = _gaussian_blur(images[blurred], sigma)
    for low in (16, 24, 32):
        pick = torch.rand(n, generator=g) < 0.1
        if pick.any():
            images[pick] = resize(resize(images[pick], low), size)
    brightness = _uniform(n, -0.12, 0.12, g).view(n, 1, 1, 1)
    contrast = _uniform(n, 0.75, 1.25, g).view(n, 1, 1, 1)
    saturation = _uniform(n, 0.7, 1.3, g).view(n, 1, 1, 1)
    grey = images.mean(1, keepdim=True)
    images = grey + saturation * (images - grey)
    mean = images.mean((1, 2, 3), keepdim=True)
    images = mean + contrast * (images - mean) + brightness
    noise = _uniform(n, 0.0, 0.08, g).view(n, 1, 1, 1) * (torch.rand(n, 1, 1, 1, generator=g) < 0.5)
    images = images + noise * torch.randn(images.shape, generator=g)
    return images.clamp(-1, 1)


def augmented_batch(banks: list[torch.Tensor], ids: torch.Tensor, g: torch.Generator
                    ) -> torch.Tensor:
    """Each image from a random bank (clean, autoencoder round trip, JPEG), then degraded."""
    choice = torch.randint(len(banks), (len(ids),), generator=g)
    stacked = torch.stack([banks[c][i] for c, i in zip(choice.tolist(), ids.tolist(),
                                                       strict=True)])
    return degrade(stacked, g)


def train_recognizer(banks: list[torch.Tensor], labels: torch.Tensor, classes: list[str],
                     steps: int = 4000, batch: int = 128, lr: float = 3e-3, seed: int = 0,
                     progress=None) -> tuple[Recognizer, list[float]]:
    """Train on degraded renders; banks are (N, 3, S, S) tensors in [-1, 1], same order."""
    torch.manual_seed(seed)
    model = Recognizer(RecognizerConfig(classes=list(classes)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps,
                                                    pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in progress(range(steps)) if progress else range(steps):
        ids = torch.randint(len(labels), (batch,), generator=g)
        logits = model(augmented_batch(banks, ids, g))
        loss = F.cross_entropy(logits, labels[ids], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return model.eval(), losses


@torch.no_grad()
def class_logits(model: Recognizer, images_uint8: np.ndarray, batch: int = 128) -> torch.Tensor:
    """(N, classes) logits of uint8 NHWC images."""
    return torch.cat([model(images_to_tensor(images_uint8[start:start + batch]))
                      for start in range(0, len(images_uint8), batch)])


@torch.no_grad()
def augmented_accuracy(model: Recognizer, banks: list[torch.Tensor], labels: torch.Tensor,
                       seed: int, rounds: int = 2) -> dict:
    """Top-1 / top-5 on fresh degraded renders (a seed training never drew)."""
    g = torch.Generator().manual_seed(seed)
    top1 = top5 = total = 0
    for _ in range(rounds):
        for start in range(0, len(labels), 256):
            ids = torch.arange(start, min(start + 256, len(labels)))
            logits = model(augmented_batch(banks, ids, g))
            ranks = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = ranks == labels[ids, None]
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(1).sum())
            total += len(ids)
    return {"top1": top1 / total, "top5": top5 / total}


def hit_rates(logits: torch.Tensor, accepted: list[list[int]]) -> tuple[torch.Tensor, ...]:
    """Per image: whether an accepted class ranks first, and whether one is in the top 5."""
    ranks = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
    top1 = torch.tensor([r[0] in ok for r, ok in zip(ranks, accepted, strict=True)])
    top5 = torch.tensor([bool(set(r) & set(ok)) for r, ok in zip(ranks, accepted, strict=True)])
    return top1, top5


def save_recognizer(model: Recognizer, folder: Path, info: dict | None = None) -> None:
    from engine.embedded.atomic import atomic_save_folder

    def write(temp: Path) -> None:
        weights = {k: v.half().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(temp / "model.safetensors"))
        config = {**asdict(model.config), "widths": list(model.config.widths)}
        text = json.dumps({**config, **(info or {})}, indent=1, ensure_ascii=False)
        (temp / "config.json").write_text(text + "\n")

    atomic_save_folder(Path(folder), write)


def load_recognizer(folder: Path) -> Recognizer:
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise EngineError(f"No recognizer in {folder}; train one with python -m engine "
                          "train-recognizer --data DIR --out DIR.")
    raw = json.loads((folder / "config.json").read_text())
    config = RecognizerConfig(classes=raw["classes"], widths=tuple(raw["widths"]),
                              image_size=raw["image_size"])
    model = Recognizer(config)
    model.load_state_dict({k: v.float() for k, v in
                           load_file(str(folder / "model.safetensors")).items()})
    return model.eval().requires_grad_(False)
