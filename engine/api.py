"""Public data types of the engine: requests, results, timings and user-facing errors."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace

import numpy as np

BACKENDS = ("torch", "onnx", "onnx-int8")  # onnx-int8: CPU graphs with int8 matrix products
ONNX_BACKENDS = BACKENDS[1:]


class EngineError(Exception):
    """An error the user can act on; its message is one sentence, shown as is."""


# What an OSError means to the user, by errno; writes fail with the first three.
OS_ERROR_CAUSES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                   errno.EROFS: "the file system is read-only",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                   errno.ENOENT: "it does not exist", errno.EISDIR: "it is a folder",
                   errno.ENOTDIR: "a part of the path is not a folder",
                   errno.ENAMETOOLONG: "the name is too long"}
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def os_error_message(error: OSError, path: object = None, verb: str | None = None) -> str:
    """One sentence for an OSError: the path it concerns (path, else the error's own) and the
    cause in plain words; verb: what was being done ("write"; default: guessed from errno)."""
    path = path if path is not None else error.filename
    cause = OS_ERROR_CAUSES.get(error.errno) or (error.strerror or str(error) or
                                                 type(error).__name__).rstrip(".")
    verb = verb or ("write" if error.errno in WRITE_ERRNOS else "open")
    return f"Could not {verb} {path}: {cause}." if path is not None else f"{cause.capitalize()}."


class ModelLoadError(EngineError):
    """A model folder or hub id could not be loaded."""


class InvalidRequestError(EngineError):
    """A generation request has a bad value (strength, steps, image...)."""


class GenerationInterrupted(Exception):  # noqa: N818 - a control signal, not a failure
    """A newer request arrived while this one was being refined; nothing to deliver."""


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA file fused into the model at a weight; sha256 (hex), when given, must match
    the file's content (a recipe's LoRA is the file that drew it, not a namesake)."""

    path: str
    weight: float = 1.0
    sha256: str = ""


@dataclass(frozen=True, eq=False)
class GenerateRequest:
    """Everything that determines one image; made on the UI thread, never mutated.

    init_image and sketch are HxWx3 uint8 RGB arrays (any size; resized to the model's).
    control_image steers the frame through the loaded control model (ControlNet or
    T2I-Adapter): a drawing on white or an image, preprocessed as that model wants; its
    effect is multiplied by control_strength and it acts on the student's steps from
    control_start to control_end (fractions of the steps: step i of n when start <= i/n <
    end). control_strength 0 draws exactly the frame without control.
    teacher_steps > 0 asks for the teacher's DDIM sampler with classifier-free guidance
    instead of the one-step/few-step student. preview_steps N (0 < N < steps) asks the live
    service for an N-step frame first and the full-step frame once the input pauses; with
    preview_above_ms > 0 the service skips that preview while it expects the full frame to
    take at most that long.
    """

    prompt: str
    seed: int = 0
    steps: int = 1  # student steps: 1, 2 or 4 (timesteps from student.json or evenly spaced)
    init_image: np.ndarray | None = None  # HxWx3 uint8, image to edit (img2img)
    strength: float = 1.0  # img2img: 0 keeps the init image, 1 ignores it (inside the mask)
    sketch: np.ndarray | None = None  # HxWx3 uint8 line drawing on white
    mask: np.ndarray | None = None  # HxW uint8, with an image to edit: white redraws, black keeps
    teacher_steps: int = 0  # 0: student; N > 0: N-step DDIM teacher with CFG
    guidance: float = 4.0  # CFG scale for the teacher sampler
    preview_steps: int = 0  # live only: 0 off; N < steps: an N-step frame first, then steps
    preview_above_ms: float = 0.0  # live only: preview only frames expected slower (0: always)
    control_image: np.ndarray | None = None  # HxWx3 uint8: the control model's input image
    control_strength: float = 1.0  # multiplies the control model's residuals; 0: no control
    control_start: float = 0.0  # fraction of the steps where control starts acting
    control_end: float = 1.0  # fraction of the steps where it stops
    # draw the prompt as the training prompt nearest in meaning, for models whose folder has a
    # vocabulary (engine.pipeline.vocabulary); False draws it exactly as typed
    match_prompt: bool = True
    request_id: int = 0  # set by GenerationService.submit

    def image_to_edit(self, sketch_channels: bool) -> np.ndarray | None:
        """The image an edit starts from: init_image; without one, on a model without sketch
        channels (sketch_channels False), the sketch, edited as an image (img2img)."""
        if self.init_image is not None or sketch_channels:
            return self.init_image
        return self.sketch

    def preview(self, sketch_channels: bool = True) -> GenerateRequest | None:
        """The quick first frame of a progressive request, or None when there is none: no
        preview asked, a teacher request, or an image edit (its steps follow the strength);
        sketch_channels: whether the model draws from a sketch (see image_to_edit)."""
        edited = self.image_to_edit(sketch_channels) is not None
        edits = edited and (self.strength < 1.0 or self.mask is not None)
        if self.teacher_steps or edits or not 0 < self.preview_steps < self.steps:
            return None
        return replace(self, steps=self.preview_steps, preview_steps=0)


@dataclass(frozen=True)
class ModelOptions:
    """How to load a model beyond its path; None keeps what the model itself says."""

    unet: str | None = None  # a UNet-only file or folder replacing the model's UNet
    student_timesteps: tuple[int, ...] | None = None  # e.g. (399,) for DMD2's SDXL one-step
    size: int | None = None  # image size in pixels (SD-Turbo and SDXL-Turbo render 512)
    prediction: str | None = None  # "epsilon" or "v_prediction" (a single file's schedule)

    @property
    def changes_model(self) -> bool:
        """Whether the loaded model differs from the one its path names."""
        return any(value is not None for value in (self.unet, self.student_timesteps,
                                                   self.size, self.prediction))

    def cli_flags(self) -> list[str]:
        """The command-line flags that give these options (for a child process)."""
        flags = ["--unet", self.unet] if self.unet else []
        if self.student_timesteps:
            flags += ["--student-timesteps", ",".join(str(t) for t in self.student_timesteps)]
        if self.size:
            flags += ["--size", str(self.size)]
        return flags + (["--prediction", self.prediction] if self.prediction else [])


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock milliseconds per stage of one generation."""

    text_ms: float = 0.0
    encode_ms: float = 0.0  # init image / sketch encoding (0 when cached or unused)
    unet_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, eq=False)
class GenerateResult:
    """One delivered frame, or the error that replaced it."""

    request_id: int
    image: np.ndarray | None  # HxWx3 uint8 RGB, None when error is set
    timings: StageTimings = field(default_factory=StageTimings)
    error: str | None = None
    backend: str = ""
    device: str = ""
    preview: bool = False  # a progressive request's quick frame; its full frame follows
    request: GenerateRequest | None = None  # what was asked (with its id), set by the service
    loras: tuple[LoraChoice, ...] = ()  # the LoRAs fused in when it was drawn (with digests)
    decoder: str = ""  # the fast decoder folder that drew it, "" for the model's own
    drawn_as: str = ""  # the training prompt the prompt was drawn as, "" when drawn as typed

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_timesteps(text: str, flag: str = "--timesteps",
                    num_train_timesteps: int = 1000) -> list[int]:
    """"999,299" -> [999, 299]: strictly decreasing integers in [0, num_train_timesteps)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidRequestError(f"{flag} {text!r} must be integers separated by commas, "
                                  "e.g. 999,299.") from None
    decreasing = values == sorted(set(values), reverse=True)
    if not decreasing or any(not 0 <= value < num_train_timesteps for value in values):
        raise InvalidRequestError(f"{flag} {text!r} must decrease and lie in 0..."
                                  f"{num_train_timesteps - 1}.")
    return values
