"""Limits on everything read from outside the program: recipes, settings, manifests, prompts.

A file or value that comes from disk, a drop, the clipboard or the command line goes
through here before anything large is allocated, so a crafted input costs at most:

- JSON (a recipe, settings.json, an ONNX manifest, a model's config): MAX_JSON_BYTES of
  text nested at most MAX_JSON_DEPTH deep (checked before parsing, so deep nesting can
  never reach Python's recursion limit);
- images: a frame read from a PNG at most MAX_IMAGE_PIXELS, an image a recipe embeds at
  most MAX_EMBEDDED_PIXELS, both checked on the size the header declares, before decoding;
- prompts: cut to MAX_PROMPT_CHARS characters before tokenizing; lone surrogates (a
  non-UTF-8 byte on the command line) are refused with one sentence;
- numbers: finite and within the ranges below.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from engine.api import EngineError, GenerateRequest, InvalidRequestError

MAX_JSON_BYTES = 8 * 2**20
MAX_JSON_DEPTH = 32
MAX_EMBEDDED_PIXELS = 4096 * 4096  # a recipe's sketch, init image or mask
MAX_CONTROL_STRENGTH = 2.0  # ControlNet conditioning scales beyond 2 only burn the image
MAX_IMAGE_PIXELS = 8192 * 8192  # a PNG's own frame (history, an image opened to edit)
# The longest text window of the supported encoders is 512 tokens (CLIP: 77); 8 characters
# a token is more than any prompt that fills it needs.
MAX_PROMPT_CHARS = 4096
MAX_GUIDANCE = 100.0
MAX_STEPS = 16  # student steps, and the preview's
MAX_TEACHER_STEPS = 1000
MAX_SEED_MAGNITUDE = 2**64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


class UntrustedInputError(EngineError, ValueError):
    """Input over a limit or malformed; its message is one sentence (a ValueError as well,
    so readers that treat malformed input as ValueError handle it unchanged)."""


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON text (strings skipped), without parsing."""
    bare = _JSON_STRING.sub("", text).encode("utf-8", "replace")
    codes = np.frombuffer(bare, np.uint8)
    steps = (np.isin(codes, (ord("["), ord("{"))).astype(np.int32)
             - np.isin(codes, (ord("]"), ord("}"))))
    return int(np.cumsum(steps).max(initial=0))


def load_json(text: str | bytes, what: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """Parse JSON text within the size and nesting limits; UntrustedInputError otherwise."""
    if len(text) > max_bytes:
        raise UntrustedInputError(f"{what} is {len(text):,} bytes, more than the "
                                  f"{max_bytes:,} allowed.")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UntrustedInputError(f"{what} is not UTF-8 text ({error.reason} at byte "
                                      f"{error.start}).") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise UntrustedInputError(f"{what} nests {depth:,} levels deep, more than the "
                                  f"{MAX_JSON_DEPTH} allowed.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UntrustedInputError(f"{what} is not valid JSON ({error}).") from None


def read_json_file(path: str | Path, what: str | None = None,
                   max_bytes: int = MAX_JSON_BYTES) -> object:
    """A JSON file within the limits: the size is checked before reading. OSError when it
    cannot be read, UntrustedInputError when it is too big or malformed."""
    path = Path(path)
    what = what or str(path)
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > max_bytes:
            raise UntrustedInputError(f"{what} is {size:,} bytes, more than the "
                                      f"{max_bytes:,} allowed.")
        return load_json(stream.read(max_bytes + 1), what, max_bytes)


def check_pixels(size: tuple[int, int], what: str, limit: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose declared width x height exceeds limit, before it is decoded."""
    width, height = size
    if width * height > limit:
        side = math.isqrt(limit)
        raise UntrustedInputError(f"{what} declares {width:,} x {height:,} pixels, more than "
                                  f"the {side:,} x {side:,} allowed.")


def clean_prompt(text: object, what: str = "The prompt") -> str:
    """The prompt cut to MAX_PROMPT_CHARS; text that is not a str, or holds a lone surrogate
    (a byte that was not UTF-8), is refused with one sentence."""
    if not isinstance(text, str):
        raise UntrustedInputError(f"{what} must be text.")
    text = text[:MAX_PROMPT_CHARS]
    bad = _SURROGATE.search(text)
    if bad:
        code = ord(bad.group())
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF \
            else f"lone surrogate U+{code:04X}"
        raise UntrustedInputError(f"{what} is not valid UTF-8 text ({byte} at character "
                                  f"{bad.start() + 1}).")
    return text


def finite(value: object, what: str, low: float, high: float) -> float:
    """value as a float in [low, high]; NaN, infinities and anything else are refused."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UntrustedInputError(f"{what} must be a number, not {value!r}.") from None
    if isinstance(value, bool) or not (math.isfinite(number) and low <= number <= high):
        raise UntrustedInputError(f"{what} must be between {low:g} and {high:g}, not {value}.")
    return number


def check_request(request: GenerateRequest) -> None:
    """Every field of a request in range, with one-sentence InvalidRequestErrors (the
    generator calls it first, as diffusers' check_inputs does; recipes call it on reading)."""
    try:
        clean_prompt(request.prompt)
        for name, label, low, high in (
                ("seed", "The seed", -MAX_SEED_MAGNITUDE, MAX_SEED_MAGNITUDE),
                ("steps", "Student steps", 1, MAX_STEPS),
                ("preview_steps", "Preview steps", 0, MAX_STEPS),
                ("teacher_steps", "Teacher steps", 0, MAX_TEACHER_STEPS)):
            value = getattr(request, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) \
                    or not low <= value <= high:
                raise UntrustedInputError(f"{label} must be a whole number from {low:g} to "
                                          f"{high:g}, not {value}.")
        finite(request.strength, "Strength", 0.0, 1.0)
        finite(request.guidance, "Guidance", 0.0, MAX_GUIDANCE)
        finite(request.preview_above_ms, "The preview threshold", 0.0, 1e6)
        finite(request.control_strength, "Control strength", 0.0, MAX_CONTROL_STRENGTH)
        start = finite(request.control_start, "Control start", 0.0, 1.0)
        if not start < finite(request.control_end, "Control end", 0.0, 1.0):
            raise UntrustedInputError(f"Control end must be above control start "
                                      f"({request.control_end:g} <= {start:g}).")
    except UntrustedInputError as error:
        raise InvalidRequestError(str(error)) from None
