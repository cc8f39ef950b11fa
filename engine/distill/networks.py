"""The three DMD networks around a UNet2DConditionModel: call conventions, GAN head, LoRA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from engine.diffusion.guidance import cfg_x0
from engine.diffusion.schedule import NoiseSchedule
from engine.runtime.sdxl import pooled_text_kwargs, uses_pooled_text
from engine.runtime.text import TextEmbedding


class ScoreNetwork(nn.Module):
    """A UNet called the way the engine calls it (pipeline/generator.py): conditioning
    channels concatenated after the noisy latent (zeros without a sketch), pooled text as
    class_labels when the UNet has a projection class embedding, or with SDXL's size/crop
    time ids as added_cond_kwargs (engine.runtime.sdxl)."""

    def __init__(self, unet: nn.Module, latent_channels: int,
                 time_ids: torch.Tensor | None = None):
        super().__init__()
        self.unet = unet
        self.latent_channels = latent_channels
        self.conditioning_channels = int(unet.config.in_channels) - latent_channels
        self.uses_pooled_text = uses_pooled_text(unet)
        # (1, 6) SDXL micro-conditioning; a buffer so it follows .to(device), not saved
        self.register_buffer("time_ids", None if time_ids is None else time_ids.float(),
                             persistent=False)

    def unet_inputs(self, x_t: torch.Tensor, token_states: torch.Tensor, pooled: torch.Tensor,
                    conditioning: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        dtype = self.unet.dtype
        if self.conditioning_channels:
            if conditioning is None:
                shape = (x_t.shape[0], self.conditioning_channels, *x_t.shape[2:])
                conditioning = torch.zeros(shape, device=x_t.device, dtype=x_t.dtype)
            x_t = torch.cat([x_t, conditioning.to(x_t)], dim=1)
        extra = pooled_text_kwargs(self.unet, pooled.to(x_t.device, dtype), self.time_ids) \
            if self.uses_pooled_text else {}
        return x_t.to(dtype), {"encoder_hidden_states": token_states.to(dtype), **extra}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, token_states: torch.Tensor,
                pooled: torch.Tensor, conditioning: torch.Tensor | None = None) -> torch.Tensor:
        x_in, kwargs = self.unet_inputs(x_t, token_states, pooled, conditioning)
        return self.unet(x_in, t.to(x_t.device), **kwargs).sample


def group_count(channels: int, preferred: int = 32) -> int:
    """The largest group count <= preferred that divides channels (GroupNorm)."""
    return math.gcd(channels, preferred)


class GanClassifierHead(nn.Module):
    """DMD2 sec. 4.3 classifier on the critic's mid-block features:
    Conv4x4 s2 -> GN -> SiLU -> Conv4x4 s4 -> GN -> SiLU -> Conv1x1 -> 1 logit.

    Kernels and strides shrink to fit small bottlenecks (a 16x16 latent has a 4x4 mid-block:
    Conv4x4 s2 p1 -> 2x2 -> Conv2x2 s2 -> 1x1); any logits left on a grid are averaged.
    """

    def __init__(self, channels: int, feature_size: int):
        super().__init__()
        if feature_size >= 2:
            first = nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1)
            size = (feature_size - 2) // 2 + 1  # (S + 2 - 4) // 2 + 1
        else:
            first = nn.Conv2d(channels, channels, kernel_size=1)
            size = feature_size
        second_kernel = max(1, min(4, size))
        self.layers = nn.Sequential(
            first,
            nn.GroupNorm(group_count(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=second_kernel, stride=second_kernel),
            nn.GroupNorm(group_count(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.layers(features.float())  # (B, 1, h, w), 1x1 when the strides fit
        return logits.mean(dim=(1, 2, 3))  # (B,)


class CriticNetwork(ScoreNetwork):
    """The fake score: a trainable copy of the teacher UNet, plus the GAN head (DMD2) that
    reads unet.mid_block's output through a forward hook on the same forward pass."""

    def __init__(self, unet: nn.Module, latent_channels: int, with_gan_head: bool,
                 time_ids: torch.Tensor | None = None):
        super().__init__(unet, latent_channels, time_ids)
        self.mid_block_output: torch.Tensor | None = None
        self.gan_head: GanClassifierHead | None = None
        if with_gan_head:
            channels = int(unet.config.block_out_channels[-1])
            levels = len(unet.config.block_out_channels) - 1
            feature_size = max(1, int(unet.config.sample_size) // 2**levels)
            self.gan_head = GanClassifierHead(channels, feature_size)
            unet.mid_block.register_forward_hook(self.capture_mid_block)

    def capture_mid_block(self, module: nn.Module, inputs, output) -> None:
        self.mid_block_output = output[0] if isinstance(output, tuple) else output

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, token_states: torch.Tensor,
                pooled: torch.Tensor, conditioning: torch.Tensor | None = None,
                with_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.mid_block_output = None
        output = super().forward(x_t, t, token_states, pooled, conditioning)
        if not with_logits:
            return output, None
        if self.gan_head is None or self.mid_block_output is None:
            raise RuntimeError("the critic has no GAN head")
        return output, self.gan_head(self.mid_block_output)


# -- denoisers in x0 space -------------------------------------------------------------------
def x0_function(network: nn.Module, schedule: NoiseSchedule, text: TextEmbedding,
                conditioning: torch.Tensor | None):
    """x0_fn(x_t, t) for a conditional network (fake score, student), float32 x0."""

    def x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = network(x_t, t, text.token_states, text.pooled, conditioning)
        output = output[0] if isinstance(output, tuple) else output
        return schedule.to_x0(output, x_t, t)

    return x0_fn


def cfg_x0_function(teacher: ScoreNetwork, schedule: NoiseSchedule, text: TextEmbedding,
                    uncond: TextEmbedding, conditioning: torch.Tensor | None, guidance: float):
    """The real score with classifier-free guidance (Ho & Salimans 2022) on eps, x0 in fp32.

    uncond is one embedding (batch 1), broadcast to the batch; the sketch conditioning is
    kept in both halves, as at generation time.
    """

    batch = text.token_states.shape[0]
    token_states = torch.cat([uncond.token_states.expand(batch, -1, -1), text.token_states])
    pooled = torch.cat([uncond.pooled.expand(batch, -1), text.pooled])
    cond_in = None if conditioning is None else torch.cat([conditioning, conditioning])

    def doubled(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        return teacher(x_in, t_in, token_states, pooled, cond_in)

    def x0_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cfg_x0(doubled, schedule, x_t, t, guidance)

    return x0_fn


# -- LoRA (peft) -----------------------------------------------------------------------------
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet: nn.Module, rank: int) -> None:
    """Freeze the UNet and add trainable LoRA adapters to its attention projections."""
    try:
        from peft import LoraConfig
    except ImportError as error:  # pragma: no cover - peft is a declared optional dependency
        from engine.api import EngineError

        raise EngineError("--lora-rank needs peft; run pip install peft.") from error
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=LORA_TARGETS))


def lora_layers(unet: nn.Module) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """{("unet", module path): (lora_A, lora_B)} of a UNet with peft LoRA adapters: the
    layers a standard LoRA file holds (engine.runtime.lora_files.write_lora_file)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {("unet", key.removesuffix(".lora_A.weight")):
            (value.float().cpu(), state[key.replace(".lora_A.", ".lora_B.")].float().cpu())
            for key, value in state.items() if key.endswith(".lora_A.weight")}


def merged_unet(unet: nn.Module) -> nn.Module:
    """A plain UNet2DConditionModel copy (CPU, fp32) with any LoRA adapters merged in."""
    from diffusers import UNet2DConditionModel

    source = copy.deepcopy(unet).to("cpu", torch.float32)
    has_lora = False
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        BaseTunerLayer = ()  # noqa: N806 - no peft, no adapters
    for module in source.modules():
        if BaseTunerLayer and isinstance(module, BaseTunerLayer):
            module.merge()
            has_lora = True
    if not has_lora:
        return source
    state = {}
    for key, value in source.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    plain = UNet2DConditionModel.from_config(dict(unet.config))
    plain.load_state_dict(state, strict=True)
    return plain
