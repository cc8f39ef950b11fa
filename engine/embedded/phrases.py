"""Phrasings people type for each emoji: names, keywords and templates for training captions.

The table (assets/data/emoji-phrases.json) is derived at build time from the Unicode CLDR
English annotations (npm package cldr-annotations-full, Unicode License v3) and the Unicode
groups listed by emojibase-data (MIT); `python -m engine data phrases` rebuilds it. Training
draws one phrasing per example; the hand-written evaluation prompts
(assets/data/eval-phrases.json) are excluded from every phrasing list, so eval never scores a
string the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.api import EngineError
from engine.embedded.dataset import SKIN_TONE_WORDS, base_caption, list_emoji
from engine.paths import ASSETS_ROOT

DATA_DIR = ASSETS_ROOT / "data"  # a clone's assets/data, or the installed wheel's
PHRASE_TABLE = DATA_DIR / "emoji-phrases.json"
EVAL_PHRASES = DATA_DIR / "eval-phrases.json"
GROUPS = ("smileys-emotion", "people-body", "animals-nature", "food-drink", "travel-places",
          "activities", "objects", "symbols", "flags")
PHRASINGS_PER_IMAGE = 10  # the caption itself plus nine drawn from names x templates
MAX_KEYWORD_SHARE = 3  # a keyword naming more emoji than this is too vague to train on
NAME_TEMPLATES = ("{name}", "{article} {name}", "the {name}", "{name} emoji",
                  "{article} {name} emoji", "{name} icon", "a cute {name}", "{name} sticker",
                  "{article} {name} drawing")
KEYWORD_TEMPLATES = ("{name}", "{name} emoji", "{name} icon", "{name} sticker")
PROPER_NAME_TEMPLATES = ("{name}", "{name} emoji")
VAGUE_KEYWORDS = {"face", "person", "man", "woman", "flag", "symbol", "sign", "button", "mark",
                  "object", "hand", "body", "nature", "food", "travel", "place", "activity",
                  "animal", "other", "and", "with", "the", "for", "not", "of"}


@dataclass(frozen=True)
class EmojiEntry:
    """One emoji class: its dataset caption (skin tones removed), glyph, group and names."""

    caption: str
    emoji: str
    group: str
    names: tuple[str, ...]
    keywords: tuple[str, ...]


def _strip_vs(text: str) -> str:
    return text.replace("\ufe0f", "")


def _plural(name: str) -> str:
    if name.endswith(("s", "x", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def emoji_names(caption: str, cldr_name: str | None, is_flag: bool = False) -> list[str]:
    """The caption and CLDR's name when it differs; a country's flag (captioned by the
    country's name) also as "flag of X" and "X flag"."""
    names = [caption]
    if is_flag and "flag" not in caption.lower():
        names += [f"flag of {caption}", f"{caption} flag"]
    if cldr_name and cldr_name.lower() != caption.lower():
        names.append(cldr_name)
    return list(dict.fromkeys(names))


def specific_keywords(keywords: list[str], names: list[str], keyword_counts: Counter
                      ) -> list[str]:
    """CLDR keywords that name at most MAX_KEYWORD_SHARE emoji and are not vague or names."""
    taken = {n.lower() for n in names}
    kept = []
    for word in (w.strip().lower() for w in keywords):
        specific = keyword_counts[word] <= MAX_KEYWORD_SHARE and len(word) >= 3
        if specific and word not in VAGUE_KEYWORDS | taken and not word.isdigit():
            kept.append(word)
    return list(dict.fromkeys(kept))


def build_phrase_table(cldr_dir: Path, emojibase_dir: Path, captions: list[str]) -> dict:
    """The phrase table for dataset captions, from the extracted npm packages' folders."""
    annotations_file = Path(cldr_dir) / "annotations" / "en" / "annotations.json"
    data_file, messages_file = (Path(emojibase_dir) / "en" / name
                                for name in ("data.json", "messages.json"))
    for path in (annotations_file, data_file, messages_file):
        if not path.is_file():
            raise EngineError(f"{path} is missing; pass the extracted cldr-annotations-full and "
                              "emojibase-data package folders.")
    annotations = json.loads(annotations_file.read_text())["annotations"]["annotations"]
    annotations = {_strip_vs(k): v for k, v in annotations.items()}
    group_keys = [g["key"] for g in json.loads(messages_file.read_text())["groups"]]
    group_of = {}
    for item in json.loads(data_file.read_text()):
        for form in [item, *item.get("skins", [])]:
            if item.get("group") is not None:
                group_of[_strip_vs(form["emoji"])] = group_keys[item["group"]]
    char_of = {caption: char for char, caption in list_emoji()}
    bases = list(dict.fromkeys(base_caption(c) for c in captions))
    base_char = {}
    for caption in captions:
        base_char.setdefault(base_caption(caption), char_of.get(caption, ""))
    keyword_lists = {b: annotations.get(_strip_vs(base_char[b]), {}).get("default", [])
                     for b in bases}
    keyword_counts = Counter(w.lower() for words in keyword_lists.values() for w in set(words))
    entries = []
    for base in bases:
        char = _strip_vs(base_char[base])
        cldr_names = annotations.get(char, {}).get("tts", [])
        group = group_of.get(char, "people-body")  # two hand signs emojibase leaves ungrouped
        names = emoji_names(base, cldr_names[0] if cldr_names else None, group == "flags")
        keywords = specific_keywords(keyword_lists[base], names, keyword_counts)
        entries.append({"caption": base, "emoji": base_char[base], "group": group,
                        "names": names, "keywords": keywords})
    return {"description": "Names and keywords of every emoji class of the embedded dataset; "
                           "training captions are drawn from these through templates.",
            "sources": {"cldr-annotations-full": "Unicode CLDR English annotations, Unicode "
                        "License v3 (names and keywords)",
                        "emojibase-data": "Unicode groups, MIT License"},
            "groups": list(GROUPS), "entries": entries}


def load_phrase_table(path: Path = PHRASE_TABLE) -> dict[str, EmojiEntry]:
    """Entries by caption (skin tones removed)."""
    if not Path(path).is_file():
        raise EngineError(f"The phrase table {path} is missing; rebuild it with python -m engine "
                          "data phrases.")
    table = json.loads(Path(path).read_text())
    return {e["caption"]: EmojiEntry(e["caption"], e["emoji"], e["group"], tuple(e["names"]),
                                     tuple(e["keywords"])) for e in table["entries"]}


def load_eval_phrases(path: Path = EVAL_PHRASES) -> list[dict]:
    """The hand-written evaluation prompts: [{"prompt", "accept": [captions], "group"}]."""
    if not Path(path).is_file():
        raise EngineError(f"The evaluation prompts {path} are missing.")
    return json.loads(Path(path).read_text())["phrases"]


def _skin_tones(caption: str) -> str:
    tones = sorted((caption.find(w), w) for w in SKIN_TONE_WORDS if w in caption)
    return ", ".join(word for _, word in tones)


def _article(name: str) -> str:
    lower = name.lower()
    vowel_sound = lower[:1] in "aeiou" and not lower.startswith(("uni", "use", "eu", "one"))
    return "an" if vowel_sound else "a"


def _templated(entry: EmojiEntry) -> list[str]:
    """Every name through NAME_TEMPLATES (a country's bare name through PROPER_NAME_TEMPLATES),
    plurals of plain names, every keyword through KEYWORD_TEMPLATES."""
    texts = []
    for name in entry.names:
        proper = entry.group == "flags" and name == entry.caption
        templates = PROPER_NAME_TEMPLATES if proper else NAME_TEMPLATES
        texts += [t.format(name=name, article=_article(name)) for t in templates]
        if not proper and entry.group != "flags" and ":" not in name and name[-1:] != "s":
            texts.append(_plural(name))
    for word in entry.keywords:
        texts += [t.format(name=word) for t in KEYWORD_TEMPLATES]
    return texts


def phrasings(caption: str, table: dict[str, EmojiEntry], excluded: set[str],
              count: int = PHRASINGS_PER_IMAGE) -> list[str]:
    """The caption, then count - 1 distinct phrasings drawn (seeded by the caption) from the
    emoji's names and keywords through the templates; a skin-tone variant keeps its tones as
    a suffix."""
    base = base_caption(caption)
    entry = table.get(base) or EmojiEntry(base, "", "", (base,), ())
    tones = _skin_tones(caption)
    candidates = [f"{text}, {tones}" if tones else text for text in _templated(entry)]
    candidates = [c for c in dict.fromkeys(candidates)
                  if c != caption and c.lower() not in excluded]
    seed = int.from_bytes(hashlib.sha256(caption.encode()).digest()[:8], "big")
    random.Random(seed).shuffle(candidates)
    return [caption, *candidates[:count - 1]]


def excluded_prompts(path: Path = EVAL_PHRASES) -> set[str]:
    """Lower-cased evaluation prompts (none may be a training phrasing); empty without the file."""
    if not Path(path).is_file():
        return set()
    return {p["prompt"].lower() for p in load_eval_phrases(path)}


def training_phrasings(captions: list[str], table_path: Path = PHRASE_TABLE,
                       eval_path: Path = EVAL_PHRASES) -> list[list[str]]:
    """Phrasings for every dataset caption (the caption first), evaluation prompts excluded."""
    table = load_phrase_table(table_path)
    excluded = excluded_prompts(eval_path)
    return [phrasings(c, table, excluded) for c in captions]


def suggestions(captions: list[str], table_path: Path = PHRASE_TABLE) -> list[str]:
    """Prompt suggestions for a model trained on captions: every caption and every name and
    keyword of its emoji ("flag of Japan", "coffee"), sorted without duplicates."""
    names = list(captions)
    if Path(table_path).is_file():
        table = load_phrase_table(table_path)
        entries = [e for e in map(table.get, map(base_caption, captions)) if e]
        names += [name for e in entries for name in (*e.names, *e.keywords)]
    return sorted(set(names))
