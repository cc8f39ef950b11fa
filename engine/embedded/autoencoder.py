"""Tiny 8x autoencoder (diffusers AutoencoderTiny, TAESD-style) for the emoji model.

128x128x3 in [-1, 1] <-> 16x16x4. Trained on 64 px crops with L1 + MSE + an image-gradient
L1 (edges stay sharp) + a tiny latent L2, optionally plus an adversarial term
(engine/embedded/decoder_gan.py); scaling_factor = 1 / std of the training latents.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.embedded import checkpoint as ckpt
from engine.embedded.atomic import atomic_save_folder
from engine.embedded.dataset import EmojiDataset
from engine.embedded.decoder_gan import (
    DISCRIMINATOR_LR,
    PatchDiscriminator,
    discriminator_hinge_loss,
    generator_hinge_loss,
    sharpness,
)


def build_autoencoder(channels: int = 32, latent_channels: int = 4,
                      decoder_channels: int | None = None):
    """AutoencoderTiny with one block per level (3 downsamplings: 8x); every encoder block has
    `channels` and every decoder block `decoder_channels` (default the same), as diffusers'
    AutoencoderTiny needs equal channels within each half."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        encoder_block_out_channels=(channels,) * 4,
        decoder_block_out_channels=(decoder_channels or channels,) * 4,
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=latent_channels,
    )


def load_autoencoder(folder: Path, device="cpu", dtype=torch.float32):
    import diffusers
    from diffusers import AutoencoderTiny

    diffusers.utils.logging.set_verbosity_error()
    return AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype).to(device).eval()


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (or NHW grey) -> float NCHW in [-1, 1]."""
    if images_uint8.dim() == 3:
        images_uint8 = images_uint8.unsqueeze(-1).expand(-1, -1, -1, 3)
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    scaled = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_gradient_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences (an edge loss)."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(prediction), dx(target)) + F.l1_loss(dy(prediction), dy(target))


def reconstruction_loss(ae, images: torch.Tensor, latent_weight: float = 1e-4,
                        edge_weight: float = 0.5
                        ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """(loss, its parts, the reconstruction)."""
    latents = ae.encode(images).latents
    recon = ae.decode(latents).sample
    l1 = F.l1_loss(recon, images)
    mse = F.mse_loss(recon, images)
    edge = image_gradient_l1(recon, images)
    latent_l2 = latents.pow(2).mean()
    loss = l1 + mse + edge_weight * edge + latent_weight * latent_l2
    logs = {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "edge": edge.item()}
    return loss, logs, recon


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (reference.float() - estimate.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean())


@torch.no_grad()
def reconstruct(ae, images_uint8: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The autoencoder's reconstructions of uint8 NHWC images: float NCHW in [-1, 1], CPU."""
    ae.eval()
    device = next(ae.parameters()).device
    chunks = [ae.decode(ae.encode(to_model_range(chunk).to(device)).latents).sample.float().cpu()
              for chunk in images_uint8.split(batch)]
    ae.train()
    return torch.cat(chunks)


def evaluate_reconstructions(ae, images_uint8: torch.Tensor) -> tuple[float, float]:
    """(mean PSNR in dB, sharpness: Laplacian energy relative to the images') of the
    reconstructions of held-out images."""
    recon = reconstruct(ae, images_uint8)
    return (psnr(to_model_range(images_uint8), recon),
            sharpness(to_uint8(recon), images_uint8.numpy()))


@torch.no_grad()
def encode_images(ae, images_uint8: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Raw (unscaled) latents of uint8 images (NHWC RGB or NHW grey), float32 on CPU."""
    device = next(ae.parameters()).device
    dtype = next(ae.parameters()).dtype
    out = []
    for start in range(0, len(images_uint8), batch):
        x = to_model_range(images_uint8[start:start + batch]).to(device=device, dtype=dtype)
        out.append(ae.encode(x).latents.float().cpu())
    return torch.cat(out)


def decode_ms(ae, repeats: int = 20) -> float:
    """Median wall-clock ms of one batch-1 decode of a 16x16 latent."""
    z = torch.randn(1, ae.config.latent_channels, 16, 16, dtype=next(ae.parameters()).dtype)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 3):
            start = time.perf_counter()
            ae.decode(z)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[3:]))


@torch.no_grad()
def reconstruction_grid(ae, images_uint8: torch.Tensor, count: int = 8) -> np.ndarray:
    """Two rows: originals, then their reconstructions (uint8 HxWx3)."""
    picks = images_uint8[torch.linspace(0, len(images_uint8) - 1, count).round().long()]
    x = to_model_range(picks).to(next(ae.parameters()).device)
    recon = to_uint8(ae.decode(ae.encode(x).latents).sample)
    originals = picks.numpy() if picks.dim() == 4 else to_uint8(to_model_range(picks))
    return np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(recon), 1)])


class AutoencoderTrainer:
    """AdamW + warm-up/cosine LR on random 8-aligned crops of images and sketches."""

    def __init__(self, data: EmojiDataset, channels: int = 32, lr: float = 1e-3,
                 total_steps: int = 10000, batch: int = 32, crop: int = 64,
                 sketch_fraction: float = 0.2, seed: int = 0, device: str = "cpu",
                 decoder_channels: int | None = None, frozen_encoder: Path | None = None,
                 adversarial_weight: float = 0.0, discriminator_lr: float = DISCRIMINATOR_LR):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.fixed_scale = None
        if frozen_encoder is not None:
            source = load_autoencoder(frozen_encoder)
            channels = int(source.config.encoder_block_out_channels[0])
            self.ae = build_autoencoder(channels, int(source.config.latent_channels),
                                        decoder_channels)
            self.adopt_encoder(source)
        else:
            self.ae = build_autoencoder(channels, decoder_channels=decoder_channels)
        self.ae.to(self.device).train()
        self.config = {"channels": channels, "lr": lr, "total_steps": total_steps, "batch": batch,
                       "crop": crop, "sketch_fraction": sketch_fraction, "seed": seed,
                       "decoder_channels": decoder_channels or channels,
                       "frozen_encoder": str(frozen_encoder) if frozen_encoder else None,
                       "adversarial_weight": adversarial_weight,
                       "discriminator_lr": discriminator_lr}
        train = ~data.heldout
        self.images = torch.from_numpy(data.images[train])
        self.sketches = torch.from_numpy(data.sketches[train])
        self.heldout = torch.from_numpy(data.images[data.heldout])
        trainable = [p for p in self.ae.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
        warmup = min(200, max(total_steps // 20, 1))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.discriminator = self.discriminator_optimizer = None
        if adversarial_weight > 0:
            self.discriminator = PatchDiscriminator().to(self.device).train()
            self.discriminator_optimizer = torch.optim.AdamW(
                self.discriminator.parameters(), lr=discriminator_lr, betas=(0.5, 0.999),
                weight_decay=0.0)

    def adopt_encoder(self, source) -> None:
        """Copy and freeze source's encoder (and its scaling_factor), so the latent space that
        teachers were trained on stays; a decoder of the same width starts from source's."""
        self.ae.encoder.load_state_dict(source.encoder.state_dict())
        self.ae.encoder.requires_grad_(False)
        if (list(source.config.decoder_block_out_channels)
                == list(self.ae.config.decoder_block_out_channels)):
            self.ae.decoder.load_state_dict(source.decoder.state_dict())
        self.fixed_scale = float(source.config.scaling_factor)

    def sample_batch(self) -> torch.Tensor:
        batch, crop = self.config["batch"], self.config["crop"]
        g = self.generator
        n_sketch = int(round(batch * self.config["sketch_fraction"]))
        image_ids = torch.randint(len(self.images), (batch - n_sketch,), generator=g)
        sketch_ids = torch.randint(len(self.sketches), (n_sketch,), generator=g)
        full = torch.cat([to_model_range(self.images[image_ids]),
                          to_model_range(self.sketches[sketch_ids])])
        size = full.shape[-1]
        if crop >= size:
            return full.to(self.device)
        slots = (size - crop) // 8 + 1
        offsets = torch.randint(slots, (len(full), 2), generator=g) * 8
        pairs = zip(full, offsets.tolist(), strict=True)
        crops = [img[:, y:y + crop, x:x + crop] for img, (y, x) in pairs]
        return torch.stack(crops).to(self.device)

    def train_step(self) -> dict[str, float]:
        """One decoder/autoencoder step; with an adversarial weight, the reconstruction
        loss plus weight x the hinge generator loss, then one discriminator step."""
        images = self.sample_batch()
        loss, logs, recon = reconstruction_loss(self.ae, images)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
            adversarial = generator_hinge_loss(self.discriminator(recon))
            loss = loss + self.config["adversarial_weight"] * adversarial
            logs.update(loss=loss.item(), adversarial=adversarial.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 1.0)
        self.optimizer.step()
        self.scheduler.step()
        if self.discriminator is not None:
            logs["discriminator"] = self._discriminator_step(images, recon.detach())
        self.step += 1
        return {**logs, "lr": self.scheduler.get_last_lr()[0]}

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        self.discriminator.requires_grad_(True)
        loss = discriminator_hinge_loss(self.discriminator(real), self.discriminator(fake))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return loss.item()

    def save(self, run_dir: Path, keep: int = 2) -> Path:
        weights = self.ae.state_dict()
        opt_tensors, param_groups = ckpt.flatten_optimizer(self.optimizer)
        state_tensors = {**ckpt.prefixed("model", weights), **opt_tensors, **ckpt.rng_tensors(),
                         "rng.generator": self.generator.get_state()}
        if self.discriminator is not None:
            disc_tensors, disc_groups = ckpt.flatten_optimizer(self.discriminator_optimizer)
            state_tensors.update(ckpt.prefixed("disc.model", self.discriminator.state_dict()))
            state_tensors.update(ckpt.prefixed("disc", disc_tensors))
        state = {"param_groups": param_groups, "scheduler": self.scheduler.state_dict(),
                 "config": self.config}
        if self.discriminator is not None:
            state["disc_param_groups"] = disc_groups
        return ckpt.save_checkpoint(run_dir, self.step, weights, state_tensors, state, keep)

    def resume(self, checkpoint_dir: Path) -> None:
        state, tensors = ckpt.load_checkpoint(checkpoint_dir)
        self.ae.load_state_dict(ckpt.unprefixed("model", tensors))
        ckpt.restore_optimizer(self.optimizer, tensors, state["param_groups"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.restore_rng(tensors)
        self.generator.set_state(tensors["rng.generator"])
        self.step = int(state["step"])
        if self.discriminator is not None and "disc_param_groups" in state:
            disc = ckpt.unprefixed("disc", tensors)
            self.discriminator.load_state_dict(ckpt.unprefixed("model", disc))
            ckpt.restore_optimizer(self.discriminator_optimizer, disc,
                                   state["disc_param_groups"])

    def export(self, out: Path, all_images: torch.Tensor) -> dict:
        """Save a diffusers vae folder with scaling_factor = 1 / std of the training latents
        (a frozen encoder keeps its own)."""
        self.ae.eval()
        latents = encode_images(self.ae, all_images)
        std, mean = float(latents.std()), float(latents.mean())
        self.ae.register_to_config(scaling_factor=self.fixed_scale or 1.0 / std)
        atomic_save_folder(Path(out), lambda tmp: self.ae.save_pretrained(
            str(tmp), safe_serialization=True))
        self.ae.train()
        info = {"step": self.step, "latent_std": std, "latent_mean": mean,
                "scaling_factor": float(self.ae.config.scaling_factor),
                "decoder_channels": self.config["decoder_channels"],
                "frozen_encoder": self.config["frozen_encoder"]}
        (Path(out) / "training.json").write_text(json.dumps(info, indent=1) + "\n")
        return info
