"""User settings saved as JSON: typed fields with per-key fallback, atomic writes.

The file lives in the user's config folder (engine.paths: ~/.config/dmd-studio/settings.json
on Linux); the environment variable DMD_STUDIO_SETTINGS overrides the path (tests use it).
Until it is first written, the file earlier versions kept in Qt's AppConfigLocation
(~/.config/dmd-studio/DMD Studio/settings.json on Linux) is read instead. The file is read
through engine.untrusted's limits; numbers out of range fall back to the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QStandardPaths

from engine.paths import config_dir, data_dir
from engine.untrusted import MAX_GUIDANCE, MAX_TEACHER_STEPS, read_json_file

APP_NAME = "DMD Studio"
ORGANIZATION_NAME = "dmd-studio"
SETTINGS_ENV = "DMD_STUDIO_SETTINGS"
SETTINGS_FILE_NAME = "settings.json"


@dataclass
class DistillSettings:
    """The distillation form, remembered between sessions."""

    teacher: str = "embedded"  # "embedded", a folder or a hub id
    method: str = "dmd2"  # "dmd" or "dmd2"
    steps: int = 2000  # generator updates
    batch: int = 16  # student samples per step
    lr: float = 5e-5  # student and critic learning rate (AdamW)
    guidance: float = 4.0  # teacher CFG scale for the real score and regression pairs
    critic_ratio: int = 2  # critic (fake score) updates per generator update (DMD2 TTUR)
    gan_weight: float = 0.0  # DMD2 GAN weight (0: off; > 0 needs real images)
    regression_weight: float = 0.25  # DMD regression loss weight (0: off)
    student_steps: int = 1  # 1, 2 or 4
    init_from: str = ""  # a student model or checkpoint folder to fine-tune ("": the teacher)
    critic_warmup_steps: int = 0  # first steps train the critic alone
    ema_decay: float = 0.0  # 0: off; e.g. 0.99: student/ holds a moving average of the weights
    out_dir: str = ""  # run folder
    extra_flags: str = ""  # appended to the command line (shell-style quoting)


@dataclass
class AppSettings:
    """Everything the app remembers; unknown keys are ignored, bad values use defaults."""

    model_source: str = "embedded"  # "embedded", "folder", "file" or "hub"
    model: str = ""  # folder path, checkpoint file or hub id ("" with model_source=embedded)
    unet_file: str = ""  # a UNet-only file or unet/ folder replacing the model's UNet ("": none)
    student_timesteps: str = ""  # e.g. "399" or "999,749,499,249" ("": the model's own)
    image_size: int = 0  # pixels the model renders (0: its native size)
    backend: str = "auto"  # "auto" (onnx on a CPU for small models), "torch", "onnx", "onnx-int8"
    control_model: str = ""  # a ControlNet / T2I-Adapter folder loaded with the model ("": none)
    control_type: str = "auto"  # its preprocessing: "auto", "scribble", "lineart" or "canny"
    brush_size: int = 6  # sketch pixels (sketch layer is 256 px)
    smooth_display: bool = True  # canvas: smooth scaling of the frame (False: square pixels)
    masked_edit: bool = False  # image edit: redraw only the painted area
    match_prompt: bool = True  # draw prompts as the model's nearest training prompt
    brush_colour: str = "#000000"
    preview: str = "auto"  # multi-step frames: "auto" (a 1-step frame first only when the full
    # one is slow), "always" or "off"
    teacher_steps: int = 20  # Compare: DDIM steps for the teacher
    teacher_guidance: float = 4.0  # Compare: CFG scale for the teacher
    last_image_folder: str = ""
    last_save_folder: str = ""
    last_run_folder: str = ""
    window_geometry: str = ""  # QByteArray.toBase64() of saveGeometry()
    decoder: str = ""  # a fast decoder folder for live frames (TAESD), "" for the model's VAE
    save_full_vae: bool = True  # Save image: decode with the full VAE when a fast one drew it
    distill: DistillSettings = field(default_factory=DistillSettings)


# Numbers outside these ranges (or not finite) keep their defaults.
NUMBER_RANGES = {"brush_size": (1, 256), "teacher_steps": (1, MAX_TEACHER_STEPS),
                 "teacher_guidance": (0.0, MAX_GUIDANCE), "steps": (1, 10**9),
                 "batch": (1, 2**16), "lr": (1e-12, 1.0), "guidance": (0.0, MAX_GUIDANCE),
                 "critic_ratio": (1, 1000), "gan_weight": (0.0, 1e6),
                 "regression_weight": (0.0, 1e6), "student_steps": (1, 4),
                 "critic_warmup_steps": (0, 10**9), "ema_decay": (0.0, 0.999999),
                 "image_size": (0, 8192)}


def name_application() -> None:
    """The names Qt's standard locations (and so settings_path) are built from."""
    QCoreApplication.setApplicationName(APP_NAME)
    QCoreApplication.setOrganizationName(ORGANIZATION_NAME)


def settings_path() -> Path:
    """Where settings.json is written (and read, once it exists)."""
    override = os.environ.get(SETTINGS_ENV)
    if override:
        return Path(override)
    return config_dir() / SETTINGS_FILE_NAME


def earlier_folder() -> Path | None:
    """Qt's AppConfigLocation, where earlier versions kept settings.json and history/."""
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(folder) if folder else None


def settings_to_read() -> Path:
    """settings_path(), or an earlier version's settings.json while there is none there."""
    path = settings_path()
    earlier = earlier_folder()
    if os.environ.get(SETTINGS_ENV) or path.exists() or earlier is None:
        return path
    return earlier / SETTINGS_FILE_NAME if (earlier / SETTINGS_FILE_NAME).is_file() else path


def history_folder() -> Path:
    """Where the live tab's history strip keeps its frames (PNGs with recipes): the user's
    data folder (beside the settings file when DMD_STUDIO_SETTINGS names one). An earlier
    version's history/ beside its settings is moved there, or used where it is if it cannot
    be moved."""
    if os.environ.get(SETTINGS_ENV):
        return settings_path().parent / "history"
    folder = data_dir() / "history"
    earlier = earlier_folder()
    if folder.exists() or earlier is None or not (earlier / "history").is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(earlier / "history", folder)
    except OSError:
        return earlier / "history"
    return folder


def _typed_fields(instance, values: dict):
    """Copy values whose type matches the dataclass default; the rest stay default."""
    for item in dataclasses.fields(instance):
        if item.name not in values:
            continue
        current, given = getattr(instance, item.name), values[item.name]
        if dataclasses.is_dataclass(current):
            if isinstance(given, dict):
                _typed_fields(current, given)
        elif isinstance(current, float) and isinstance(given, int | float) \
                and not isinstance(given, bool) and in_range(item.name, given):
            setattr(instance, item.name, float(given))
        elif type(given) is type(current) and in_range(item.name, given):
            setattr(instance, item.name, given)
    return instance


def in_range(name: str, value) -> bool:
    """Whether a setting's value lies within NUMBER_RANGES (always, for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    low, high = NUMBER_RANGES.get(name, (-2**63, 2**63))
    return math.isfinite(value) and low <= value <= high


def load_settings(path: Path | None = None) -> tuple[AppSettings, str | None]:
    """Read settings; returns (settings, notice) where notice explains a fallback to defaults."""
    path = path or settings_to_read()
    if path.is_dir():
        return AppSettings(), (f"Settings path {path} is a folder, not a file; using defaults "
                               "(they will not be saved).")
    if not path.exists():
        return AppSettings(), None
    try:
        values = read_json_file(path, "it")
        if not isinstance(values, dict):
            raise ValueError("the top level is not a JSON object")
    except (OSError, ValueError) as error:
        backup = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, backup)
            kept = f" (kept as {backup.name})"
        except OSError:
            kept = ""
        reason = str(error).splitlines()[0].rstrip(".") if str(error) else type(error).__name__
        notice = f"Settings file {path} was unreadable ({reason}); using defaults{kept}."
        return AppSettings(), notice
    if values.get("preview_while_typing") is False and "preview" not in values:
        values["preview"] = "off"  # the on/off switch of earlier versions
    return _typed_fields(AppSettings(), values), None


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_settings(settings: AppSettings, path: Path | None = None) -> None:
    """Write settings as indented JSON, atomically."""
    text = json.dumps(dataclasses.asdict(settings), indent=2, sort_keys=True)
    write_atomic(path or settings_path(), text.encode("utf-8"))
