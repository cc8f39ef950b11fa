"""The app talks to the engine only through its public API (plus default_model, the user
folders of engine.paths and the versions of engine.about)."""

from __future__ import annotations

import ast
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"
ALLOWED_ENGINE_MODULES = {"engine", "engine.api", "engine.recipe", "engine.service",
                          "engine.untrusted", "engine.runtime.loading", "engine.paths",
                          "engine.about"}
FORBIDDEN_PACKAGES = {"torch", "diffusers", "transformers", "onnxruntime", "accelerate"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_app_imports_only_the_engines_public_api():
    for path in [*APP_DIR.glob("*.py"), APP_DIR.parent / "main.py"]:
        for module in imported_modules(path):
            assert module.split(".")[0] not in FORBIDDEN_PACKAGES, f"{path.name} imports {module}"
            if module.split(".")[0] == "engine":
                assert module in ALLOWED_ENGINE_MODULES, f"{path.name} imports {module}"
