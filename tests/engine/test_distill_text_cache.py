"""The trainer's caption store: each caption is encoded once, with a fixed chunk of the
prompt table (or alone), and kept."""

import pytest
import torch

from engine.distill.text_cache import CaptionEmbeddings
from engine.runtime.text import TextEmbedding


class CountingEncoder:
    """Embeds a caption as its length and first character code; records every batch."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def encode(self, prompts):
        self.batches.append(list(prompts))
        values = torch.tensor([[len(p), ord(p[0]) if p else 0] for p in prompts],
                              dtype=torch.float64)
        return TextEmbedding(values[:, None, :].repeat(1, 3, 1), values)


def test_table_captions_are_encoded_with_their_chunk_others_alone_each_once():
    encoder = CountingEncoder()
    table = ["ant", "bee", "cat", "dog", "eel"]
    captions = CaptionEmbeddings(encoder, "cpu", table, chunk=2)
    first = captions(["cat", "zebra", "dog", "cat", ""])
    again = captions(["dog", "cat", "eel"])
    assert encoder.batches == [["cat", "dog"], ["zebra"], [""], ["eel"]]
    assert captions.batches == 4 and len(captions) == 5
    assert first.pooled.dtype == torch.float32 and first.token_states.shape == (5, 3, 2)
    assert first.pooled.tolist() == [[3, 99], [5, 122], [3, 100], [3, 99], [0, 0]]
    assert torch.equal(again.token_states[:2], first.token_states[[2, 0]])


def test_a_caption_gets_the_same_numbers_whichever_batch_asked_first():
    table = [f"caption {i}" for i in range(10)]
    one = CaptionEmbeddings(CountingEncoder(), "cpu", table, chunk=4)
    two = CaptionEmbeddings(CountingEncoder(), "cpu", table, chunk=4)
    one(["caption 5"])
    two(["caption 6", "caption 1"])
    assert one.text_encoder.batches == [table[4:8]]
    assert two.text_encoder.batches == [table[4:8], table[0:4]]


def test_the_least_recently_used_caption_is_dropped_past_capacity():
    encoder = CountingEncoder()
    captions = CaptionEmbeddings(encoder, "cpu", capacity=2, chunk=1)
    captions(["a", "b"])
    captions(["a"])  # "b" is now the oldest
    captions(["c"])
    assert list(captions.entries) == ["a", "c"]
    captions(["c", "b"])  # "b" comes back and pushes out "a"
    assert encoder.batches == [["a"], ["b"], ["c"], ["b"]]
    assert list(captions.entries) == ["c", "b"]
    with pytest.raises(ValueError):
        CaptionEmbeddings(encoder, "cpu", chunk=4, capacity=2)
