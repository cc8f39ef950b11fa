"""Per-stage milliseconds of a backend, and student (1, 4 steps) vs teacher (50 DDIM, CFG)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import GenerateRequest
from engine.bench.timing import median_ms

TEACHER_STEPS = 50
GUIDANCE = 4.0
PROMPTS = ("a red apple", "rocket", "cat face", "smiling face with sunglasses")


def stage_ms(backend, repeats: int) -> dict[str, float]:
    """Medians over repeats of text encoding, one batch-1 UNet call, image encode and decode."""
    size, channels = backend.latent_size, backend.latent_channels
    latents = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    text = backend.encode_text([PROMPTS[0]])
    t = torch.tensor([999])
    image = torch.zeros(1, 3, backend.image_size, backend.image_size)
    counter = iter(range(10**9))

    def encode_text() -> None:
        backend.encode_text([f"{PROMPTS[0]} {next(counter)}"])
        backend.synchronize()

    def unet() -> None:
        backend.unet(latents, t, text, None)
        backend.synchronize()

    def decode() -> None:
        backend.decode(latents)
        backend.synchronize()

    def encode_image() -> None:
        backend.encode_image(image)
        backend.synchronize()

    return {"text_ms": median_ms(encode_text, repeats), "unet_ms": median_ms(unet, repeats),
            "decode_ms": median_ms(decode, repeats),
            "encode_image_ms": median_ms(encode_image, repeats)}


def generate_ms(generator, request: GenerateRequest, repeats: int, warm_up: int = 1) -> float:
    """Median end-to-end generate() ms with the caches cleared (prompt encoded each time)."""

    def run() -> None:
        generator.clear_caches()
        generator.generate(request)

    return median_ms(run, repeats, warm_up)


class TeacherView:
    """A backend seen without its student.json, so that generate() runs its own UNet as teacher."""

    student_config: dict = {}

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def find_teacher(student_config: dict, model_dir: Path) -> Path | None:
    """student.json's "teacher" when it names a local model folder or the embedded teacher."""
    from engine.api import EngineError
    from engine.runtime.loading import HUB_ID_PATTERN, resolve_model_dir

    name = str(student_config.get("teacher") or "")
    if not name:
        return None
    for candidate in (name, str(model_dir / name)):
        if HUB_ID_PATTERN.match(candidate) and not Path(candidate).exists():
            continue  # never download during a benchmark
        try:
            path = resolve_model_dir(candidate)
        except EngineError:
            continue
        if (path / "unet").is_dir() and path.resolve() != model_dir.resolve():
            return path
    return None


def student_vs_teacher(generator, teacher_generator, repeats: int,
                       teacher_repeats: int) -> dict[str, float]:
    """Student at 1, 2 and 4 steps vs the teacher's 50-step DDIM with CFG, end to end."""
    prompt = PROMPTS[1]
    student_1 = generate_ms(generator, GenerateRequest(prompt, steps=1), repeats)
    student_2 = generate_ms(generator, GenerateRequest(prompt, steps=2), repeats)
    student_4 = generate_ms(generator, GenerateRequest(prompt, steps=4), repeats)
    teacher_request = GenerateRequest(prompt, teacher_steps=TEACHER_STEPS, guidance=GUIDANCE)
    teacher = generate_ms(teacher_generator, teacher_request, teacher_repeats, warm_up=0)
    return {"student_ms": student_1, "student_2step_ms": student_2,
            "student_4step_ms": student_4, "teacher_ms": teacher,
            "teacher_steps": TEACHER_STEPS, "teacher_guidance": GUIDANCE,
            "speedup_vs_teacher": teacher / student_1,
            "speedup_2step_vs_teacher": teacher / student_2,
            "speedup_4step_vs_teacher": teacher / student_4}
