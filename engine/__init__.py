"""DMD Studio engine: model loading, one-step generation, live service, distillation.

Nothing in this package imports Qt; the desktop app in app/ uses only engine.api and
engine.service.
"""

from engine.api import (
    EngineError,
    GenerateRequest,
    GenerateResult,
    InvalidRequestError,
    ModelLoadError,
    StageTimings,
)

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

__all__ = [
    "EngineError",
    "GenerateRequest",
    "GenerateResult",
    "InvalidRequestError",
    "ModelLoadError",
    "StageTimings",
]
