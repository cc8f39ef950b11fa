"""Runs `python -m engine distill ... --progress json` in a QProcess and parses its output.

A crash in training never takes the canvas down: the trainer is another process. Events
are JSON objects on stdout, one a line (engine/distill/progress.py): "progress" (step,
total, losses, lr, it_s, eta_s), "stage", "sample", "checkpoint", "done", "error"; every
other line is log text. Cancel sends SIGINT (the trainer saves a checkpoint and exits 0), then
escalates to terminate and kill if it does not stop in time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from engine.paths import data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]  # the folder engine/ is imported from
ENGINE_COMMAND = [sys.executable, "-m", "engine", "distill"]
TERMINATE_AFTER_MS = 60_000  # after SIGINT, wait this long for the checkpoint, then SIGTERM
KILL_AFTER_MS = 30_000  # after SIGTERM, wait this long, then SIGKILL


def runs_folder() -> Path:
    """Where a run started in the app goes unless another folder is chosen."""
    return data_dir() / "runs"


def trainer_folder() -> Path:
    """The trainer's working directory, against which relative run folders resolve: the
    user's data folder (the home folder while that cannot be made)."""
    folder = data_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path.home()
    return folder


@dataclass
class DistillOptions:
    """The command line of one distillation run."""

    teacher: str  # "embedded", a folder or a hub id
    out_dir: str  # run folder
    method: str = "dmd2"  # "dmd" or "dmd2"
    steps: int = 2000  # generator updates
    batch: int = 16  # student samples per step
    lr: float = 5e-5  # student and critic learning rate
    guidance: float = 4.0  # teacher CFG scale
    critic_ratio: int = 2  # critic updates per generator update
    gan_weight: float = 0.0  # DMD2 GAN weight; > 0 needs real images
    regression_weight: float = 0.25  # DMD regression loss weight; 0 turns it off
    student_steps: int = 1  # 1, 2 or 4
    init_from: str = ""  # a student model or checkpoint folder ("": start from the teacher)
    critic_warmup_steps: int = 0  # first steps train the critic alone
    ema_decay: float = 0.0  # 0: off
    resume: bool = False  # continue the run in out_dir from its newest checkpoint
    extra: tuple[str, ...] = ()  # further flags, e.g. ("--real-data", "data/emoji")

    def arguments(self) -> list[str]:
        arguments = [
            "--teacher", self.teacher, "--out", self.out_dir, "--method", self.method,
            "--steps", str(self.steps), "--batch", str(self.batch), "--lr", repr(self.lr),
            "--guidance", repr(self.guidance), "--critic-ratio", str(self.critic_ratio),
            "--gan-weight", repr(self.gan_weight),
            "--regression-weight", repr(self.regression_weight),
            "--student-steps", str(self.student_steps), "--progress", "json",
            "--low-priority",  # the live canvas shares these cores and must stay fast
        ]
        if self.init_from:
            arguments += ["--init-from", self.init_from]
        if self.critic_warmup_steps:
            arguments += ["--critic-warmup-steps", str(self.critic_warmup_steps)]
        if self.ema_decay:
            arguments += ["--ema-decay", repr(self.ema_decay)]
        return arguments + (["--resume"] if self.resume else []) + list(self.extra)


def parse_event_line(line: str) -> dict | None:
    """A trainer event (a JSON object with "event", or step and total), else None (log)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    if "event" not in event:
        if "step" not in event or "total" not in event:
            return None
        event = {"event": "progress", **event}  # a bare progress object
    return event


class DistillProcess(QObject):
    """One trainer process at a time; signals arrive on the UI thread (no threads here)."""

    event_received = Signal(dict)  # a parsed trainer event
    log_line = Signal(str)  # any other stdout/stderr line
    running_changed = Signal(bool)
    finished = Signal(bool, str)  # success, one-line summary

    def __init__(self, command: list[str] | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.command = list(command or ENGINE_COMMAND)
        self.process: QProcess | None = None
        self.cancelling = False
        self.last_progress: dict | None = None  # newest "progress" event
        self.last_error: str | None = None  # message of the newest "error" event
        self._stdout_buffer = b""
        self._stderr_buffer = b""
        self._recent_errors: deque[str] = deque(maxlen=5)
        self._escalation = QTimer(self)
        self._escalation.setSingleShot(True)
        self._escalation.timeout.connect(self._escalate)

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, options: DistillOptions) -> None:
        """Launch the trainer; a second start while one runs is refused."""
        if self.is_running():
            raise RuntimeError("A distillation is already running; cancel it first.")
        if self.process is not None:
            self.process.deleteLater()  # the finished run's QProcess
        process = QProcess(self)
        process.setWorkingDirectory(str(trainer_folder()))
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("PYTHONUNBUFFERED", "1")
        python_path = environment.value("PYTHONPATH", "")
        environment.insert("PYTHONPATH", os.pathsep.join(p for p in (str(REPO_ROOT), python_path)
                                                         if p))
        process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self.process, self.cancelling = process, False
        self.last_progress = self.last_error = None
        self._stdout_buffer = self._stderr_buffer = b""
        self._recent_errors.clear()
        arguments = self.command[1:] + options.arguments()
        self.log_line.emit("$ " + " ".join([Path(self.command[0]).name, *arguments]))
        process.start(self.command[0], arguments)
        self.running_changed.emit(True)

    def cancel(self) -> None:
        """Ask the trainer to save a checkpoint and stop (SIGINT), escalating if it hangs."""
        if not self.is_running():
            return
        self.cancelling = True
        self.log_line.emit("Cancelling: asking the trainer to save a checkpoint and stop…")
        pid = self.process.processId()
        if sys.platform != "win32" and pid > 0:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                return  # it exited meanwhile; finished() follows
            self._escalation.start(TERMINATE_AFTER_MS)
        else:
            self.process.terminate()
            self._escalation.start(KILL_AFTER_MS)

    def _escalate(self) -> None:
        if not self.is_running():
            return
        if self._escalation.interval() == TERMINATE_AFTER_MS:
            self.log_line.emit("The trainer did not stop after SIGINT; sending SIGTERM.")
            self.process.terminate()
            self._escalation.start(KILL_AFTER_MS)
        else:
            self.log_line.emit("The trainer did not stop; killing it.")
            self.process.kill()

    def shutdown(self, timeout_ms: int = 60_000) -> None:
        """Cancel and wait (blocking) for the process to end; used when the app closes."""
        if not self.is_running():
            return
        self.cancel()
        if not self.process.waitForFinished(timeout_ms):
            self.process.kill()
            self.process.waitForFinished(5_000)

    # -- output ----------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        self._stdout_buffer = self._split_lines(
            self._stdout_buffer + bytes(self.process.readAllStandardOutput()), stdout=True)

    def _read_stderr(self) -> None:
        self._stderr_buffer = self._split_lines(
            self._stderr_buffer + bytes(self.process.readAllStandardError()), stdout=False)

    def _split_lines(self, data: bytes, stdout: bool) -> bytes:
        *lines, rest = data.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", "replace").rstrip("\r"), stdout)
        return rest

    def _handle_line(self, line: str, stdout: bool) -> None:
        event = parse_event_line(line) if stdout else None
        if event is not None:
            if event["event"] == "progress":
                self.last_progress = event
            elif event["event"] == "error":
                self.last_error = str(event.get("message", "unknown error"))
            self.event_received.emit(event)
            return
        if line.strip():
            if not stdout:
                self._recent_errors.append(line.strip())
            self.log_line.emit(line)

    # -- end -------------------------------------------------------------------------------
    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._escalation.stop()
        for buffer, stdout in ((self._stdout_buffer, True), (self._stderr_buffer, False)):
            if buffer:
                self._handle_line(buffer.decode("utf-8", "replace"), stdout)
        self._stdout_buffer = self._stderr_buffer = b""
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        if self.cancelling and not crashed and exit_code in (0, 130):
            success, summary = True, "Cancelled; a checkpoint was saved, press Resume to go on."
        elif self.cancelling:
            success, summary = False, "Cancelled; the trainer had to be stopped forcibly."
        elif not crashed and exit_code == 0:
            success, summary = True, "Distillation finished."
        else:
            detail = self.last_error or (self._recent_errors[-1] if self._recent_errors
                                         else "no error output")
            how = "crashed" if crashed else f"exited with code {exit_code}"
            success, summary = False, f"Distillation {how}: {detail}"
        self.running_changed.emit(False)
        self.finished.emit(success, summary)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._escalation.stop()
            self.running_changed.emit(False)
            self.finished.emit(False, f"Could not start the trainer ({self.command[0]}).")
