"""An animated GIF of the live canvas, from frames the engine really renders.

python scripts/demo_gif.py --out docs/demo.gif [--model DIR] [--prompt "red apple"]
    [--sketch-prompt "cat face"] [--backend auto] [--size 256]
-> left: the sketch canvas, right: the model's frame, below: the prompt box. First the prompt
   is typed letter by letter, one frame per keystroke; then, for a model that draws from
   sketches, a second prompt is drawn over a sketch made stroke by stroke (a face: head,
   ears, eyes, mouth), one frame per stroke segment. Every frame is the model's own output
   at its default step count and a fixed seed, as the live tab shows it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KEY_MS = 140  # one frame per keystroke
STROKE_MS = 110  # one frame per piece of stroke
HOLD_MS = 1400  # the finished image
CAPTION_HEIGHT = 34


def face_strokes(size: int) -> list[list[tuple[float, float]]]:
    """Polylines of a simple cat face on a size x size canvas: head, two ears, eyes, mouth."""
    centre, radius = size / 2, size * 0.3

    def arc(cx, cy, r, start, end, count):
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a)))
                for a in np.linspace(start, end, count)]

    head = arc(centre, centre + size * 0.04, radius, -60, 240, 24)
    left_ear = [head[-1], (centre - radius * 0.75, centre - radius * 1.25), head[-4]]
    right_ear = [head[3], (centre + radius * 0.75, centre - radius * 1.25), head[0]]
    eye = size * 0.035
    left_eye = arc(centre - radius * 0.4, centre - radius * 0.05, eye, 0, 360, 8)
    right_eye = arc(centre + radius * 0.4, centre - radius * 0.05, eye, 0, 360, 8)
    mouth = arc(centre, centre + radius * 0.25, radius * 0.3, 20, 160, 8)
    return [head, left_ear, right_ear, left_eye, right_eye, mouth]


def sketch_steps(size: int, width: int, points_per_step: int = 4) -> list[np.ndarray]:
    """The sketch as it grows: black strokes on white, HxWx3 uint8, a few points at a time."""
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    steps = []
    for stroke in face_strokes(size):
        for end in range(2, len(stroke) + points_per_step, points_per_step):
            part = stroke[:min(end, len(stroke))]
            draw.line(part, fill="black", width=width, joint="curve")
            steps.append(np.asarray(canvas).copy())
    return steps


def panel(frame: np.ndarray, sketch: np.ndarray | None, text: str, size: int,
          font: ImageFont.ImageFont) -> Image.Image:
    """Sketch canvas | frame, with the prompt box (and a caret) below."""
    image = Image.new("RGB", (2 * size + 12, size + CAPTION_HEIGHT + 8), (32, 33, 36))
    blank = np.full((size, size, 3), 255, np.uint8)
    left = Image.fromarray(blank if sketch is None else sketch).resize((size, size))
    right = Image.fromarray(frame).resize((size, size), Image.Resampling.LANCZOS)
    image.paste(left, (4, 4))
    image.paste(right, (size + 8, 4))
    draw = ImageDraw.Draw(image)
    box = (4, size + 10, 2 * size + 8, size + 6 + CAPTION_HEIGHT)
    draw.rectangle(box, fill="white", outline=(120, 120, 120))
    draw.text((box[0] + 8, box[1] + 7), text + "|", fill="black", font=font)
    return image


def render(generator, prompt: str, seed: int, steps: int, sketch: np.ndarray | None):
    from engine.api import GenerateRequest

    image, _ = generator.generate(GenerateRequest(prompt, seed=seed, steps=steps, sketch=sketch))
    return image


def demo_frames(generator, prompt: str, sketch_prompt: str | None, seed: int,
                size: int) -> tuple[list[Image.Image], list[int]]:
    """(frames, durations in ms): the prompt typed key by key, then a sketch stroke by stroke."""
    font = ImageFont.load_default(size=18)
    steps = generator.default_steps
    frames, durations = [], []
    for end in range(1, len(prompt) + 1):
        typed = prompt[:end]
        frames.append(panel(render(generator, typed, seed, steps, None), None, typed, size, font))
        durations.append(KEY_MS)
    durations[-1] = HOLD_MS
    if sketch_prompt and generator.backend.conditioning_channels:
        for sketch in sketch_steps(size, width=max(2, size // 64)):
            image = render(generator, sketch_prompt, seed, steps, sketch)
            frames.append(panel(image, sketch, sketch_prompt, size, font))
            durations.append(STROKE_MS)
        durations[-1] = HOLD_MS
    return frames, durations


def write_gif(frames: list[Image.Image], durations: list[int], out: Path) -> None:
    """An adaptive-palette GIF that loops."""
    paletted = [frame.quantize(colors=255, method=Image.Quantize.MEDIANCUT) for frame in frames]
    out.parent.mkdir(parents=True, exist_ok=True)
    paletted[0].save(out, save_all=True, append_images=paletted[1:], duration=durations, loop=0,
                     optimize=True, disposal=1)


def main(argv: list[str] | None = None) -> int:
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend
    from engine.runtime.loading import default_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="default: the shipped embedded student")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt", default="red apple")
    parser.add_argument("--sketch-prompt", default="cat face",
                        help="drawn over the growing sketch ('' skips the sketch part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="panel side in pixels")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if model is None:
        parser.error("no --model given and no embedded model in assets/models")
    generator = Generator(create_backend(model, args.backend, args.device))
    frames, durations = demo_frames(generator, args.prompt, args.sketch_prompt, args.seed,
                                    args.size)
    write_gif(frames, durations, args.out)
    print(f"wrote {args.out}: {len(frames)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
