"""`python -m engine distill --teacher T --out runs/NAME`: DMD / DMD2 one-step distillation."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from engine.api import EngineError
from engine.cli.common import check_writable_folder, lower_cpu_priority, parse_timesteps

DESCRIPTION = """\
Distill a diffusion teacher into a one-step (or few-step) student with Distribution
Matching Distillation (DMD, Yin et al. 2024) or DMD2. Writes runs/NAME/: config.json,
metrics.jsonl, samples/step-N.png, checkpoints/step-N/ and student/ (a loadable model
folder, refreshed at every checkpoint). Ctrl-C or SIGTERM finishes the current step,
saves a checkpoint and exits 0; --resume continues exactly where it stopped. Runs on
several GPUs unchanged under `accelerate launch -m engine distill ...`
(docs/distill-at-scale.md)."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="Distill a teacher into a one-step student (DMD / DMD2).",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--teacher", default=None,
        help="'embedded' (assets/models/teacher, the default), a local diffusers model folder, "
             "or a hub id (needs a network once; offline it must be in the HF cache). Epsilon "
             "and v-prediction teachers are supported.")
    add("--out", type=Path, required=True, help="run folder, e.g. runs/emoji-dmd2")
    add("--method", default=None,
        help="dmd: distribution matching + regression loss, critic updated once per step, "
             "no GAN; dmd2 (default): distribution matching without the regression loss, "
             "the GAN term on --real-data (when given), the critic updated twice per step "
             "(two-time-scale rule) and multi-step students with backward simulation. "
             "--regression-weight, --gan-weight and --critic-ratio override these defaults")
    add("--steps", type=int, default=None,
        help="generator updates to train for (default 2000); may be raised with --resume")
    add("--batch", type=int, default=None,
        help="student samples per process and step (default 16)")
    add("--lr", type=float, default=None,
        help="AdamW learning rate of both student and critic (default 5e-5; DMD2 used 1e-5 "
             "on SD1.5); constant after --warmup-steps")
    add("--warmup-steps", type=int, default=None,
        help="linear LR warm-up steps (default 500, clamped to --steps)")
    add("--guidance", type=float, default=None,
        help="teacher classifier-free guidance scale in the real score and in regression "
             "pairs (default 4 for the small embedded teacher; DMD2 used 1.75 on SD1.5)")
    add("--critic-ratio", type=int, default=None,
        help="critic updates per generator update (DMD2 TTUR; default 1 for dmd, 2 for dmd2; "
             "DMD2 used 10 on SD1.5, 5 on SDXL)")
    add("--critic-lr", type=float, default=None,
        help="the critic's own AdamW learning rate (default: --lr, as in DMD2); a higher one "
             "lets a critic that starts at the teacher catch up with a fine-tuned student")
    add("--critic-warmup-steps", type=int, default=None,
        help="train the critic alone for the first N steps (default 0): use it when the "
             "student starts elsewhere than the teacher (--init-from a student folder), so "
             "that the fake score fits the student before it moves the student")
    add("--ema-decay", type=float, default=None,
        help="keep an exponential moving average of the student's weights with this decay "
             "(e.g. 0.99) and write it as student/ and in the sample grids; checkpoints "
             "hold both (default 0: off)")
    add("--gan-weight", type=float, default=None,
        help="generator GAN weight w_g (dmd2 only); above 0 turns the GAN on, which needs "
             "real images (--real-data, or the emoji dataset for the embedded teacher). "
             "Default: 1e-3 (DMD2 on SD1.5) for dmd2 with --real-data, else 0 (off)")
    add("--regression-weight", type=float, default=None,
        help="weight of the latent L2 regression to cached teacher samples (default 0.25 "
             "for dmd, 0 for dmd2, as in the DMD2 paper; 0 turns it off)")
    add("--regression-pairs", type=int, default=None,
        help="teacher (noise, prompt, x0) pairs made once with 25-step DDIM + CFG and cached "
             "in the run folder (default 256)")
    add("--regression-distance", default=None,
        help="latent-space distance of the regression loss (default l2; LPIPS would need "
             "pretrained VGG weights)")
    add("--student-steps", type=int, default=None,
        help="1 (default): one step from t=999; 2: 999,499; 4: 999,749,499,249, trained "
             "with backward simulation (dmd2 only)")
    add("--student-timesteps", default=None,
        help="the student's schedule when not evenly spaced, e.g. 999,299 (decreasing, "
             "starting at the teacher's top timestep; sets --student-steps to its length)")
    add("--prompts", type=Path, default=None,
        help="text file with one prompt a line (default: the emoji captions for the embedded "
             "teacher, a built-in list of generic prompts otherwise)")
    add("--real-data", type=Path, default=None,
        help="real images for the GAN and sketches for --sketch-fraction: an emoji dataset "
             "folder, or images with same-name .txt captions and optional same-name sketches "
             "in DIR/sketches/ (encoded once and cached)")
    add("--sketch-fraction", type=float, default=None,
        help="share of each batch conditioned on a (caption, sketch) pair of the real data, "
             "for teachers with sketch channels (the embedded one); the student, critic and "
             "teacher all see the same sketch latent, the rest gets zeros (default 0.5 when "
             "the teacher has sketch channels and the data has sketches, else 0; 0 trains "
             "text-only)")
    add("--gradient-checkpointing", action="store_true", default=None,
        help="recompute UNet activations in the backward pass (less memory, ~30%% slower)")
    add("--precision", choices=("auto", "bf16", "fp32"), default=None,
        help="bf16: bf16 autocast for student and critic and a bf16 frozen teacher (half "
             "their activation and the teacher's weight memory); fp32: full precision; "
             "default auto: bf16 on GPUs that have it, fp32 on the CPU")
    add("--lora-rank", type=int, default=None,
        help="train a LoRA student of this rank instead of all weights (big teachers); "
             "merged into student/ when saved (default 0, full fine-tuning)")
    add("--init-from", default=None,
        help="start the student and critic from another run's checkpoints/step-N folder "
             "(same teacher), e.g. a one-step student from a four-step run, or the student "
             "alone from a student model folder (a run's student/, assets/models/student; "
             "the critic starts from the teacher); optimisers, step count and data order "
             "start fresh")
    add("--resume", action="store_true",
        help="continue the run in --out from its newest checkpoint (optimizer, LR schedule, "
             "RNG, data order and step restored)")
    add("--progress", default=None,
        help="bar: a progress bar on stderr (default); json: one JSON event a line on stdout "
             "(stage, progress, sample, checkpoint, done, error)")
    add("--log-every", type=int, default=None,
        help="steps between metrics.jsonl lines and progress events (default 1)")
    add("--checkpoint-every", type=int, default=None,
        help="steps between checkpoints and student/ refreshes (default 250)")
    add("--keep-checkpoints", type=int, default=None,
        help="complete checkpoints to keep (default 3; the newest is never deleted)")
    add("--sample-every", type=int, default=None,
        help="steps between sample grids samples/step-N.png (default 100; 0: none)")
    add("--seed", type=int, default=None, help="seed of every random draw (default 0)")
    add("--max-minutes", type=float, default=None,
        help="stop after this many minutes (counted once the teacher is loaded, making "
             "regression pairs included) as Ctrl-C would: checkpoint, student/, exit 0; "
             "--resume goes on later")
    add("--low-priority", action="store_true",
        help="run at the lowest CPU priority (nice 19), so that a live canvas on the same "
             "cores stays fast; the app's Engine tab always passes it")
    add("--device", default=None,
        help="auto (default): CUDA when available; on GPUs the teacher runs in bf16 and the "
             "student and critic train with fp32 weights under bf16 autocast")
    parser.set_defaults(run=run)


def config_from_args(args) -> tuple[object, set[str]]:
    """A DistillConfig from the flags the user gave, and the names of those flags."""
    from engine.distill.config import DistillConfig

    config = DistillConfig()
    given = set()
    for field in fields(DistillConfig):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        setattr(config, field.name, value)
        given.add(field.name)
    return config, given


def check_init_folder(folder: Path) -> None:
    """--init-from must name a checkpoint folder (student and critic weights) or a student
    model folder (unet/ weights)."""
    from engine.distill.build import init_sources

    missing = [path for path in init_sources(folder).values() if not path.is_file()]
    if missing:
        raise EngineError(f"--init-from {folder} has no {missing[0].name}; pass a "
                          "runs/NAME/checkpoints/step-N folder of a distill run or a student "
                          "model folder.")


def prepare_config(args):
    """Resolve defaults, apply --resume rules and check the teacher folder, before any
    heavy import, so that bad input fails in a second with one line."""
    from engine.distill.checkpoint import latest_checkpoint
    from engine.distill.config import DistillConfig
    from engine.runtime.loading import check_layout, resolve_model_dir

    config, given = config_from_args(args)
    if "student_timesteps" in given:
        config.student_timesteps = parse_timesteps(args.student_timesteps, "--student-timesteps")
        if "student_steps" not in given:
            config.student_steps = len(config.student_timesteps)
            given.add("student_steps")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise EngineError(f"--max-minutes must be positive, not {args.max_minutes}.")
    out = Path(config.out)
    saved_path = out / "config.json"
    if args.resume:
        if not saved_path.is_file():
            raise EngineError(f"{out} has no config.json to resume; start the run without "
                              "--resume.")
        config = config.merged_for_resume(DistillConfig.load(saved_path), given)
    elif saved_path.is_file() or latest_checkpoint(out / "checkpoints") is not None:
        raise EngineError(f"{out} already holds a run; pass --resume to continue it or "
                          "choose another --out.")
    config.resolve()
    if config.init_from and not args.resume:
        check_init_folder(Path(config.init_from))
    check_layout(resolve_model_dir(config.teacher))
    from engine.distill.assets import real_data_folder

    real_data_folder(config)
    check_writable_folder(out, "--out")
    return config


def run(args) -> int:
    from engine.distill.progress import ProgressReporter

    # Values are checked by DistillConfig.validate (one-line errors, exit 2), not argparse.
    json_mode = args.progress == "json"
    if args.low_priority and not lower_cpu_priority():
        print("--low-priority: this OS offers no way to lower the priority; running as is.",
              file=sys.stderr)
    try:
        config = prepare_config(args)
        from engine.distill.trainer import DistillTrainer

        trainer = DistillTrainer(config)
        step = trainer.train(max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    except EngineError as error:
        if json_mode:
            ProgressReporter("json").error(str(error))
        raise
    except Exception as error:
        if json_mode:
            ProgressReporter("json").error(f"{type(error).__name__}: {error}")
        raise
    if trainer.accelerator.is_main_process and not json_mode:
        print(f"step {step}/{config.steps}; student in {trainer.run.student_dir}",
              file=sys.stderr)
    return 0
