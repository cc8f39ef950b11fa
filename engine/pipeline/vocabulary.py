"""A model's vocabulary: the prompts it was trained on, as sentence vectors, so that a prompt
typed in other words is drawn as the trained prompt nearest in meaning.

The embedded model knows 1,904 emoji by their names; "a crunchy beef taco" or "a bowl of hot
soup" are not among them, but the model's own sentence encoder (MiniLM, trained for
semantic similarity) places them next to "taco" and "steaming bowl". A model folder that
ships vocabulary.safetensors (pooled text vectors of its training prompts, L2-normalised,
and the prompt each one stands for) gets this matching; other models draw prompts as typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

VOCABULARY_FILE = "vocabulary.safetensors"
MIN_SIMILARITY = 0.6  # cosine below which a prompt is drawn as typed (keyboard noise
# such as "asdfgh" reaches 0.55 with MiniLM; "a red car" -> "automobile" 0.62)


@dataclass(frozen=True)
class Match:
    """What a prompt is drawn as: the vocabulary entry nearest to it and the prompt it stands
    for, with their cosine similarity."""

    entry: str
    prompt: str
    similarity: float


class PromptVocabulary:
    """Nearest-entry lookup over a model's training prompts by pooled-text cosine."""

    def __init__(self, vectors: torch.Tensor, entries: list[str], prompts: list[str]):
        if not len(entries) == len(prompts) == vectors.shape[0]:
            raise ValueError("the vocabulary's vectors, entries and prompts differ in length")
        self.vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        self.entries, self.prompts = entries, prompts
        self.stands_for = dict(zip(entries, prompts, strict=True))

    def match(self, prompt: str, pooled: torch.Tensor) -> Match | None:
        """What prompt is drawn as (pooled: its (D,) or (1, D) sentence vector): an entry's
        own prompt when it is an entry, else the nearest entry's; None when it is drawn as
        typed (empty, a training prompt itself, or nothing reaches MIN_SIMILARITY)."""
        if not prompt.strip():
            return None
        if prompt in self.stands_for:
            target = self.stands_for[prompt]
            return None if target == prompt else Match(prompt, target, 1.0)
        query = torch.nn.functional.normalize(pooled.reshape(1, -1).float().cpu(), dim=-1)
        if query.shape[1] != self.vectors.shape[1]:
            return None  # another text encoder's vectors: nothing to compare
        similarity, index = (self.vectors @ query[0]).max(dim=0)
        if float(similarity) < MIN_SIMILARITY:
            return None
        return Match(self.entries[int(index)], self.prompts[int(index)], float(similarity))


def load_vocabulary(model_dir: str | Path | None) -> PromptVocabulary | None:
    """The model folder's vocabulary, None when it has none (or it cannot be read)."""
    from safetensors import safe_open

    path = Path(str(model_dir)) / VOCABULARY_FILE if model_dir else None
    if path is None or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            vectors = file.get_tensor("vectors")
            metadata = file.metadata() or {}
        return PromptVocabulary(vectors, json.loads(metadata["entries"]),
                                json.loads(metadata["prompts"]))
    except Exception:  # noqa: BLE001 - safetensors reports damage with its own error type
        return None  # a damaged vocabulary only turns the matching off


def vocabulary_pairs(captions: list[str], table: dict) -> list[tuple[str, str]]:
    """(entry, prompt) pairs: every caption as itself, then every name and keyword of its
    emoji (engine.embedded.phrases table) standing for its first caption; a text that
    would stand for two emoji is left out."""
    from engine.embedded.dataset import base_caption

    pairs = {caption: caption for caption in captions}
    targets: dict[str, set[str]] = {}
    for caption in captions:
        entry = table.get(base_caption(caption))
        if entry is None:
            continue
        for text in (*entry.names, *entry.keywords):
            targets.setdefault(text, set()).add(base_caption(caption))
    first_caption = {}
    for caption in captions:
        first_caption.setdefault(base_caption(caption), caption)
    for text, bases in targets.items():
        if text not in pairs and len(bases) == 1:
            pairs[text] = first_caption[next(iter(bases))]
    return list(pairs.items())


def write_vocabulary(path: Path, pairs: list[tuple[str, str]], encode) -> int:
    """Write VOCABULARY_FILE at path (atomically: a temporary file renamed over it):
    encode(texts) -> (N, D) pooled vectors; returns N."""
    import os

    from safetensors.torch import save_file

    entries = [entry for entry, _ in pairs]
    vectors = torch.nn.functional.normalize(encode(entries).float(), dim=-1)
    metadata = {"entries": json.dumps(entries, ensure_ascii=False),
                "prompts": json.dumps([prompt for _, prompt in pairs], ensure_ascii=False)}
    temporary = Path(path).with_name(f".{Path(path).name}.tmp")
    try:
        save_file({"vectors": vectors.half().contiguous()}, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(entries)
