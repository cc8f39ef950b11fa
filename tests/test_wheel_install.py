"""The wheel installs as an application: built offline from this tree, installed into a fresh
virtual environment (torch and the other dependencies come from this environment's
site-packages, nothing is downloaded), it draws with the embedded model it carries from a
folder outside the source tree, while its package folders refuse every write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "app", "dmd_assets")

# Runs a module as __main__ with writes under the given folders refused (EROFS), as on a
# read-only mount: an audit hook, since chmod alone does not stop root.
# Usage: python -c GUARD FOLDER[:FOLDER...] MODULE ARGS...
GUARD = """
import errno, os, runpy, sys
ROOTS = tuple(os.path.abspath(root) for root in sys.argv.pop(1).split(os.pathsep))
CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate",
           "os.chmod", "os.symlink", "os.link", "shutil.rmtree", "shutil.move"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def blocked(path):
    try:
        path = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return False
    return any(path == root or path.startswith(root + os.sep) for root in ROOTS)

def refuse_writes(event, args):
    if event == "open":
        mode, flags = args[1], args[2] or 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) \\
            or bool(flags & WRITE_FLAGS)
        paths = args[:1] if writing else ()
    elif event in CHANGES:
        paths = args[:2] if event in ("os.rename", "os.replace", "shutil.move") else args[:1]
    else:
        return
    for path in paths:
        if blocked(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

sys.addaudithook(refuse_writes)
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def outside_the_wheel(folder: str, names: list[str]) -> set[str]:
    """What the copy of the tree leaves out: git, caches, earlier builds, local runs and
    data, and ONNX exports in model folders."""
    skipped = {name for name in names if name in ("__pycache__", ".pytest_cache", ".ruff_cache")
               or name.endswith(".egg-info")}
    if Path(folder).parent == REPO / "assets" / "models":
        skipped |= {name for name in names if name.startswith("onnx")}
    if Path(folder) == REPO:
        skipped |= {".git", "build", "dist", "runs", "data", ".whl", ".gpu"} & set(names)
    return skipped


def run(command: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[:4]}: {result.stderr[-3000:]}"
    return result


def assert_drawn(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] >= 64 and pixels.std() > 10, f"{path} is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100, f"{path} is flat"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, its bin folder, environment) with the wheel of this tree installed."""
    root = tmp_path_factory.mktemp("wheel-install")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1",
               QT_QPA_PLATFORM="offscreen", PYTHONNOUSERSITE="1",
               DMD_STUDIO_CACHE=str(root / "cache"), DMD_STUDIO_DATA=str(root / "data"),
               DMD_STUDIO_CONFIG=str(root / "config"), HOME=str(root / "home"))
    # built from a copy: no build/ folder of earlier builds (stale modules) gets in, none is left
    source = shutil.copytree(REPO, root / "source", ignore=outside_the_wheel)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         source, "-w", root / "dist"], cwd=root, env=env)
    shutil.rmtree(source)
    wheels = list((root / "dist").glob("dmd_studio-*.whl"))
    assert len(wheels) == 1, wheels
    # pip's own interpreter comes from the system site-packages (--without-pip: no download)
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
         root / "venv"], cwd=root, env=env)
    scripts = Path(sysconfig.get_path("scripts", vars={"base": str(root / "venv"),
                                                        "platbase": str(root / "venv")}))
    python = scripts / ("python.exe" if sys.platform == "win32" else "python")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall",
         wheels[0]], cwd=root, env=env)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=root, env=env).stdout.strip())
    return {"python": python, "scripts": scripts, "env": env, "wheel": wheels[0],
            "site": site, "work": root / "elsewhere"}


def test_the_wheel_carries_the_models_and_data_but_no_exports(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for model in ("teacher", "student"):
        assert f"dmd_assets/models/{model}/unet/diffusion_pytorch_model.safetensors" in names
        assert f"dmd_assets/models/{model}/README.md" in names
    assert "dmd_assets/models/evaluator/model.safetensors" in names
    assert "dmd_assets/models/recognizer/model.safetensors" in names
    assert "dmd_assets/data/emoji-phrases.json" in names
    assert "engine/runtime/onnx_backend.py" in names and "app/main_window.py" in names
    assert not [name for name in names if name.startswith("dmd_assets/") and "/onnx" in name]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert "dmd-studio = app.main_window:run_app" in text


def test_the_installed_app_draws_from_a_read_only_package(installed):
    python, env, site = installed["python"], installed["env"], installed["site"]
    work = installed["work"]
    work.mkdir()
    folders = [site / name for name in PACKAGES]
    where = run([python, "-c", "import engine, engine.paths as p; print(engine.__file__); "
                 "print(p.ASSETS_ROOT)"], cwd=work, env=env).stdout.split()
    assert [Path(line) for line in where] == [site / "engine" / "__init__.py",
                                              site / "dmd_assets"]  # not the source tree
    for folder in folders:  # read-only for users; the guard below stops root as well
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    guarded = [python, "-c", GUARD, os.pathsep.join(map(str, folders)), "engine"]
    before = sorted(str(path) for folder in folders for path in folder.rglob("*"))

    version = run([installed["scripts"] / "dmd-studio", "--version"], cwd=work, env=env)
    import engine

    assert version.stdout == f"dmd-studio {engine.__version__}\n"
    assert run([*guarded, "--version"], cwd=work, env=env).stdout == version.stdout
    run([*guarded, "generate", "--prompt", "red apple", "--out", "X.png"], cwd=work, env=env)
    assert_drawn(work / "X.png")
    run([*guarded, "generate", "--prompt", "red apple", "--backend", "onnx", "--device", "cpu",
         "--out", "onnx.png"], cwd=work, env=env)
    assert_drawn(work / "onnx.png")
    exports = list((Path(env["DMD_STUDIO_CACHE"]) / "onnx").glob("*-onnx/manifest.json"))
    assert len(exports) == 1  # the export went to the user's cache folder
    after = sorted(str(path) for folder in folders for path in folder.rglob("*"))
    assert after == before  # nothing was written into the installed package
