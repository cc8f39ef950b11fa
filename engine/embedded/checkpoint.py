"""Run folders: atomic, sharded, exactly-resumable checkpoints; metrics; stop signals.

A checkpoint is runs/NAME/checkpoints/step-N/ holding:
    weights-XXXXX.safetensors  fp16 weights for sampling/export (EMA when there is one), <=16 MiB
    state-XXXXX.safetensors    fp32 master weights, EMA, optimizer moments, RNG tensors
    state.json                 step, optimizer param groups, LR scheduler, numpy RNG, extras
It is written to a temporary folder and renamed, so a crash never leaves half a checkpoint;
only the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MAX_SHARD_BYTES = 16 * 1024 * 1024
STEP_DIR = re.compile(r"^step-(\d+)$")


def save_sharded(tensors: dict[str, torch.Tensor], folder: Path, prefix: str,
                 dtype: torch.dtype | None = None, max_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write tensors into safetensors shards of at most max_bytes each (one tensor may exceed)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous().clone()
        size += nbytes
    names = []
    for index, shard in enumerate(shards, start=1):
        name = f"{prefix}-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name))
        names.append(name)
    return names


def load_sharded(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob(f"{prefix}-*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as flat tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{param_id}.{key}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      param_groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, param_id, key = name.split(".", 2)
            state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def save_checkpoint(run_dir: Path, step: int, weights: dict[str, torch.Tensor],
                    state_tensors: dict[str, torch.Tensor], state: dict, keep: int = 2) -> Path:
    """Atomically write checkpoints/step-N and delete all but the newest `keep`."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".tmp-step-", dir=folder))
    try:
        save_sharded(weights, temp, "weights", dtype=torch.float16)
        save_sharded(state_tensors, temp, "state")
        (temp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        final = folder / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(state.json contents, fp32 state tensors) of one checkpoint folder."""
    state = json.loads((Path(path) / "state.json").read_text())
    return state, load_sharded(path, "state")


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = value
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state_dict.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


class StopFlag:
    """Set by SIGINT/SIGTERM, or once max_minutes (0: never) have passed, so the training
    loop can checkpoint and exit cleanly."""

    def __init__(self, max_minutes: float = 0) -> None:
        self.signalled = False
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signalled or (self.deadline is not None and time.monotonic() >= self.deadline)

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """Appends one JSON object per logged step to run_dir/metrics.jsonl."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def write_json(path: Path, data: dict) -> None:
    path = Path(path)
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    temp.replace(path)
