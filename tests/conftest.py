"""Shared fixtures: tiny random pipelines built offline, a no-leftover-threads guard and
read-only folders."""

from __future__ import annotations

import builtins
import errno
import io
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session", autouse=True)
def user_folders(tmp_path_factory):
    """The user's cache, data and config folders (engine.paths) are the session's own: no
    test writes ONNX exports, history or runs into the real ones."""
    from engine.paths import FOLDER_ENV

    with pytest.MonkeyPatch.context() as patch:
        folders = {}
        for kind, variable in FOLDER_ENV.items():
            folders[kind] = tmp_path_factory.mktemp(f"user-{kind}")
            patch.setenv(variable, str(folders[kind]))
        yield folders


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 32-px SD-style pipeline: 4-channel UNet, AutoencoderTiny, CLIP text model."""
    from engine.pipeline.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory):
    """The tiny pipeline as a one-step student with student.json."""
    from engine.pipeline.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "student",
                               student_timesteps=[999])


@pytest.fixture(scope="session")
def tiny_sketch_model_dir(tmp_path_factory):
    """An 8-channel (latent + sketch latent) UNet with a pooled-text class embedding."""
    from engine.pipeline.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sketch", in_channels=8,
                               pooled_text=True)


@pytest.fixture
def one_thread():
    """Small tensors run fastest (and steadiest on a shared machine) on one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_thread_leak():
    """Fail a test that leaves a non-daemon-safe worker thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and t.name.startswith("generation-worker")]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): writes under folder fail with EROFS, as on a read-only mount (a
    chmod alone does not stop root)."""
    roots: list[str] = []

    def blocked(path) -> bool:
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False
        return any(path == root or path.startswith(root + os.sep) for root in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guard(original, is_write):
        def wrapper(path, *args, **kwargs):
            if blocked(path) and is_write(*args, **kwargs):
                refuse(path)
            return original(path, *args, **kwargs)
        return wrapper

    def writes_flags(flags=0, *rest, **kwargs):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

    def writes_mode(mode="r", *rest, **kwargs):
        return isinstance(mode, str) and any(c in mode for c in "wax+")

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, lambda *a, **k: True))
    monkeypatch.setattr(os, "open", guard(os.open, writes_flags))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, writes_mode))
    monkeypatch.setattr(io, "open", builtins.open)

    def make(folder: Path) -> Path:
        Path(folder).mkdir(parents=True, exist_ok=True)
        roots.append(os.path.abspath(folder))
        return Path(folder)

    return make


@pytest.fixture(scope="session")
def tiny_family_models(tmp_path_factory):
    """{family: (diffusers folder, the same model as an original-layout .safetensors file)}
    for tiny random SD 1.x, SD 2.x (v-prediction) and SDXL models."""
    from engine.pipeline.tiny import FAMILIES, build_tiny_pipeline
    from tests.engine.original_layout import write_single_file

    root = tmp_path_factory.mktemp("families")
    models = {}
    for family in FAMILIES:
        folder = build_tiny_pipeline(root / family, family=family)
        models[family] = (folder, write_single_file(folder, family,
                                                    root / f"{family}.safetensors"))
    return models
