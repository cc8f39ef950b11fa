"""Where DMD Studio reads its shipped assets and writes everything else.

Assets (the embedded models, assets/data) are read from the source tree in a clone and from
the `dmd_assets` package an installed wheel carries. What the engine and the app write goes
to the user's folders, never into the installed package (which may be read-only):

- cache (ONNX exports, TensorRT engines): $DMD_STUDIO_CACHE, else ~/.cache/dmd-studio on
  Linux ($XDG_CACHE_HOME), ~/Library/Caches/dmd-studio on macOS,
  %LOCALAPPDATA%\\dmd-studio\\Cache on Windows;
- data (the history strip, distillation runs started from the app): $DMD_STUDIO_DATA, else
  ~/.local/share/dmd-studio ($XDG_DATA_HOME), ~/Library/Application Support/dmd-studio,
  %LOCALAPPDATA%\\dmd-studio;
- config (settings.json): $DMD_STUDIO_CONFIG, else ~/.config/dmd-studio ($XDG_CONFIG_HOME),
  ~/Library/Application Support/dmd-studio, %APPDATA%\\dmd-studio.

This module imports nothing else from the engine, so every layer may use it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

APP_FOLDER = "dmd-studio"
ASSETS_PACKAGE = "dmd_assets"  # the wheel's copy of assets/ (pyproject: package-dir)
FOLDER_ENV = {"cache": "DMD_STUDIO_CACHE", "data": "DMD_STUDIO_DATA",
              "config": "DMD_STUDIO_CONFIG"}
XDG = {"cache": ("XDG_CACHE_HOME", ".cache"), "data": ("XDG_DATA_HOME", ".local/share"),
       "config": ("XDG_CONFIG_HOME", ".config")}
MACOS = {"cache": "Library/Caches", "data": "Library/Application Support",
         "config": "Library/Application Support"}
# Windows: (environment variable, fallback under the home folder, sub-folder of ours)
WINDOWS = {"cache": ("LOCALAPPDATA", "AppData/Local", "Cache"),
           "data": ("LOCALAPPDATA", "AppData/Local", ""),
           "config": ("APPDATA", "AppData/Roaming", "")}


def source_tree_assets(engine_dir: Path | None = None) -> Path | None:
    """assets/ of the source tree this engine runs from (a clone), or None when installed."""
    root = (engine_dir or Path(__file__).resolve().parent).parent
    if (root / "pyproject.toml").is_file() and (root / "assets").is_dir():
        return root / "assets"
    return None


def assets_root() -> Path:
    """The folder holding models/ and data/: the clone's assets/, else the installed
    dmd_assets package (a path that may not exist when neither is there)."""
    local = source_tree_assets()
    if local is not None:
        return local
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[1] / "assets"


ASSETS_ROOT = assets_root()


def user_folder(kind: str, platform: str | None = None, environ: Mapping[str, str] | None = None,
                home: Path | None = None) -> Path:
    """The user's cache, data or config folder for DMD Studio on this (or the given) platform;
    the DMD_STUDIO_CACHE / _DATA / _CONFIG variables override it."""
    if kind not in FOLDER_ENV:
        raise ValueError(f"Unknown folder kind {kind!r}; use cache, data or config.")
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    override = environ.get(FOLDER_ENV[kind], "").strip()
    if override:
        return Path(override).expanduser()
    home = home or Path.home()
    if platform == "win32":
        variable, fallback, sub = WINDOWS[kind]
        base = Path(environ.get(variable) or home / fallback) / APP_FOLDER
        return base / sub if sub else base
    if platform == "darwin":
        return home / MACOS[kind] / APP_FOLDER
    variable, fallback = XDG[kind]
    base = environ.get(variable, "").strip()
    # the XDG rule: a relative value is invalid and ignored
    return (Path(base) if base and Path(base).is_absolute() else home / fallback) / APP_FOLDER


def cache_dir() -> Path:
    return user_folder("cache")


def data_dir() -> Path:
    return user_folder("data")


def config_dir() -> Path:
    return user_folder("config")


def writable_folder(folder: Path) -> bool:
    """Whether folder exists or can be made, and a file can be created in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def unwritable_message(folder: Path, kind: str) -> str:
    """That this user folder cannot be written, and the fix (a clause: callers lead in)."""
    return (f"the {kind} folder {folder} cannot be written; make it writable or set "
            f"{FOLDER_ENV[kind]} to a folder that is")
