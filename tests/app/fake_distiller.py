"""A stand-in for `python -m engine distill` that speaks its JSON event protocol.

Writes samples/step-N.png, student/unet/, checkpoints/step-N/ and JSON progress lines;
SIGINT or SIGTERM saves a checkpoint and exits 0, like the real trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from PIL import Image


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--teacher", "--out", "--method", "--lr", "--guidance", "--gan-weight",
                 "--regression-weight", "--progress"):
        parser.add_argument(flag)
    for flag in ("--steps", "--batch", "--critic-ratio", "--student-steps"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--low-priority", action="store_true")
    args = parser.parse_args()
    delay = float(os.environ.get("FAKE_DISTILL_DELAY", "0.01"))
    if args.teacher == "broken":
        emit("error", message="The teacher 'broken' could not be loaded.")
        print("error: The teacher 'broken' could not be loaded.", file=sys.stderr)
        return 2
    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    start = 0
    if args.resume:
        done = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
        start = done[-1] if done else 0
    state = {"step": start}

    def save_checkpoint(*_):
        folder = out / "checkpoints" / f"step-{state['step']}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state.json").write_text(json.dumps(state))
        (out / "student" / "unet").mkdir(parents=True, exist_ok=True)
        emit("checkpoint", step=state["step"], path=str(folder), student=str(out / "student"))

    def stop(*_):
        save_checkpoint()
        emit("done", step=state["step"], total=args.steps, student=str(out / "student"),
             stopped=True)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"distilling {args.teacher} with {args.method}", flush=True)
    emit("stage", name="loading teacher", step=1, total=1)
    for step in range(start + 1, args.steps + 1):
        time.sleep(delay)
        state["step"] = step
        emit("progress", step=step, total=args.steps, losses={"dm": 1.0 / step, "fake": 0.5},
             lr=float(args.lr), it_s=10.0, eta_s=(args.steps - step) * delay)
        if step % 2 == 0:
            sample = out / "samples" / f"step-{step}.png"
            Image.new("RGB", (8, 8), (step * 40 % 256, 0, 0)).save(sample)
            emit("sample", step=step, path=str(sample))
    save_checkpoint()
    emit("done", step=state["step"], total=args.steps, student=str(out / "student"),
         stopped=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
