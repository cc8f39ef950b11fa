"""A small least-recently-used cache, for prompts' embeddings, latents and control maps."""

from __future__ import annotations

from collections import OrderedDict


class LruCache:
    """A small bounded mapping; the least recently used entry goes first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict = OrderedDict()

    def get(self, key):
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key, value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)  # keys, least recently used first
