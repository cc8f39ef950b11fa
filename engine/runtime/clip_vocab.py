"""CLIP's tokenizer, built offline from the byte-pair vocabulary shipped in assets/tokenizers.

CLIP (Radford et al. 2021) tokenizes with byte-level BPE: every byte is first mapped to a
printable character, so the vocabulary is the 256 byte characters, the same 256 with the
end-of-word marker "</w>", the first 48,894 merges of the shipped merge list and the two
special tokens: 49,408 ids. SD 1.x pads with <|endoftext|>; OpenCLIP (SD 2.x and SDXL's
second encoder) pads with "!".
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from engine.api import ModelLoadError
from engine.paths import ASSETS_ROOT

BPE_FILE = ASSETS_ROOT / "tokenizers" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # merges CLIP uses: 49,408 ids in all
VOCAB_SIZE = 2 * 256 + MERGE_COUNT + 2
MAX_TOKENS = 77
PAD_TOKENS = {"clip": "<|endoftext|>", "open_clip": "!"}


def byte_characters() -> list[str]:
    """The printable character standing for each byte 0..255 in byte-level BPE: printable
    Latin-1 bytes stand for themselves, the others take code points from 256 upwards."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[byte] = chr(byte)
        else:
            characters[byte] = chr(256 + extra)
            extra += 1
    return [characters[byte] for byte in range(256)]


def read_merges(bpe_file: Path = BPE_FILE) -> list[str]:
    """The merge rules CLIP uses ("a b" lines), in priority order."""
    try:
        lines = gzip.decompress(bpe_file.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError) as error:
        raise ModelLoadError(f"CLIP's vocabulary {bpe_file} is missing or damaged; reinstall "
                             "DMD Studio.") from error
    return lines[1:MERGE_COUNT + 1]  # line 0 is the file's version header


def clip_vocabulary(merges: list[str]) -> dict[str, int]:
    """Token -> id in CLIP's order: bytes, bytes + "</w>", merges, then the two specials."""
    bytes_ = sorted(byte_characters())  # CLIP's order: printable bytes first, then the rest
    tokens = [*bytes_, *(character + "</w>" for character in bytes_),
              *(merge.replace(" ", "") for merge in merges), "<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


@functools.lru_cache(maxsize=1)
def vocabulary_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's vocabulary and merge rules, read once per process."""
    merges = read_merges()
    return clip_vocabulary(merges), tuple(merges)


def clip_tokenizer(kind: str = "clip"):
    """CLIP's tokenizer (77 tokens) padding as the encoder expects: kind "clip" (SD 1.x,
    SDXL's first encoder) or "open_clip" (SD 2.x, SDXL's second)."""
    from transformers import CLIPTokenizer

    vocabulary, merges = vocabulary_and_merges()
    return CLIPTokenizer(vocab=dict(vocabulary), merges=[tuple(m.split(" ")) for m in merges],
                         pad_token=PAD_TOKENS[kind], model_max_length=MAX_TOKENS)


def save_clip_tokenizer(folder: Path, kind: str = "clip") -> None:
    """Write CLIP's tokenizer into a model folder's tokenizer/ (or tokenizer_2/)."""
    clip_tokenizer(kind).save_pretrained(str(folder))
