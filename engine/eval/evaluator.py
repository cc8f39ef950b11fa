"""Domain evaluator: a small CNN image encoder aligned to frozen MiniLM caption vectors.

Trained CLIP-style (symmetric InfoNCE, Radford et al. 2021, eq. in Fig. 3) on the
training split only; its penultimate features serve as the space for the Frechet distance.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.api import EngineError

EVAL_SIZE = 64  # images are scored at 64 px


@dataclass
class EvaluatorConfig:
    """Architecture of the evaluator (saved as config.json next to the weights)."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    feature_dim: int = 64  # few dimensions: FD is estimated from ~180 held-out images
    text_dim: int = 384
    embed_dim: int = 128
    image_size: int = EVAL_SIZE


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, stride=2), nn.GroupNorm(8, c_out), nn.SiLU())


class Evaluator(nn.Module):
    """Image encoder (features + projection) and a linear head on the text vectors."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for width in config.widths:
            layers.append(conv_block(c_in, width))
            c_in = width
        self.backbone = nn.Sequential(*layers)
        self.features_head = nn.Linear(c_in, config.feature_dim)
        self.image_projection = nn.Linear(config.feature_dim, config.embed_dim)
        self.text_projection = nn.Linear(config.text_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) features of images in [-1, 1] at any size (resized to 64)."""
        if images.shape[-1] != self.config.image_size:
            images = F.interpolate(images, size=self.config.image_size, mode="bilinear",
                                   antialias=True, align_corners=False)
        pooled = self.backbone(images).mean((2, 3))
        return F.silu(self.features_head(pooled))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.features(images)), dim=-1)

    def embed_texts(self, pooled_text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(pooled_text.float()), dim=-1)

    def contrastive_loss(self, images: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch (CLIP)."""
        image_emb, text_emb = self.embed_images(images), self.embed_texts(pooled_text)
        logits = self.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
        labels = torch.arange(len(images), device=images.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def images_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    array = torch.from_numpy(np.ascontiguousarray(images_uint8))
    return array.permute(0, 3, 1, 2).float() / 127.5 - 1


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the size (white fill) so generated offsets do not matter."""
    size = images.shape[-1]
    pad = size // 8
    padded = F.pad(images, (pad, pad, pad, pad), value=1.0)
    offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator).tolist()
    crops = [p[:, y:y + size, x:x + size] for p, (y, x) in zip(padded, offsets, strict=True)]
    return torch.stack(crops)


def train_evaluator(images_uint8: np.ndarray, pooled_text: torch.Tensor, steps: int = 1500,
                    batch: int = 128, lr: float = 2e-3, seed: int = 0, progress=None,
                    config: EvaluatorConfig | None = None) -> tuple[Evaluator, list[float]]:
    """Train on (image, caption vector) pairs; images are pre-resized to 64 px once."""
    torch.manual_seed(seed)
    model = Evaluator(config or EvaluatorConfig())
    small = F.interpolate(images_to_tensor(images_uint8), size=model.config.image_size,
                          mode="bilinear", antialias=True, align_corners=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps,
                                                    pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    iterator = progress(range(steps)) if progress else range(steps)
    for _ in iterator:
        ids = torch.randperm(len(small), generator=generator)[:batch]
        loss = model.contrastive_loss(augment(small[ids], generator), pooled_text[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return model.eval(), losses


def save_evaluator(model: Evaluator, folder: Path, info: dict | None = None) -> None:
    from engine.embedded.atomic import atomic_save_folder

    def write(temp: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(temp / "model.safetensors"))
        config = {**asdict(model.config), "widths": list(model.config.widths)}
        (temp / "config.json").write_text(json.dumps({**config, **(info or {})}, indent=1) + "\n")

    atomic_save_folder(Path(folder), write)


def load_evaluator(folder: Path) -> Evaluator:
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise EngineError(f"No evaluator in {folder}; train one with python -m engine "
                          "train-evaluator --data DIR --out DIR.")
    raw = json.loads((folder / "config.json").read_text())
    fields = EvaluatorConfig.__dataclass_fields__
    config = EvaluatorConfig(**{k: tuple(v) if k == "widths" else v
                                for k, v in raw.items() if k in fields})
    model = Evaluator(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval().requires_grad_(False)
