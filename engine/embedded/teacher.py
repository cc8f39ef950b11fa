"""Embedded teacher: a small text+sketch conditioned UNet2DConditionModel on AE latents.

Epsilon prediction on SD's scaled-linear schedule (DDPM, Ho et al. 2020, eq. 14) with
min-SNR-gamma loss weighting (Hang et al. 2023), classifier-free dropout of the text and
of the sketch latent (Ho & Salimans 2022), EMA weights for sampling and export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.diffusion.schedule import NoiseSchedule
from engine.embedded import checkpoint as ckpt
from engine.embedded.latents import LatentCache

SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}


def build_teacher_unet(block_out_channels: tuple[int, ...] = (64, 128, 256),
                       layers_per_block: int = 1, text_dim: int = 384, latent_channels: int = 4,
                       sketch_channels: int = 4, sample_size: int = 16, heads: int = 8,
                       norm_groups: int = 32):
    """UNet2DConditionModel: attention at all but the top level, pooled text as class embedding."""
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels + sketch_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        cross_attention_dim=text_dim,
        attention_head_dim=heads,
        norm_num_groups=norm_groups,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=text_dim,
    )


def min_snr_weights(abar: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample eps-loss weight min(SNR, gamma) / SNR, SNR = abar / (1 - abar) (Min-SNR)."""
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=gamma) / snr


@dataclass
class TeacherConfig:
    """Hyper-parameters of a teacher run (stored in config.json and in every checkpoint)."""

    batch: int = 32
    lr: float = 5e-4
    warmup: int = 500
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    sketch_dropout: float = 0.5
    snr_gamma: float = 5.0
    dedupe_steps: int = 3000  # skin-tone variants are left out before this step
    caption_share: float = 0.3  # share of examples captioned by the plain name, not a phrasing
    include_heldout: bool = False  # train on the held-out split too (a model to ship)
    block_out_channels: tuple[int, ...] = (64, 128, 256)
    layers_per_block: int = 1
    seed: int = 0


class TeacherTrainer:
    """One optimisation step at a time on pre-encoded latents and phrasing embeddings.

    Everything a step reads lives on the training device and every random draw comes from a
    generator there, so a GPU step has no host transfer and no host sync (train_step returns
    tensors; read them only when logging).
    """

    def __init__(self, cache: LatentCache, config: TeacherConfig, device: str = "cpu"):
        torch.manual_seed(config.seed)
        self.cache = cache
        self.config = config
        self.device = torch.device(device)
        self.unet = build_teacher_unet(tuple(config.block_out_channels), config.layers_per_block,
                                       text_dim=cache.token_states.shape[-1]).to(self.device)
        self.unet.train()
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.schedule = NoiseSchedule.from_config(SCHEDULER_CONFIG)
        cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, fused=cuda or None)
        warmup = max(config.warmup, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min((step + 1) / warmup, 1.0))
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.step = 0
        train = torch.ones_like(cache.heldout) if config.include_heldout else ~cache.heldout
        on = {"device": self.device}
        self.train_ids = torch.nonzero(train).flatten().to(**on)
        self.unique_ids = torch.nonzero(train & ~cache.variant).flatten().to(**on)
        self.data = {"latents": cache.latents.float().to(**on),
                     "sketches": cache.sketch_latents.float().to(**on),
                     "tokens": cache.token_states.to(**on),
                     "pooled": cache.pooled.float().to(**on),
                     "null_tokens": cache.null_token_states.to(**on),
                     "null_pooled": cache.null_pooled.float().to(**on),
                     "phrase_start": cache.phrase_start.to(**on),
                     "phrase_count": cache.phrase_count.to(**on),
                     "abar": self.schedule.alphas_cumprod.float().to(**on)}
        self.amp = cuda

    def sample_ids(self) -> torch.Tensor:
        pool = self.unique_ids if self.step < self.config.dedupe_steps else self.train_ids
        picks = torch.randint(len(pool), (self.config.batch,), generator=self.generator,
                              device=self.device)
        return pool[picks]

    def phrase_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """A phrasing per image: its caption with probability caption_share, else any of its
        phrasings (the caption included) uniformly."""
        g, data = self.generator, self.data
        count = data["phrase_count"][ids]
        draw = torch.rand(len(ids), generator=g, device=self.device)
        offset = (torch.rand(len(ids), generator=g, device=self.device) * count).long()
        offset = torch.where(draw < self.config.caption_share, 0, offset.clamp(max=count - 1))
        return data["phrase_start"][ids] + offset

    def make_batch(self) -> dict[str, torch.Tensor]:
        """Noisy latents, conditioning (with CFG dropout), targets and loss weights."""
        g, batch, data, on = self.generator, self.config.batch, self.data, self.device
        ids = self.sample_ids()
        rows = self.phrase_rows(ids)
        x0 = data["latents"][ids]
        noise = torch.randn(x0.shape, generator=g, device=on)
        t = torch.randint(self.schedule.num_train_timesteps, (batch,), generator=g, device=on)
        drop_text = (torch.rand(batch, generator=g, device=on) < self.config.text_dropout)
        keep_sketch = torch.rand(batch, generator=g, device=on) >= self.config.sketch_dropout
        tokens = torch.where(drop_text.view(-1, 1, 1), data["null_tokens"],
                             data["tokens"][rows]).float()
        pooled = torch.where(drop_text.view(-1, 1), data["null_pooled"], data["pooled"][rows])
        sketch = data["sketches"][ids] * keep_sketch.float().view(-1, 1, 1, 1)
        abar = data["abar"][t]
        x_t = abar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar).sqrt().view(-1, 1, 1, 1) * noise
        return {"sample": torch.cat([x_t, sketch], 1), "t": t, "tokens": tokens,
                "pooled": pooled, "target": noise,
                "weight": min_snr_weights(abar, self.config.snr_gamma)}

    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One AdamW step; losses and the gradient norm stay tensors (no host sync)."""
        batch = self.make_batch()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            prediction = self.unet(batch["sample"], batch["t"], batch["tokens"],
                                   class_labels=batch["pooled"]).sample
        squared = F.mse_loss(prediction.float(), batch["target"], reduction="none")
        per_sample = squared.mean((1, 2, 3))
        loss = (per_sample * batch["weight"]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.update_ema()
        self.step += 1
        return {"loss": loss.detach(), "mse": per_sample.mean().detach(),
                "grad_norm": grad_norm.detach(), "lr": self.scheduler.get_last_lr()[0]}

    def init_from(self, unet_dir) -> None:
        """Start the weights and their average from a model folder's unet/ (same shape)."""
        from diffusers import UNet2DConditionModel

        source = UNet2DConditionModel.from_pretrained(str(unet_dir))
        state = {k: v.float() for k, v in source.state_dict().items()}
        self.unet.load_state_dict(state)
        self.ema.load_state_dict(state)

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA with the usual warm-up: decay = min(ema_decay, (1 + n) / (10 + n))."""
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.ema.parameters()),
                             [p.detach() for p in self.unet.parameters()], 1 - decay)

    def save(self, run_dir, keep: int = 2):
        opt_tensors, param_groups = ckpt.flatten_optimizer(self.optimizer)
        state_tensors = {**ckpt.prefixed("model", self.unet.state_dict()),
                         **ckpt.prefixed("ema", self.ema.state_dict()), **opt_tensors,
                         **ckpt.rng_tensors(), "rng.generator": self.generator.get_state()}
        state = {"param_groups": param_groups, "scheduler": self.scheduler.state_dict(),
                 "config": {**self.config.__dict__,
                            "block_out_channels": list(self.config.block_out_channels)}}
        return ckpt.save_checkpoint(run_dir, self.step, self.ema.state_dict(), state_tensors,
                                    state, keep)

    def resume(self, checkpoint_dir) -> None:
        state, tensors = ckpt.load_checkpoint(checkpoint_dir)
        self.unet.load_state_dict(ckpt.unprefixed("model", tensors))
        self.ema.load_state_dict(ckpt.unprefixed("ema", tensors))
        ckpt.restore_optimizer(self.optimizer, tensors, state["param_groups"])
        for group in self.optimizer.param_groups:  # a new --lr applies after resume
            group["initial_lr"] = self.config.lr
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [self.config.lr for _ in self.scheduler.base_lrs]
        ckpt.restore_rng(tensors)
        self.generator.set_state(tensors["rng.generator"])
        self.step = int(state["step"])


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cfg_x0_function(unet, schedule: NoiseSchedule, tokens: torch.Tensor, pooled: torch.Tensor,
                    null_tokens: torch.Tensor, null_pooled: torch.Tensor, sketch: torch.Tensor,
                    guidance: float):
    """x0(x_t, t) with classifier-free guidance on text (Ho & Salimans 2022, eq. 6)."""
    batch = tokens.shape[0]

    def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
        timesteps = torch.full((2 * batch,), int(t), dtype=torch.long, device=x_t.device)
        sample = torch.cat([x_t, sketch], 1).repeat(2, 1, 1, 1)
        states = torch.cat([tokens, null_tokens.expand_as(tokens)])
        labels = torch.cat([pooled, null_pooled.expand_as(pooled)])
        eps_cond, eps_uncond = unet(sample, timesteps, states, class_labels=labels).sample.chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        return schedule.to_x0(eps, x_t, timesteps[:batch])

    return x0_fn


@torch.no_grad()
def sample_latents(unet, schedule: NoiseSchedule, cache: LatentCache, ids: torch.Tensor,
                   steps: int = 25, guidance: float = 4.0, use_sketch: bool = False,
                   seed: int = 0) -> torch.Tensor:
    """DDIM (trailing spacing) + CFG latents for cached captions (and their sketches)."""
    from engine.diffusion.sampling import ddim_sample
    from engine.diffusion.schedule import ddim_timesteps

    device = next(unet.parameters()).device
    rows = cache.caption_rows(ids)
    tokens = cache.token_states[rows].float().to(device)
    pooled = cache.pooled[rows].float().to(device)
    sketch = cache.sketch_latents[ids].to(device)
    if not use_sketch:
        sketch = torch.zeros_like(sketch)
    noise = torch.randn(cache.latents[ids].shape, generator=torch.Generator().manual_seed(seed))
    null_tokens = cache.null_token_states.float().to(device)
    null_pooled = cache.null_pooled.float().to(device)
    x0_fn = cfg_x0_function(unet, schedule, tokens, pooled, null_tokens, null_pooled, sketch,
                            guidance)
    return ddim_sample(x0_fn, noise.to(device), ddim_timesteps(steps), schedule)

