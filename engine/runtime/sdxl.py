"""SDXL conditioning (Podell et al. 2023, "SDXL", sec. 2.1-2.2): two CLIP text encoders and
the size/crop micro-conditioning.

The UNet cross-attends to the penultimate hidden states of CLIP ViT-L and OpenCLIP ViT-bigG,
concatenated along the feature axis (768 + 1280 = 2048 in SDXL). Its added embedding takes
the second encoder's projected pooled text vector and six "time ids" (original height and
width, crop top and left, target height and width) that the engine sets to the square image
it renders, uncropped. The result keeps TextEmbedding's shape (token_states, pooled), so
callers do not know which family they run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.text import TextEmbedding, quiet_transformers


def uses_pooled_text(unet) -> bool:
    """Whether the UNet takes a pooled text vector (SD-style projection class embedding, or
    SDXL's text_time added embedding)."""
    config = unet.config
    return config.class_embed_type == "projection" or config.addition_embed_type == "text_time"


def size_time_ids(image_size: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """SDXL's micro-conditioning for a square, uncropped image: (1, 6) = (orig h, orig w,
    crop top, crop left, target h, target w) in pixels."""
    size = float(image_size)
    return torch.tensor([[size, size, 0.0, 0.0, size, size]], dtype=dtype, device=device)


def pooled_text_kwargs(unet, pooled: torch.Tensor | None,
                       time_ids: torch.Tensor | None) -> dict:
    """The UNet keyword arguments that carry the pooled text vector: class_labels for a
    projection class embedding, added_cond_kwargs (text_embeds + time_ids) for SDXL."""
    if pooled is None:
        return {}
    if unet.config.addition_embed_type == "text_time":
        if time_ids is None:
            raise ValueError("An SDXL UNet needs size time ids with its pooled text.")
        batch_ids = time_ids.to(pooled.dtype).expand(pooled.shape[0], -1)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": batch_ids}}
    if unet.config.class_embed_type == "projection":
        return {"class_labels": pooled}
    return {}


class DualTextEncoder:
    """SDXL's two CLIP encoders behind TextEncoder's interface: token states are both
    encoders' penultimate hidden states concatenated, pooled is the second's projection."""

    is_clip = True

    def __init__(self, tokenizers: tuple, models: tuple, zero_empty_prompt: bool = True):
        self.tokenizers = tokenizers
        self.models = tuple(model.eval().requires_grad_(False) for model in models)
        self.model = self.models[1]  # the one whose pooled output conditions the UNet
        self.tokenizer = tokenizers[0]
        self.max_length = int(min(tokenizer.model_max_length for tokenizer in tokenizers))
        # SDXL base's pipeline conditions an empty prompt (CFG's unconditional branch) on
        # zeros rather than on the encoders' output for "".
        self.zero_empty_prompt = zero_empty_prompt

    @property
    def hidden_size(self) -> int:
        return sum(int(model.config.hidden_size) for model in self.models)

    @property
    def pooled_size(self) -> int:
        return int(self.models[1].config.projection_dim)

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The first tokenizer's output (padded with <|endoftext|>), as TextEncoder.tokenize."""
        return self.tokenizers[0](prompts, padding="max_length", max_length=self.max_length,
                                  truncation=True, return_tensors="pt")

    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Each tokenizer's padded ids (the second pads with "!"): the input of encode_ids."""
        return tuple(tokenizer(prompts, padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")["input_ids"]
                     for tokenizer in self.tokenizers)

    def encode_ids(self, *token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states (B, T, D1 + D2), pooled (B, P)) from each tokenizer's ids."""
        states, pooled = [], None
        for model, ids in zip(self.models, token_ids, strict=True):
            output = model(input_ids=ids, output_hidden_states=True)
            states.append(output.hidden_states[-2])
            pooled = getattr(output, "text_embeds", None)
            if pooled is None:
                pooled = output.pooler_output
        return torch.cat(states, dim=-1), pooled

    def embedding(self, prompts: list[str], states: torch.Tensor,
                  pooled: torch.Tensor) -> TextEmbedding:
        """TextEmbedding of encode_ids' output, with empty prompts zeroed when asked."""
        if self.zero_empty_prompt:
            empty = torch.tensor([not prompt for prompt in prompts], device=states.device)
            if bool(empty.any()):
                keep = (~empty).to(states.dtype)
                states, pooled = states * keep[:, None, None], pooled * keep[:, None]
        return TextEmbedding(states, pooled)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        ids = tuple(ids.to(self.device) for ids in self.token_ids(prompts))
        return self.embedding(prompts, *self.encode_ids(*ids))

    def to(self, device) -> DualTextEncoder:
        for model in self.models:
            model.to(device)
        return self


def load_dual_text_encoder(model_dir: Path, device, dtype,
                           zero_empty_prompt: bool = True) -> DualTextEncoder:
    """text_encoder/ + tokenizer/ (CLIP-L) and text_encoder_2/ + tokenizer_2/ (CLIP-bigG with
    projection) of an SDXL folder."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    quiet_transformers()
    try:
        tokenizers = (CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer")),
                      CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer_2")))
        models = (CLIPTextModel.from_pretrained(str(model_dir / "text_encoder"), dtype=dtype),
                  CLIPTextModelWithProjection.from_pretrained(str(model_dir / "text_encoder_2"),
                                                              dtype=dtype))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not load the SDXL text encoders from {model_dir}: "
                             f"{str(error).splitlines()[0]}") from error
    return DualTextEncoder(tokenizers, models, zero_empty_prompt).to(device)
