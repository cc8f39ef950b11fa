"""Atomic training checkpoints: accelerate state in a temporary folder, renamed when complete.

checkpoints/step-N/ holds accelerate's save_state output (models, optimizers, registered
LR schedulers, every rank's python/numpy/torch RNG state) and checkpoint.json with the
step. The step is always read from checkpoint.json, never parsed from the folder name.
The last K complete checkpoints are kept; older ones are deleted only after the new one
has been renamed into place.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from engine.api import EngineError, os_error_message

CHECKPOINT_FILE = "checkpoint.json"
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1
LOW_SPACE_BYTES = 64 * 2**20  # a failed write with less free space than this: the disk is full
# torch.save's C++ writer reports a failed write as a RuntimeError with these words
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "file write failed", "inline_container")


def write_failure(error: Exception, folder: Path) -> EngineError:
    """One sentence for a checkpoint that could not be written: the folder and the cause
    (a full disk, named as such, also when torch's writer only says its write failed)."""
    if isinstance(error, OSError):
        return EngineError("Checkpoint not saved: " + os_error_message(error, folder, "write"))
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        free = None
    cause = "the disk is full" if free is not None and free < LOW_SPACE_BYTES \
        else "a write failed"
    return EngineError(f"Checkpoint not saved: could not write {folder}: {cause}.")


def read_step(folder: Path) -> int | None:
    """The step stored in a complete checkpoint folder, or None for anything else."""
    try:
        info = json.loads((Path(folder) / CHECKPOINT_FILE).read_text())
        return int(info["step"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    if Path(checkpoints_dir).is_dir():
        for folder in Path(checkpoints_dir).iterdir():
            if folder.is_dir() and not folder.name.startswith(TMP_PREFIX):
                step = read_step(folder)
                if step is not None:
                    found.append((step, folder))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def remove_partial(checkpoints_dir: Path) -> None:
    """Delete temporary folders left by a run that died while saving."""
    if Path(checkpoints_dir).is_dir():
        for folder in Path(checkpoints_dir).iterdir():
            if folder.name.startswith(TMP_PREFIX):
                shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(accelerator, checkpoints_dir: Path, step: int, keep: int) -> Path:
    """Save accelerate state for step (all ranks call this); returns the final folder."""
    checkpoints_dir = Path(checkpoints_dir)
    tmp = checkpoints_dir / f"{TMP_PREFIX}step-{step}"  # same name on every rank
    final = checkpoints_dir / f"step-{step}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            info = {"step": step, "format": FORMAT_VERSION, "time": time.time()}
            (tmp / CHECKPOINT_FILE).write_text(json.dumps(info, indent=1))
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not any(
                words in str(error) for words in TORCH_WRITE_FAILURES):
            raise
        failure = write_failure(error, tmp)  # before the partial write's space is freed
        shutil.rmtree(tmp, ignore_errors=True)
        raise failure from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # e.g. a stop signal right after a periodic save of this step
            stale = checkpoints_dir / f"{TMP_PREFIX}old-step-{step}"
            final.rename(stale)
            tmp.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            tmp.rename(final)
        prune_checkpoints(checkpoints_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (by stored step)."""
    found = complete_checkpoints(checkpoints_dir)
    for _, folder in found[:-max(1, keep)]:
        shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(accelerator, folder: Path) -> int:
    """Restore accelerate state from a complete checkpoint; returns its step."""
    step = read_step(folder)
    if step is None:
        raise ValueError(f"{folder} is not a complete checkpoint")
    accelerator.load_state(str(folder))
    return step
