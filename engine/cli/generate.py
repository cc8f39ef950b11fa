"""`python -m engine generate`: one image, or a batch from a prompts file."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.api import EngineError, GenerateRequest, os_error_message
from engine.cli.common import (
    add_adapter_arguments,
    add_model_arguments,
    load_cli_generator,
    parse_lora,
)
from engine.recipe import Recipe, png_info, read_recipe
from engine.untrusted import check_request, clean_prompt

DEFAULT_STRENGTH = 0.6  # --init / --sketch without --strength


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate an image (student 1/2/4 steps, or the teacher with CFG)",
        description="Generate one image from --prompt, or one per line of --prompts into a "
                    "folder.",
    )
    add_model_arguments(parser)
    add_adapter_arguments(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text prompt (may be empty: unconditional)")
    prompt.add_argument("--prompts", type=Path, help="a text file, one prompt per line (batch)")
    prompt.add_argument("--recipe", type=Path, metavar="IMAGE",
                        help="draw again the frame an image saved by DMD Studio records (its "
                             "prompt, seed, steps, sketch...; the other flags given here "
                             "override it)")
    parser.add_argument("--as-typed", action="store_const", const=False, dest="match_prompt",
                        help="draw the prompt exactly as written; by default a model that "
                             "ships a vocabulary (the embedded ones) draws it as its nearest "
                             "training prompt (\"a crunchy beef taco\" as \"taco\")")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default 0)")
    parser.add_argument("--steps", type=int, choices=(1, 2, 4), default=None,
                        help="student steps (default: the count the student was distilled "
                             "for, its student.json timesteps; 1 for a one-step student)")
    parser.add_argument("--teacher-steps", type=int, default=None, metavar="N",
                        help="use the N-step DDIM teacher sampler with CFG instead of the student")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale for --teacher-steps (default 4)")
    parser.add_argument("--init", type=Path, help="an image to edit (img2img)")
    parser.add_argument("--strength", type=float, default=None,
                        help="img2img strength in [0, 1]: 0 keeps --init, 1 ignores it "
                             "(default 0.6, or the --recipe's when it edited an image too)")
    parser.add_argument("--sketch", type=Path, help="a line sketch that conditions the image")
    parser.add_argument("--mask", type=Path,
                        help="with --init (or an edit --recipe): redraw only where this image is "
                             "white, keep the image where it is black (grey: in between); "
                             "--strength 1 redraws that area from the prompt alone")
    add_control_arguments(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="output PNG (single prompt) or folder (with --prompts)")
    parser.set_defaults(run=run)


def add_control_arguments(parser) -> None:
    """--control and its image, type, strength, start and end."""
    from engine.runtime.control import CONTROL_TYPES

    parser.add_argument("--control", metavar="MODEL",
                        help="a ControlNet or T2I-Adapter folder (diffusers layout), or a "
                             "ControlNet file in the original release layout (.safetensors, "
                             ".pth), that steers the image with --control-image (PyTorch "
                             "backend only)")
    parser.add_argument("--control-image", type=Path, metavar="FILE",
                        help="the control model's input: a drawing (dark lines on white, or "
                             "white on black) or, for canny, any image; resized to the model's "
                             "size")
    parser.add_argument("--control-type", choices=CONTROL_TYPES, default=None,
                        help="how --control-image is preprocessed (default: the control "
                             "model's control.json, else its folder's or file's name, else "
                             "scribble)")
    parser.add_argument("--control-strength", type=float, default=None, metavar="S",
                        help="multiplies the control model's effect, 0 to 2 (default 1; 0: the "
                             "image without control)")
    parser.add_argument("--control-start", type=float, default=None, metavar="F",
                        help="fraction of the steps where control starts acting (default 0)")
    parser.add_argument("--control-end", type=float, default=None, metavar="F",
                        help="fraction of the steps where control stops acting (default 1)")


def read_image(path: Path | None, what: str, convert: Callable | None = None) -> np.ndarray | None:
    """The file as HxWx3 uint8 RGB (or what convert(image) makes of it); None for no path."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return convert(image) if convert else np.asarray(image.convert("RGB"))
    except FileNotFoundError as error:
        raise EngineError(f"The {what} {path} does not exist.") from error
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise EngineError(f"The {what} {path} is not a readable image.") from error


def mask_grey(image: Image.Image) -> np.ndarray:
    """A mask image as HxW uint8 grey: 16- and 32-bit greys scaled to 8 bits; transparent
    pixels count as black (kept), so white strokes on a clear layer redraw."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        return (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
    return (grey * alpha / 255).round().astype(np.uint8)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(temporary) beside path, then rename it over path; failures are EngineErrors."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise EngineError(os_error_message(error, path, "write")) from error


def save_png(image: np.ndarray, path: Path, recipe: Recipe) -> None:
    """The image as a PNG carrying its recipe, written atomically."""
    write_atomic(path, lambda temporary: Image.fromarray(image).save(
        temporary, format="PNG", pnginfo=png_info(recipe)))


def read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise EngineError(f"The prompts file {path} is not a readable text file.") from error
    prompts = [clean_prompt(line.strip(), f"Line {number} of {path}")
               for number, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise EngineError(f"The prompts file {path} has no prompts.")
    return prompts


def base_request(args: argparse.Namespace) -> GenerateRequest:
    """The request the flags describe (prompt left empty), over --recipe's when one is given;
    flags left out take the recipe's values, or the defaults without one."""
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise EngineError(f"--strength must be between 0 and 1, not {args.strength}.")
    if args.teacher_steps is not None and args.teacher_steps < 0:
        raise EngineError("--teacher-steps must be zero or positive.")
    recipe = read_recipe(args.recipe) if args.recipe else None
    if args.recipe and recipe is None:
        raise EngineError(f"{args.recipe} has no DMD Studio recipe (it was not saved by "
                          "DMD Studio or generate).")
    if recipe and recipe.control_model and args.control is None:  # draw with its control too
        args.control = recipe.control_model
        args.control_type = args.control_type or recipe.control_type or None
    base = recipe.request() if recipe else \
        GenerateRequest(prompt=clean_prompt(args.prompt or "", "--prompt"))
    init_image = read_image(args.init, "init image")
    sketch = read_image(args.sketch, "sketch")
    mask = read_image(args.mask, "mask", mask_grey)
    control_image = read_image(args.control_image, "control image")
    strength = args.strength
    new_image = init_image is not None or sketch is not None
    if strength is None and new_image and base.init_image is None and base.sketch is None:
        strength = DEFAULT_STRENGTH  # an image to edit where there was none
    chosen = {"seed": args.seed, "steps": args.steps, "strength": strength,
              "teacher_steps": args.teacher_steps, "guidance": args.guidance,
              "init_image": init_image, "sketch": sketch, "mask": mask,
              "control_image": control_image, "control_strength": args.control_strength,
              "control_start": args.control_start, "control_end": args.control_end,
              "match_prompt": args.match_prompt}
    request = replace(base, **{name: value for name, value in chosen.items() if value is not None})
    if request.init_image is None and request.sketch is None:
        request = replace(request, strength=1.0)  # the strength only edits images
    if request.mask is not None and request.init_image is None and request.sketch is None:
        raise EngineError("--mask needs an image to edit: give --init (or an edit --recipe).")
    if request.control_image is not None and args.control is None:
        raise EngineError("--control-image needs --control MODEL (a ControlNet or T2I-Adapter "
                          "folder, or a ControlNet file).")
    if args.control is not None and request.control_image is None:
        raise EngineError("--control needs --control-image FILE (the drawing or image that "
                          "steers the frame).")
    if args.control is not None:
        from engine.runtime.control import control_path

        control_path(args.control)  # a missing control model fails before the model loads
    check_request(request)  # --guidance inf and the like fail before the model loads
    return request


def run(args: argparse.Namespace) -> int:
    from engine.pipeline.images import resized

    base = base_request(args)
    prompts = read_prompts(args.prompts) if args.prompts else [base.prompt]
    recipe = read_recipe(args.recipe) if args.recipe else None
    loras = tuple(parse_lora(text) for text in args.lora) if args.lora is not None else \
        recipe.loras if recipe else ()  # a recipe's LoRAs must be the same files (digests)
    decoder = args.decoder if args.decoder is not None else recipe.decoder if recipe else ""
    generator = load_cli_generator(args, loras, decoder or None)
    size = generator.backend.image_size  # the generator resizes images to it anyway, so the
    base = replace(  # recipes store them at that size (exact, and small)
        base, init_image=None if base.init_image is None else resized(base.init_image, size),
        sketch=None if base.sketch is None else resized(base.sketch, size),
        mask=None if base.mask is None else resized(base.mask, size),
        control_image=None if base.control_image is None else resized(base.control_image, size))
    if args.steps is None and not args.recipe:
        base = replace(base, steps=generator.default_steps)
    model = args.model or "embedded student"
    if getattr(args, "unet", None):  # the recipe's reader sees which UNet drew it
        model = f"{model} with UNet {args.unet}"
    control = generator.control
    control_model, control_type = (str(args.control), control.control_type) if control else ("", "")

    def draw(prompt: str, path: Path) -> tuple[float, str]:
        """(milliseconds, the training prompt it was drawn as or "")."""
        request = replace(base, prompt=prompt)
        image, timings = generator.generate(request)
        save_png(image, path, Recipe.from_request(request, model, args.backend, control_model,
                                                  control_type, loras=generator.loras,
                                                  decoder=generator.decoder))
        match = generator.drawn_as(request)
        return timings.total_ms, match.prompt if match else ""

    if args.prompts is None:
        milliseconds, drawn_as = draw(base.prompt, args.out)
        note = f", drawn as {json.dumps(drawn_as, ensure_ascii=False)}" if drawn_as else ""
        print(f"wrote {args.out} ({milliseconds:.0f} ms{note})")
        return 0
    index = {}
    for number, prompt in enumerate(prompts):
        name = f"{number:04d}.png"
        _, drawn_as = draw(prompt, args.out / name)
        index[name] = {"prompt": prompt, "seed": base.seed, **({"drawn_as": drawn_as}
                                                                 if drawn_as else {})}
    text = json.dumps(index, indent=1, ensure_ascii=False)
    write_atomic(args.out / "index.json", lambda temporary: temporary.write_text(text, "utf-8"))
    print(f"wrote {len(prompts)} images and index.json to {args.out}")
    return 0
