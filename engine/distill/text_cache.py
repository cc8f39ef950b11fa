"""Caption embeddings for training, computed once and kept: the trainer asks for ~5 batches
of captions a step, mostly repeats of a few thousand prompts."""

from __future__ import annotations

import torch

from engine.pipeline.cache import LruCache
from engine.runtime.text import TextEmbedding, TextEncoder


class CaptionEmbeddings:
    """Least-recently-used store of per-caption embeddings, float32 on the training device.

    A caption of the prompt table is encoded together with its fixed chunk of the table
    (`chunk` prompts), any other caption on its own; so a caption's numbers never depend on
    which batch first asked for it, and a resumed run, whose store starts empty, computes
    the same embeddings as the run it continues."""

    def __init__(self, text_encoder: TextEncoder, device: torch.device | str,
                 table: list[str] = (), chunk: int = 64, capacity: int = 8192):
        if capacity < chunk or chunk < 1:
            raise ValueError("need 1 <= chunk <= capacity")
        self.text_encoder, self.device = text_encoder, device
        self.table, self.chunk = list(table), chunk
        self.position = {}
        for index, caption in enumerate(self.table):
            self.position.setdefault(caption, index)
        self.entries = LruCache(capacity)
        self.batches = 0  # encoder calls so far

    def __len__(self) -> int:
        return len(self.entries)

    def _encode(self, captions: list[str]) -> None:
        with torch.no_grad():
            embedded = self.text_encoder.encode(captions).to(self.device, torch.float32)
        self.batches += 1
        for row, caption in enumerate(captions):
            self.entries.put(caption, TextEmbedding(embedded.token_states[row:row + 1].clone(),
                                                    embedded.pooled[row:row + 1].clone()))

    def one(self, caption: str) -> TextEmbedding:
        entry = self.entries.get(caption)
        if entry is None:
            index = self.position.get(caption)
            if index is None:
                self._encode([caption])
            else:
                start = index - index % self.chunk
                self._encode(list(dict.fromkeys(self.table[start:start + self.chunk])))
            entry = self.entries.get(caption)
        return entry

    def __call__(self, captions: list[str]) -> TextEmbedding:
        return TextEmbedding.cat([self.one(caption) for caption in captions])
