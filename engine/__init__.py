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

__all__ = [
    "EngineError",
    "GenerateRequest",
    "GenerateResult",
    "InvalidRequestError",
    "ModelLoadError",
    "StageTimings",
]
