"""DistillConfig: every setting of a DMD/DMD2 run, validated early and dumped to config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.api import EngineError
from engine.untrusted import read_json_file

METHODS = ("dmd", "dmd2")
STUDENT_STEP_CHOICES = (1, 2, 4)
REGRESSION_DISTANCES = ("l2", "l1")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
PROGRESS_MODES = ("bar", "json", "none")
# What each method means when its flags are not given: DMD (Yin et al. 2024a) trains the
# distribution matching loss with the regression loss and one critic update per step; DMD2
# (Yin et al. 2024b, sec. 4) drops the regression loss, adds the GAN term on real data and
# updates the critic more often than the generator (two time-scale update rule).
METHOD_DEFAULTS = {
    "dmd": {"regression_weight": 0.25, "gan_weight": 0.0, "critic_ratio": 1},
    "dmd2": {"regression_weight": 0.0, "gan_weight": 1e-3, "critic_ratio": 2},
}
# Settings that may change when a run is resumed; every other one must match config.json.
RESUMABLE_OVERRIDES = ("steps", "progress", "checkpoint_every", "keep_checkpoints",
                       "sample_every", "log_every", "device")


@dataclass
class DistillConfig:
    """One distillation run. None means "the method's default" (resolved by resolve())."""

    teacher: str = "embedded"  # "embedded", a local diffusers folder or a hub id
    out: str = "runs/distill"  # run folder
    method: str = "dmd2"  # dmd: DM + regression, critic 1:1; dmd2: DM + GAN, TTUR, multi-step
    steps: int = 2000  # generator updates
    batch: int = 16  # student samples per process and step
    lr: float = 5e-5  # generator and critic learning rate (AdamW)
    critic_lr: float | None = None  # the critic's own learning rate (None: lr)
    warmup_steps: int = 500  # linear LR warm-up, clamped to steps
    weight_decay: float = 0.01
    max_grad_norm: float = 10.0
    guidance: float = 4.0  # teacher CFG scale of the real score and of regression pairs
    critic_ratio: int | None = None  # critic updates per generator update (None: the method's)
    critic_warmup_steps: int = 0  # first steps train the critic alone (a fresh critic)
    ema_decay: float = 0.0  # > 0: student/ and samples use an EMA of the student's weights
    gan_weight: float | None = None  # generator GAN weight w_g; > 0 needs real data (None:
    # the method's: 1e-3 for dmd2 with --real-data, else 0)
    gan_critic_weight: float = 1e-2  # weight of the critic's GAN classification loss
    regression_weight: float | None = None  # lambda_reg; 0: off (None: the method's)
    regression_pairs: int = 256  # cached teacher (noise, prompt, x0) pairs
    regression_ddim_steps: int = 25  # teacher DDIM steps per pair
    regression_batch: int | None = None  # pairs per step (default: batch // 4, at least 1)
    regression_distance: str = "l2"  # latent-space l2 (MSE) or l1
    student_steps: int = 1  # 1 -> timesteps [999]; 4 -> [999, 749, 499, 249]
    # The student's schedule when not evenly spaced, e.g. [999, 299] (decreasing, from the top)
    student_timesteps: list[int] | None = None
    dm_min_t_fraction: float = 0.02  # DM loss t ~ U{2% .. 98%} of the schedule
    dm_max_t_fraction: float = 0.98
    prompts: str | None = None  # text file, one prompt a line (None: default list)
    real_data: str | None = None  # emoji dataset folder or folder of images (+ .txt captions)
    # Share of each batch conditioned on a (caption, sketch) pair of the real data; None:
    # 0.5 when the teacher has conditioning channels and the data has sketches, else 0.
    sketch_fraction: float | None = None
    seed: int = 0
    device: str = "auto"
    gradient_checkpointing: bool = False
    # bf16: autocast and a bf16 frozen teacher (CPU too); fp32: neither; auto: bf16 on GPUs
    # that have it, fp16 teacher on older GPUs, fp32 on the CPU
    precision: str = "auto"
    lora_rank: int = 0  # > 0: train a LoRA student of this rank (merged when saved)
    init_from: str | None = None  # a distill checkpoint folder: start student and critic there
    checkpoint_every: int = 250  # generator steps between checkpoints (and student/ refresh)
    keep_checkpoints: int = 3
    sample_every: int = 100  # generator steps between sample grids (0: only at checkpoints)
    sample_count: int = 8  # images in a sample grid (fixed prompts and seeds)
    log_every: int = 1
    progress: str = "bar"  # bar (tqdm), json (one event a line on stdout) or none
    # The settings that resolve() took from the method's defaults (recorded in config.json)
    method_defaults: list[str] = field(default_factory=list)

    # -- defaults that depend on the method ------------------------------------------------
    def resolve(self) -> DistillConfig:
        """Fill method-dependent defaults in place and validate; returns self."""
        if self.method not in METHODS:
            raise EngineError(f"Unknown method {self.method!r}; use dmd or dmd2.")
        for name, value in self.method_default_values().items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                self.method_defaults = sorted({*self.method_defaults, name})
        if self.regression_batch is None:
            self.regression_batch = max(1, self.batch // 4)
        # Saved clamped, so that raising --steps on --resume does not restart the warm-up.
        self.warmup_steps = self.effective_warmup
        self.validate()
        return self

    def method_default_values(self) -> dict[str, float | int]:
        """The method's own settings; DMD2's GAN term is on only when --real-data is given."""
        values = dict(METHOD_DEFAULTS[self.method])
        if self.method == "dmd2" and self.real_data is None:
            values["gan_weight"] = 0.0
        return values

    @property
    def effective_warmup(self) -> int:
        return max(0, min(self.warmup_steps, self.steps))

    @property
    def uses_regression(self) -> bool:
        return self.regression_weight > 0

    @property
    def uses_gan(self) -> bool:
        return self.gan_weight > 0

    def validate(self) -> None:
        """One-sentence errors for every bad value (diffusers' check_inputs style)."""
        def positive(name: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise EngineError(f"--{name.replace('_', '-')} must be positive, not {value}.")

        def non_negative(name: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise EngineError(f"--{name.replace('_', '-')} must be zero or positive, "
                                  f"not {value}.")

        for name in ("steps", "batch", "lr", "max_grad_norm", "critic_ratio", "log_every",
                     "keep_checkpoints", "checkpoint_every", "regression_ddim_steps",
                     "regression_batch", "sample_count"):
            positive(name, getattr(self, name))
        if self.critic_lr is not None:
            positive("critic_lr", self.critic_lr)
        for name in ("guidance", "gan_weight", "gan_critic_weight", "regression_weight",
                     "weight_decay", "warmup_steps", "sample_every", "lora_rank",
                     "critic_warmup_steps"):
            non_negative(name, getattr(self, name))
        if self.student_steps not in STUDENT_STEP_CHOICES:
            raise EngineError(f"--student-steps must be 1, 2 or 4, not {self.student_steps}.")
        if self.student_timesteps is not None and len(self.student_timesteps) != \
                self.student_steps:
            raise EngineError(f"--student-steps {self.student_steps} disagrees with the "
                              f"{len(self.student_timesteps)} --student-timesteps.")
        if self.regression_distance not in REGRESSION_DISTANCES:
            raise EngineError(f"--regression-distance must be l2 or l1, not "
                              f"{self.regression_distance!r}.")
        if self.device not in DEVICES:
            raise EngineError(f"--device must be auto, cpu or cuda, not {self.device!r}.")
        if self.precision not in PRECISIONS:
            raise EngineError(f"--precision must be auto, bf16 or fp32, not {self.precision!r}.")
        if self.progress not in PROGRESS_MODES:
            raise EngineError(f"--progress must be bar, json or none, not {self.progress!r}.")
        if self.sketch_fraction is not None and not (
                isinstance(self.sketch_fraction, int | float) and 0 <= self.sketch_fraction <= 1):
            raise EngineError(f"--sketch-fraction must be between 0 and 1, not "
                              f"{self.sketch_fraction}.")
        if not (isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1):
            raise EngineError(f"--ema-decay must be 0 (off) or below 1, not {self.ema_decay}.")
        if not 0 <= self.dm_min_t_fraction < self.dm_max_t_fraction <= 1:
            raise EngineError("The DM timestep range must satisfy 0 <= min < max <= 1.")
        if self.method == "dmd":
            if self.critic_ratio != 1:
                raise EngineError("--critic-ratio above 1 is DMD2's two-time-scale rule; "
                                  "use --method dmd2.")
            if self.uses_gan:
                raise EngineError("The GAN loss is part of DMD2; use --method dmd2.")
            if self.student_steps != 1:
                raise EngineError("A multi-step student needs DMD2's backward simulation; "
                                  "use --method dmd2.")
        if self.uses_regression and self.regression_pairs < 1:
            raise EngineError("--regression-pairs must be at least 1 when "
                              "--regression-weight is above 0.")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise EngineError(f"The prompts file {self.prompts} does not exist.")
        if self.real_data is not None and not Path(self.real_data).is_dir():
            raise EngineError(f"The real-data folder {self.real_data} does not exist.")

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)

    @classmethod
    def from_dict(cls, values: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def load(cls, path: Path) -> DistillConfig:
        try:
            values = read_json_file(path, "The file")
            # Runs saved before sketch conditioning existed were text-only; resume them so.
            values.setdefault("sketch_fraction", 0.0)
            return cls.from_dict(values)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise EngineError(f"{path} is not a readable run config: {error}") from error

    def merged_for_resume(self, saved: DistillConfig, given: set[str]) -> DistillConfig:
        """The saved config with the allowed overrides from this command line."""
        for name in sorted(given):
            if name in RESUMABLE_OVERRIDES or name == "out":
                continue
            if getattr(self, name) != getattr(saved, name):
                flag = "--" + name.replace("_", "-")
                raise EngineError(f"This run was started with {flag} {getattr(saved, name)}; "
                                  f"drop {flag} to resume it or start a new run with --out.")
        merged = DistillConfig.from_dict(saved.to_dict())
        for name in RESUMABLE_OVERRIDES:
            if name in given:
                setattr(merged, name, getattr(self, name))
        merged.out = self.out
        return merged
