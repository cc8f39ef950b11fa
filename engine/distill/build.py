"""Building a run: accelerator, the three networks, optimisers, LR schedules (one stage each)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.api import EngineError
from engine.distill.checkpoint import latest_checkpoint
from engine.distill.config import DistillConfig
from engine.distill.networks import CriticNetwork, ScoreNetwork, add_lora
from engine.runtime.loading import PipelineParts, load_pipeline


def quiet_libraries() -> None:
    """No library progress bars or info logs on stdout/stderr (the GUI parses stdout)."""
    import diffusers
    import huggingface_hub

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def make_accelerator(config: DistillConfig):
    """DDP/FSDP-ready accelerator; bf16 autocast with --precision bf16, or auto on GPUs
    that have it; fp32 otherwise."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if config.device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for but no CUDA GPU is visible; use "
                          "--device cpu or auto.")
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    mixed_precision = "bf16" if config.precision == "bf16" else "no"
    if config.precision == "auto" and not use_cpu and torch.cuda.is_bf16_supported():
        mixed_precision = "bf16"
    # The generator's GAN term runs the critic but only needs its trunk's gradients; the
    # trainer adds 0 * output so DDP sees every critic parameter used.
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=False)
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision,
                       kwargs_handlers=[ddp_kwargs])


def teacher_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The frozen teacher (and VAE, text encoder) in bf16 with --precision bf16; with auto,
    bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_teacher(config: DistillConfig, device: torch.device) -> PipelineParts:
    """The teacher pipeline, frozen; errors (missing unet/, offline hub id) are one line."""
    parts = load_pipeline(config.teacher, device=str(device),
                          dtype=teacher_dtype(device, config.precision))
    prediction_type = parts.schedule.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise EngineError(f"The teacher predicts {prediction_type!r}; distillation supports "
                          "epsilon and v_prediction teachers.")
    if parts.student_config:
        raise EngineError(f"{parts.model_dir} is already a distilled student (student.json); "
                          "pass the teacher it came from.")
    return parts


@dataclass
class Networks:
    teacher: ScoreNetwork  # frozen, low precision on GPU
    student: ScoreNetwork  # trainable, fp32 master weights
    critic: CriticNetwork  # trainable fake score (+ GAN head), fp32


def build_networks(config: DistillConfig, parts: PipelineParts,
                   device: torch.device) -> Networks:
    """Student and critic start as fp32 copies of the teacher UNet (DMD sec. 3.1)."""
    from diffusers import UNet2DConditionModel

    time_ids = parts.time_ids  # SDXL's size/crop conditioning, None for other families
    teacher = ScoreNetwork(parts.unet, parts.latent_channels, time_ids).eval()
    teacher.requires_grad_(False)
    unet_dir = parts.model_dir / "unet"
    student_unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
    critic_unet = copy.deepcopy(student_unet)
    student = ScoreNetwork(student_unet, parts.latent_channels, time_ids)
    critic = CriticNetwork(critic_unet, parts.latent_channels, config.uses_gan, time_ids)
    resuming = latest_checkpoint(Path(config.out) / "checkpoints") is not None
    if config.init_from and not resuming:  # a resume loads its own checkpoint instead
        load_init_weights(Path(config.init_from), {"student": student, "critic": critic})
    if config.lora_rank:
        add_lora(student_unet, config.lora_rank)
    if config.gradient_checkpointing:
        student_unet.enable_gradient_checkpointing()
        critic_unet.enable_gradient_checkpointing()
    return Networks(teacher, student.to(device).train(), critic.to(device).train())


# accelerate's save_state names the prepared models in order: student, then critic.
INIT_FILES = {"student": "model.safetensors", "critic": "model_1.safetensors"}
STUDENT_UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


def init_sources(folder: Path) -> dict[str, Path]:
    """What --init-from FOLDER starts from: a checkpoint gives student and critic; a model
    folder (student/ of a run, assets/models/student) gives the student only, and the critic
    stays a copy of the teacher (DMD sec. 3.1)."""
    if (folder / STUDENT_UNET_FILE).is_file():
        return {"student": folder / STUDENT_UNET_FILE}
    return {name: folder / file for name, file in INIT_FILES.items()}


def load_init_weights(folder: Path, networks: dict[str, torch.nn.Module]) -> None:
    """Copy a checkpoint's student and critic weights, or a model folder's UNet, in
    (--init-from). The critic's GAN head may be absent on either side; every UNet weight
    must match."""
    from safetensors.torch import load_file

    for name, path in init_sources(folder).items():
        network = networks[name]
        state = load_file(str(path))
        if path.name == STUDENT_UNET_FILE.name:  # diffusers UNet weights: add the unet. prefix
            state = {f"unet.{key}": value.float() for key, value in state.items()}
        if name == "critic" and getattr(network, "gan_head", None) is None:
            state = {k: v for k, v in state.items() if not k.startswith("gan_head.")}
        try:
            missing, unexpected = network.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch: another teacher's run
            raise EngineError(f"--init-from {folder}: the {name} weights do not fit this "
                              "teacher's UNet.") from error
        missing = [k for k in missing if not k.startswith("gan_head.")]
        if missing or unexpected:
            raise EngineError(f"--init-from {folder}: the {name} weights do not match this "
                              f"teacher's UNet ({(missing or unexpected)[0]}).")


def constant_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """Constant LR after a linear warm-up of warmup_steps steps (DMD2 sec. 5)."""

    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(parameters, config: DistillConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW(0.9, 0.999), weight decay 0.01 (DMD2 sec. 5; there generator lr = critic lr)."""
    return torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=lr,
                             betas=(0.9, 0.999), weight_decay=config.weight_decay)
