"""Arguments and start-up checks shared by the resumable training commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.api import EngineError


def add_run_arguments(parser: argparse.ArgumentParser, export_help: str) -> None:
    """--resume, --export-only, --device and --threads, the same for every trainer."""
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--export-only", action="store_true", help=export_help)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: default; use 1 while other jobs share the CPU)")
    parser.add_argument("--max-minutes", type=float, default=0,
                        help="stop after this many minutes of training steps as Ctrl-C would "
                             "(checkpoint, then exit 0); 0: no limit")


def prepare_run(args: argparse.Namespace) -> list[Path]:
    """Validate the shared arguments, set torch threads; the run's checkpoints, oldest first.

    Without --resume/--export-only the run folder must have no checkpoints (never overwrite
    a run by accident); with them it must have at least one.
    """
    import torch

    from engine.embedded.checkpoint import checkpoint_dirs

    if args.steps < 1 or args.batch < 1:
        raise EngineError("--steps and --batch must be positive.")
    if args.max_minutes < 0:
        raise EngineError(f"--max-minutes must be zero or positive, not {args.max_minutes}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for but no CUDA GPU is available.")
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = checkpoint_dirs(args.out)
    resuming = args.resume or args.export_only
    if resuming and not checkpoints:
        raise EngineError(f"No checkpoint in {args.out}/checkpoints to resume from.")
    if not resuming and checkpoints:
        raise EngineError(f"{args.out} already has checkpoints; pass --resume or another --out.")
    return checkpoints
