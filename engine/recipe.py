"""Recipes: everything that made a frame, kept in the PNG it is saved as.

A recipe is one JSON text chunk (key RECIPE_KEY) holding the request's prompt, seed, steps,
mode, strength and sampler, the model and backend that drew it, the exact sketch, image
or control image it was conditioned on (a base64 PNG) and the control model with its
type, strength, start and end, so the app and `generate --recipe` can draw the same frame
again. Pillow reads and writes it; the app writes the same text with Qt.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from engine.api import EngineError, GenerateRequest, InvalidRequestError, LoraChoice
from engine.untrusted import (
    MAX_EMBEDDED_PIXELS,
    MAX_IMAGE_PIXELS,
    check_pixels,
    check_request,
    clean_prompt,
    load_json,
)

RECIPE_KEY = "dmd-studio"
RECIPE_VERSION = 1
MODES = ("text", "sketch", "edit")


def encode_png(image: np.ndarray) -> str:
    """HxWx3 uint8 RGB -> base64 text of a PNG (lossless, so the frame reproduces exactly)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str, mode: str = "RGB", what: str = "An embedded image") -> np.ndarray:
    """encode_png's text -> an array in mode; its declared size is checked before decoding."""
    with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
        check_pixels(image.size, what, MAX_EMBEDDED_PIXELS)
        return np.asarray(image.convert(mode)).copy()


@dataclass(frozen=True, eq=False)
class Recipe:
    """What one frame was made from; `request()` asks for the same frame again."""

    prompt: str
    seed: int = 0
    steps: int = 1
    mode: str = "text"  # text, sketch (conditioned on `sketch`) or edit (of `init_image`)
    strength: float = 1.0
    teacher_steps: int = 0
    guidance: float = 4.0
    model: str = ""  # what drew it, for the reader: "embedded student", a folder, a hub id
    backend: str = ""
    sketch: np.ndarray | None = None  # the request's sketch on white, HxWx3 uint8
    init_image: np.ndarray | None = None  # the image it edited, HxWx3 uint8
    mask: np.ndarray | None = None  # where the edit redrew (white) and kept (black), HxW uint8
    control_model: str = ""  # the ControlNet / T2I-Adapter folder that steered it ("" none)
    control_type: str = ""  # its preprocessing: scribble, lineart or canny
    control_image: np.ndarray | None = None  # the control model's input image, HxWx3 uint8
    control_strength: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    loras: tuple[LoraChoice, ...] = ()  # fused LoRAs: path, weight and the file's SHA-256
    decoder: str = ""  # the fast decoder folder that decoded it, "" for the model's VAE
    # drawn as the nearest training prompt (a model vocabulary); recipes older than this
    # field were drawn as typed
    match_prompt: bool = False

    @classmethod
    def from_request(cls, request: GenerateRequest, model: str = "", backend: str = "",
                     control_model: str = "", control_type: str = "", *,
                     loras: tuple[LoraChoice, ...] = (), decoder: str = "") -> Recipe:
        """control_model and control_type: the loaded control model's folder and type (kept
        only when the request has a control image); loras and decoder: what drew it."""
        mode = "edit" if request.init_image is not None else \
            "sketch" if request.sketch is not None or request.control_image is not None \
            else "text"
        controlled = request.control_image is not None
        return cls(prompt=clean_prompt(request.prompt), seed=request.seed, steps=request.steps,
                   mode=mode,
                   strength=request.strength, teacher_steps=request.teacher_steps,
                   guidance=request.guidance, model=model, backend=backend,
                   sketch=request.sketch, init_image=request.init_image, mask=request.mask,
                   control_model=control_model if controlled else "",
                   control_type=control_type if controlled else "",
                   control_image=request.control_image,
                   control_strength=request.control_strength,
                   control_start=request.control_start, control_end=request.control_end,
                   loras=tuple(loras), decoder=decoder, match_prompt=request.match_prompt)

    def request(self) -> GenerateRequest:
        return GenerateRequest(prompt=self.prompt, seed=self.seed, steps=self.steps,
                               strength=self.strength, teacher_steps=self.teacher_steps,
                               guidance=self.guidance, sketch=self.sketch,
                               init_image=self.init_image, mask=self.mask,
                               control_image=self.control_image,
                               control_strength=self.control_strength,
                               control_start=self.control_start, control_end=self.control_end,
                               match_prompt=self.match_prompt)

    def describe(self) -> str:
        """One line: '"red apple", seed 7, 2 steps' (and the mode, sampler and model)."""
        sampler = (f"teacher {self.teacher_steps} steps, guidance {self.guidance:g}"
                   if self.teacher_steps else f"{self.steps} step{'s' * (self.steps > 1)}")
        parts = [json.dumps(self.prompt, ensure_ascii=False), f"seed {self.seed}", sampler]
        if self.mode != "text":
            parts.append(self.mode if self.mode == "sketch" else f"edit {self.strength:.2f}"
                         + ", masked" * (self.mask is not None))
        if self.control_model:
            parts.append(f"{self.control_type or 'control'} control {self.control_strength:g}")
        if self.model:
            parts.append(f"made with {self.model}")
        parts += [f"LoRA {Path(lora.path).name} at {lora.weight:g}" for lora in self.loras]
        return ", ".join(parts)

    def to_text(self) -> str:
        values = asdict(self)
        for name in IMAGE_MODES:
            values[name] = None if values[name] is None else encode_png(values[name])
        return json.dumps({"version": RECIPE_VERSION, **values}, ensure_ascii=False)

    @classmethod
    def from_text(cls, text: str) -> Recipe:
        """Parse to_text's JSON; a damaged or foreign recipe raises EngineError."""
        try:
            values = load_json(text, "The recipe")
            if not isinstance(values, dict) or values.get("version") != RECIPE_VERSION:
                raise ValueError("not a version-1 recipe")
            if not isinstance(values.get("prompt"), str) or values.get("mode") not in MODES:
                raise ValueError("no prompt or an unknown mode")
            typed = {name: convert(values[name]) for name, convert in FIELD_TYPES.items()
                     if values.get(name) is not None}
            typed["prompt"] = clean_prompt(typed["prompt"], "its prompt")
            typed["loras"] = read_loras(values.get("loras") or [])
            for name, mode in IMAGE_MODES.items():
                if values.get(name) is not None:
                    typed[name] = decode_png(values[name], mode, f"its {name.replace('_', ' ')}")
            recipe = cls(**typed)
            check_request(recipe.request())
            return recipe
        except (ArithmeticError, ValueError, TypeError, OSError, InvalidRequestError,
                Image.DecompressionBombError) as error:
            reason = str(error).rstrip(".")
            raise EngineError(f"The image's DMD Studio recipe is damaged ({reason}).") from error


IMAGE_MODES = {"sketch": "RGB", "init_image": "RGB", "mask": "L",  # stored as PNGs
               "control_image": "RGB"}
FIELD_TYPES = {"prompt": str, "seed": int, "steps": int, "mode": str, "strength": float,
               "teacher_steps": int, "guidance": float, "model": str, "backend": str,
               "control_model": str, "control_type": str, "control_strength": float,
               "control_start": float, "control_end": float, "decoder": str,
               "match_prompt": lambda value: as_bool(value, "match_prompt")}
MAX_RECIPE_LORAS = 16


def as_bool(value, name: str) -> bool:
    """A JSON true/false; anything else is a damaged recipe."""
    if not isinstance(value, bool):
        raise ValueError(f"its {name} is not true or false")
    return value


def read_loras(values: list) -> tuple[LoraChoice, ...]:
    """A recipe's "loras" list ({path, weight, sha256} objects) as LoraChoices."""
    if not isinstance(values, list) or len(values) > MAX_RECIPE_LORAS:
        raise ValueError("its LoRA list is not a list of at most 16 entries")
    choices = []
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            raise ValueError("a LoRA entry has no path")
        weight = float(value.get("weight", 1.0))
        if not abs(weight) < 1e3:  # also refuses NaN
            raise ValueError("a LoRA weight is out of range")
        choices.append(LoraChoice(value["path"], weight, str(value.get("sha256") or "")))
    return tuple(choices)


def text_chunks(recipe: Recipe) -> dict[str, str]:
    """The PNG text chunks a saved frame carries: the recipe and the software's name."""
    return {RECIPE_KEY: recipe.to_text(), "Software": "DMD Studio"}


def png_info(recipe: Recipe) -> PngImagePlugin.PngInfo:
    """text_chunks for Pillow's Image.save(..., pnginfo=...)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text_chunks(recipe).items():
        info.add_itxt(key, value)
    return info


def read_recipe(path: str | Path) -> Recipe | None:
    """The recipe saved in an image file, or None when it has none (any other image). The
    text chunks before the pixel data are read without decoding it; chunks after it only
    in an image within MAX_IMAGE_PIXELS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # limits are ours
            image = Image.open(path)
        with image:
            text = image.info.get(RECIPE_KEY)
            if text is None and image.width * image.height <= MAX_IMAGE_PIXELS:
                text = getattr(image, "text", {}).get(RECIPE_KEY)
    except FileNotFoundError as error:
        raise EngineError(f"{path} does not exist.") from error
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        # ValueError: Pillow refuses text chunks over its memory limit
        raise EngineError(f"{path} is not a readable image.") from error
    return None if text is None else Recipe.from_text(text)
