"""Shared fixtures: tiny random pipelines built offline, and a no-leftover-threads guard."""

from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


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
