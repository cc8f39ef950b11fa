"""Load a diffusers-layout model folder (local path or hub id) into its parts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from engine.api import ModelLoadError, ModelOptions, os_error_message
from engine.diffusion.schedule import PREDICTION_TYPES, NoiseSchedule
from engine.paths import ASSETS_ROOT
from engine.runtime.text import TextEncoder, load_text_encoder
from engine.untrusted import read_json_file

ASSETS_DIR = ASSETS_ROOT / "models"  # a clone's assets/models, or the installed wheel's
EMBEDDED_NAMES = {"embedded": "teacher", "embedded-teacher": "teacher",
                  "embedded-student": "student"}
VAE_SCALE = 8  # pixels per latent pixel, in every supported autoencoder
PROMPTS_FILE = "prompts.txt"  # optional: prompt suggestions, one per line
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["model_index.json", "unet/*", "vae/*", "scheduler/*", "text_encoder/*",
                "tokenizer/*", "student.json", PROMPTS_FILE]


@dataclass
class PipelineParts:
    """Everything a backend needs to run a model, loaded in one place."""

    model_dir: Path
    text_encoder: TextEncoder
    unet: torch.nn.Module  # UNet2DConditionModel
    vae: torch.nn.Module  # AutoencoderTiny or AutoencoderKL
    latent_scale: float  # vae.config.scaling_factor
    schedule: NoiseSchedule
    image_size: int  # pixels, square
    latent_channels: int
    student_config: dict = field(default_factory=dict)  # student.json ({} for a teacher)
    time_ids: torch.Tensor | None = None  # (1, 6) SDXL size/crop conditioning, on the device
    family: str = ""  # "SD 1.x", "SD 2.x" or "SDXL" when known (single-file checkpoints)

    @property
    def conditioning_channels(self) -> int:
        """Channels of the conditioning image latent concatenated to the UNet input."""
        return int(self.unet.config.in_channels) - self.latent_channels

    @property
    def uses_pooled_text(self) -> bool:
        from engine.runtime.sdxl import uses_pooled_text

        return uses_pooled_text(self.unet)

    @property
    def latent_size(self) -> int:
        return self.image_size // VAE_SCALE


def read_prompt_suggestions(model_dir: Path) -> list[str]:
    """The model folder's optional prompts.txt: prompts it draws well, one per line (the
    app offers them while typing); [] when there is none or it cannot be read."""
    try:
        lines = (Path(model_dir) / PROMPTS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def default_model() -> str | None:
    """The shipped embedded student, else the embedded teacher, else None."""
    for name in ("student", "teacher"):
        if (ASSETS_DIR / name / "unet").is_dir():
            return str(ASSETS_DIR / name)
    return None


def resolve_model_dir(model: str) -> Path:
    """A local folder, an embedded name, or a hub id (downloaded only when online)."""
    if model in EMBEDDED_NAMES:
        path = ASSETS_DIR / EMBEDDED_NAMES[model]
        if not (path / "unet").is_dir():
            raise ModelLoadError(f"The embedded model {model!r} is not installed in {path} yet; "
                                 "pass a model folder (docs/embedded-training.md trains it).")
        return path
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            from engine.runtime.single_file import is_checkpoint_file

            if is_checkpoint_file(path):  # loaders of files never ask for a folder
                raise ModelLoadError(f"{path} is a single-file checkpoint; this needs a model "
                                     "folder (diffusers layout).")
            raise ModelLoadError(f"{path} is neither a model folder nor a .safetensors or .ckpt "
                                 "checkpoint.")
        return path
    if not HUB_ID_PATTERN.match(model) or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model folder {model} does not exist.")
    return download_hub_model(model)


def download_hub_model(hub_id: str) -> Path:
    """Fetch a hub model's diffusers folders into the HF cache (offline: cache only)."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_PATTERNS,
                                      local_files_only=offline))
    except Exception as error:  # any hub failure means the same thing here
        if offline or "offline" in str(error).lower() or "connect" in str(error).lower():
            raise ModelLoadError(f"The hub model {hub_id!r} is not available offline; download "
                                 "it once while online or pass a local folder.") from error
        raise ModelLoadError(f"Could not fetch the hub model {hub_id!r}: "
                             f"{str(error).splitlines()[0]}") from error


def read_json(path: Path) -> dict:
    """A model folder's JSON file (within engine.untrusted's limits) as a dict."""
    try:
        values = read_json_file(path)
    except OSError as error:
        raise ModelLoadError(os_error_message(error, path)) from error
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    if not isinstance(values, dict):
        raise ModelLoadError(f"{path} is not a JSON object.")
    return values


def load_component(model_class, folder: Path, dtype: torch.dtype):
    """A diffusers model from folder; its config.json is checked first, so a bad config is
    reported as such rather than as corrupt weights."""
    read_json(folder / "config.json")
    try:
        return model_class.from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as error:  # corrupt weights surface as many exception types
        raise ModelLoadError(f"The weights in {folder} are corrupt or unreadable "
                             f"({type(error).__name__}).") from error


def load_autoencoder(folder: Path, dtype: torch.dtype):
    """AutoencoderTiny or AutoencoderKL, chosen by vae/config.json's _class_name."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    class_name = read_json(folder / "config.json").get("_class_name", "AutoencoderKL")
    classes = {"AutoencoderTiny": AutoencoderTiny, "AutoencoderKL": AutoencoderKL}
    if class_name not in classes:
        raise ModelLoadError(f"Unsupported autoencoder {class_name!r} in {folder}; use "
                             "AutoencoderTiny or AutoencoderKL.")
    return load_component(classes[class_name], folder, dtype)


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]: AutoencoderTiny's, or AutoencoderKL's mean."""
    encoded = vae.encode(images)
    return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mean


def check_layout(model_dir: Path) -> None:
    for part in ("unet", "vae", "scheduler"):
        if not (model_dir / part).is_dir():
            raise ModelLoadError(f"{model_dir} has no {part}/ folder; a model folder needs the "
                                 "diffusers layout (unet/, vae/, scheduler/, text encoder).")


def load_pipeline(model: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                  unet_dir: Path | None = None, options: ModelOptions | None = None
                  ) -> PipelineParts:
    """Load text encoder, UNet, autoencoder, schedule and student.json of a model folder
    (SD 1.x/2.x, SDXL, the embedded model) or a single-file checkpoint, with options
    (engine.api.ModelOptions) applied."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    options = options or ModelOptions()
    if options.prediction and options.prediction not in PREDICTION_TYPES:
        raise ModelLoadError(f"Unknown prediction type {options.prediction!r}; use "
                             f"{' or '.join(PREDICTION_TYPES[:2])}.")
    from engine.runtime.single_file import is_checkpoint_file, load_single_file

    if is_checkpoint_file(model):
        parts = load_single_file(model, device, dtype or torch.float32, options.size)
    else:
        parts = load_model_folder(model, device, dtype or torch.float32, unet_dir, options.size)
    if options.prediction:
        parts.schedule = replace(parts.schedule, prediction_type=options.prediction)
    if options.unet or options.student_timesteps:
        from engine.runtime.unet_file import apply_unet_options

        apply_unet_options(parts, str(model), options, dtype or torch.float32, device)
    return parts


def load_model_folder(model: str | Path, device, dtype: torch.dtype, unet_dir: Path | None,
                      size: int | None) -> PipelineParts:
    """PipelineParts of a diffusers-layout folder; size overrides its native image size."""
    from diffusers import UNet2DConditionModel

    model_dir = resolve_model_dir(str(model))
    check_layout(model_dir)
    index_path = model_dir / "model_index.json"
    index = read_json(index_path) if index_path.is_file() else {}
    unet = load_component(UNet2DConditionModel, unet_dir or model_dir / "unet", dtype)
    vae = load_autoencoder(model_dir / "vae", dtype)
    student_path = model_dir / "student.json"
    parts = assemble_parts(
        model_dir, load_folder_text_encoder(model_dir, index, device, dtype), unet, vae,
        NoiseSchedule.from_folder(model_dir / "scheduler"),
        image_size=size or int(index.get("image_size") or unet.config.sample_size * VAE_SCALE),
        device=device, student_config=read_json(student_path) if student_path.is_file() else {})
    parts.family = "SDXL" if (model_dir / "text_encoder_2").is_dir() else ""
    return parts


def load_folder_text_encoder(model_dir: Path, index: dict, device, dtype):
    """SDXL's two CLIP encoders (text_encoder_2/ present), one CLIP encoder, or the
    text_encoder_package's model that model_index.json names."""
    if (model_dir / "text_encoder_2").is_dir():
        from engine.runtime.sdxl import load_dual_text_encoder

        return load_dual_text_encoder(model_dir, device, dtype,
                                      bool(index.get("force_zeros_for_empty_prompt", True)))
    package = index.get("text_encoder_package")
    if not (model_dir / "text_encoder").is_dir() and not package:
        raise ModelLoadError(f"{model_dir} has no text_encoder/ folder and model_index.json "
                             "names no text_encoder_package.")
    text_folder = model_dir if (model_dir / "text_encoder").is_dir() else None
    return load_text_encoder(text_folder, package, index.get("text_max_length"), device, dtype)


def check_fit(unet, vae, text_encoder, source: Path) -> None:
    """That the UNet from source takes the autoencoder's latents and the text states."""
    latent_channels = int(vae.config.latent_channels)
    if unet.config.in_channels < latent_channels:
        raise ModelLoadError(f"The UNet in {source} takes {unet.config.in_channels} channels, "
                             f"fewer than the autoencoder's {latent_channels}.")
    if unet.config.cross_attention_dim != text_encoder.hidden_size:
        raise ModelLoadError(f"The UNet in {source} expects {unet.config.cross_attention_dim}-d "
                             f"text states but the text encoder gives "
                             f"{text_encoder.hidden_size}-d.")


def assemble_parts(model_dir: Path, text_encoder, unet, vae, schedule: NoiseSchedule, *,
                   image_size: int, device, student_config: dict) -> PipelineParts:
    """Check that loaded components fit together and put them on device as PipelineParts."""
    from engine.runtime.sdxl import size_time_ids

    check_fit(unet, vae, text_encoder, model_dir)
    latent_channels = int(vae.config.latent_channels)
    if image_size % VAE_SCALE or image_size < VAE_SCALE:
        raise ModelLoadError(f"The image size {image_size} is not a multiple of {VAE_SCALE}.")
    unet = unet.to(device).eval().requires_grad_(False)
    time_ids = None
    if unet.config.addition_embed_type == "text_time":
        time_ids = size_time_ids(image_size, unet.dtype, device)
    return PipelineParts(
        model_dir=model_dir,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae.to(device).eval().requires_grad_(False),
        latent_scale=float(getattr(vae.config, "scaling_factor", 1.0) or 1.0),
        schedule=schedule,
        image_size=image_size,
        latent_channels=latent_channels,
        student_config=student_config,
        time_ids=time_ids,
    )
