"""What the About dialog shows: the versions in use and a model's card (Qt-free)."""

from __future__ import annotations

import importlib
import platform
from pathlib import Path

from engine import __version__

CARD_FILE = "README.md"
CARD_LINES = 12  # the first lines of a model card: its title and summary
CARD_MAX_BYTES = 64 * 1024  # a card is read only this far


def module_version(name: str) -> str:
    """A module's __version__ (importing it), or "not installed"."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def onnx_providers() -> list[str]:
    """The execution providers this onnxruntime offers ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def versions() -> dict[str, str]:
    """{name: version} of DMD Studio, Python and the libraries that run the models."""
    providers = onnx_providers()
    onnx = module_version("onnxruntime")
    if providers:
        onnx += " (" + ", ".join(name.removesuffix("ExecutionProvider") for name in providers) \
            + ")"
    return {"DMD Studio": __version__, "Python": platform.python_version(),
            "torch": module_version("torch"), "diffusers": module_version("diffusers"),
            "onnxruntime": onnx}


def model_card(model_dir: Path | str | None, lines: int = CARD_LINES) -> str:
    """The first lines of a model folder's README.md ("" when it has none or it is
    unreadable)."""
    if not model_dir:
        return ""
    try:
        with open(Path(model_dir) / CARD_FILE, "rb") as stream:
            text = stream.read(CARD_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[:lines]).strip()
