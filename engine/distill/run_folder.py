"""The run folder of a distillation run and the student model folder it exports.

runs/NAME/
    config.json             DistillConfig
    metrics.jsonl           one JSON object per log step: step, losses, lr, it_s, eta_s, time
    samples/step-N.png      grid of the fixed sample prompts and seeds at step N
    checkpoints/step-N/     accelerate state + checkpoint.json (the step); last K kept
    student/                loadable model folder (docs/model-format.md), refreshed atomically
    lora/pytorch_lora_weights.safetensors
                            with --lora-rank: the student as a standard LoRA file over the
                            teacher (diffusers / PEFT naming), refreshed with student/
    regression_pairs.pt     cached teacher pairs (DMD regression loss)
    real_latents.pt         cached latents of --real-data (GAN)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engine.runtime.loading import PROMPTS_FILE

# the teacher's parts a student folder shares (SDXL's second text encoder and tokenizer too)
STATIC_PARTS = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                "tokenizer_2")


class RunFolder:
    """Paths and writers of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples_dir = self.path / "samples"
        self.checkpoints_dir = self.path / "checkpoints"
        self.student_dir = self.path / "student"
        self.lora_path = self.path / "lora" / "pytorch_lora_weights.safetensors"

    def create(self) -> None:
        for folder in (self.path, self.samples_dir, self.checkpoints_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: dict) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop log lines past the checkpoint so metrics.jsonl never repeats a step."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line).get("step", 0)) <= after_step:
                    kept.append(line)
            except (json.JSONDecodeError, TypeError, ValueError):
                continue
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(self.metrics_path)

    def sample_path(self, step: int) -> Path:
        return self.samples_dir / f"step-{step}.png"


def save_grid(images: torch.Tensor, path: Path, columns: int = 4) -> None:
    """(N, 3, H, W) in [-1, 1] -> one PNG grid with a 2-pixel white gutter."""
    from PIL import Image

    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    count, _, height, width = images.shape
    columns = min(columns, count)
    rows = (count + columns - 1) // columns
    gutter = 2
    grid = np.full((rows * (height + gutter) - gutter, columns * (width + gutter) - gutter, 3),
                   255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gutter), column * (width + gutter)
        grid[top:top + height, left:left + width] = images[index].permute(1, 2, 0).numpy()
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(grid).save(tmp)
    tmp.replace(path)


# -- student export --------------------------------------------------------------------------
def copy_or_link(source: Path, target: Path) -> None:
    """A real file at target: hard link when possible (same bytes, no copy), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_static_parts(teacher_dir: Path, previous_student: Path | None, target: Path) -> None:
    """Scheduler, autoencoder, text encoder and tokenizer of the teacher, symlink-free.

    Files are taken from the previous student when it has them (hard links, so refreshing
    a multi-GB SD student does not copy the VAE and text encoder again).
    """
    for part in STATIC_PARTS:
        reuse = previous_student / part if previous_student else None
        source = reuse if reuse is not None and reuse.is_dir() else teacher_dir / part
        if not source.is_dir():
            continue
        for file in sorted(source.rglob("*")):
            if file.is_dir():
                continue
            destination = target / part / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            real = file.resolve()  # hub caches hold symlinks into blobs/
            if reuse is not None and source == reuse:
                copy_or_link(real, destination)
            else:
                shutil.copy2(real, destination)


def export_student(student_dir: Path, teacher_dir: Path, student_unet: torch.nn.Module,
                   student_json: dict) -> Path:
    """Write a loadable student folder next to student_dir, then swap it in (atomic rename).

    student_unet must be a plain UNet2DConditionModel (LoRA already merged); it is saved in
    fp16 safetensors. The old folder is removed only after the new one is complete.
    """
    student_dir = Path(student_dir)
    tmp = student_dir.with_name(student_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    previous = student_dir if student_dir.is_dir() else None
    copy_static_parts(Path(teacher_dir), previous, tmp)
    index_path = Path(teacher_dir) / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
    unet_fp16 = student_unet.to(torch.float16)
    unet_fp16.save_pretrained(tmp / "unet", safe_serialization=True)
    (tmp / "student.json").write_text(json.dumps(student_json, indent=1))
    prompts = Path(teacher_dir) / PROMPTS_FILE
    if prompts.is_file():  # the teacher's suggestions suit its student
        shutil.copy2(prompts.resolve(), tmp / PROMPTS_FILE)
    old = student_dir.with_name(student_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if student_dir.exists():
        student_dir.rename(old)
    tmp.rename(student_dir)
    if old.exists():
        shutil.rmtree(old)
    return student_dir
