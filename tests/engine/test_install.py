"""Installing as an application: user folders, assets, devices and providers chosen from
what is installed (faked here: only the CPU paths run on this hardware), and the version."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.api import EngineError
from engine.paths import source_tree_assets, unwritable_message, user_folder, writable_folder

REPO = Path(__file__).resolve().parents[2]
HOME = Path("/home/ada")
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider",
       "CoreMLExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- user folders ------------------------------------------------------------------------------
@pytest.mark.parametrize(("platform", "environ", "expected"), [
    ("linux", {}, {"cache": ".cache/dmd-studio", "data": ".local/share/dmd-studio",
                   "config": ".config/dmd-studio"}),
    ("darwin", {}, {"cache": "Library/Caches/dmd-studio",
                    "data": "Library/Application Support/dmd-studio",
                    "config": "Library/Application Support/dmd-studio"}),
    ("win32", {}, {"cache": "AppData/Local/dmd-studio/Cache", "data": "AppData/Local/dmd-studio",
                   "config": "AppData/Roaming/dmd-studio"}),
])
def test_user_folders_follow_each_platforms_rule(platform, environ, expected):
    for kind, relative in expected.items():
        assert user_folder(kind, platform, environ, HOME) == HOME / relative


def test_environment_variables_move_the_user_folders():
    xdg = {"XDG_CACHE_HOME": "/fast/cache", "XDG_DATA_HOME": "relative/is/ignored"}
    assert user_folder("cache", "linux", xdg, HOME) == Path("/fast/cache/dmd-studio")
    assert user_folder("data", "linux", xdg, HOME) == HOME / ".local/share/dmd-studio"
    windows = {"LOCALAPPDATA": "D:/Local", "APPDATA": "D:/Roaming"}
    assert user_folder("cache", "win32", windows, HOME) == Path("D:/Local/dmd-studio/Cache")
    assert user_folder("config", "win32", windows, HOME) == Path("D:/Roaming/dmd-studio")
    for platform in ("linux", "darwin", "win32"):
        assert user_folder("cache", platform, {"DMD_STUDIO_CACHE": "/mine"}, HOME) == \
            Path("/mine")
    with pytest.raises(ValueError, match="Unknown folder kind"):
        user_folder("music", "linux", {}, HOME)


def test_the_session_uses_its_own_user_folders(user_folders):
    from engine.paths import cache_dir, config_dir, data_dir

    assert (cache_dir(), data_dir(), config_dir()) == \
        (user_folders["cache"], user_folders["data"], user_folders["config"])


def test_an_unwritable_folder_is_one_sentence_naming_the_fix(tmp_path, read_only):
    locked = read_only(tmp_path / "locked")
    assert not writable_folder(locked) and not writable_folder(locked / "cache")
    assert writable_folder(tmp_path / "new" / "folder")
    message = unwritable_message(locked, "cache")
    assert message == (f"the cache folder {locked} cannot be written; make it writable or set "
                       "DMD_STUDIO_CACHE to a folder that is")


# -- assets --------------------------------------------------------------------------------------
def test_assets_come_from_the_clone_or_the_installed_package(tmp_path):
    from engine.paths import ASSETS_ROOT
    from engine.runtime.loading import ASSETS_DIR

    assert ASSETS_ROOT == REPO / "assets" and ASSETS_DIR == REPO / "assets" / "models"
    installed = tmp_path / "site-packages"
    (installed / "engine").mkdir(parents=True)
    (installed / "assets").mkdir()  # not a source tree: no pyproject.toml beside it
    assert source_tree_assets(installed / "engine") is None
    (installed / "pyproject.toml").write_text("")
    assert source_tree_assets(installed / "engine") == installed / "assets"


def test_the_package_list_names_every_package_and_the_assets():
    config = pyproject()
    setuptools = config["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(REPO).parts)
             for top in ("engine", "app") for path in (REPO / top).rglob("__init__.py")}
    listed = set(setuptools["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to pyproject.toml's packages"
    assert listed - found == {"dmd_assets"} and setuptools["package-dir"]["dmd_assets"] == "assets"
    patterns = setuptools["package-data"]["dmd_assets"]
    shipped = {path for pattern in patterns for path in (REPO / "assets").glob(pattern)}
    assert REPO / "assets/models/student/unet/diffusion_pytorch_model.safetensors" in shipped
    assert REPO / "assets/data/emoji-phrases.json" in shipped
    exports = [path for path in shipped
               if any(part.startswith("onnx") for part in path.relative_to(REPO).parts)]
    assert not exports  # a clone's exports in a model folder never ship


def test_the_version_has_one_source():
    import engine
    from engine.__main__ import main

    config = pyproject()
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engine.__version__"}
    tree = ast.parse((REPO / "engine" / "__init__.py").read_text(encoding="utf-8"))
    assert any(isinstance(node, ast.Assign) and node.targets[0].id == "__version__"
               for node in tree.body)  # static: setuptools reads it without importing
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert engine.__version__.count(".") == 2


def test_python_m_engine_version_prints_one_line(capsys):
    from engine.__main__ import main

    with pytest.raises(SystemExit):
        main(["--version"])
    import engine

    assert capsys.readouterr().out == f"dmd-studio {engine.__version__}\n"


# -- devices -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    import torch

    from engine.runtime import torch_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch_backend, "mps_available", lambda: mps)
    assert torch_backend.pick_device("auto") == expected


def test_a_device_torch_cannot_see_is_one_sentence_naming_the_fix(monkeypatch):
    import torch

    from engine.runtime import torch_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch_backend, "mps_available", lambda: False)
    with pytest.raises(EngineError, match=r"PyTorch sees no CUDA device; install a CUDA build"):
        torch_backend.pick_device("cuda:1")
    with pytest.raises(EngineError, match=r"MPS was requested but PyTorch sees no Apple GPU"):
        torch_backend.pick_device("mps")
    monkeypatch.setattr(torch_backend, "mps_available", lambda: True)
    assert torch_backend.pick_device("mps") == "mps"


def test_devices_only_onnx_has_choose_the_onnx_backend():
    from engine.runtime import choose_backend

    for device in ("tensorrt", "directml", "coreml", "openvino"):
        assert choose_backend("no/such-model", device) == "onnx"


@pytest.mark.parametrize(("device", "available", "expected"), [
    ("auto", ALL, ALL),
    ("auto", ["CoreMLExecutionProvider", "CPUExecutionProvider"],
     ["CoreMLExecutionProvider", "CPUExecutionProvider"]),
    ("auto", ["CPUExecutionProvider", "OpenVINOExecutionProvider", "DmlExecutionProvider"],
     ["DmlExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]),
    ("cpu", ALL, ["CPUExecutionProvider"]),
    ("cuda:1", ALL, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("directml", ALL, ["DmlExecutionProvider", "CPUExecutionProvider"]),
    ("coreml", ALL, ["CoreMLExecutionProvider", "CPUExecutionProvider"]),
    ("openvino", ALL, ["OpenVINOExecutionProvider", "CPUExecutionProvider"]),
    ("auto", [], ["CPUExecutionProvider"]),
])
def test_providers_are_the_installed_ones_best_first(device, available, expected):
    from engine.runtime.onnx_backend import pick_providers

    assert pick_providers(device, available) == expected


GPU_FIX = ("CUDA was requested but onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
           "(the gpu extra) in place of onnxruntime, or use --device cpu.")


@pytest.mark.parametrize(("device", "fix"), [
    ("cuda", GPU_FIX),
    ("tensorrt:0", GPU_FIX),
    ("directml", "DirectML was requested but onnxruntime has no DirectML provider; on Windows, "
                 "pip install onnxruntime-directml (the directml extra) in place of onnxruntime, "
                 "or use --device cpu."),
    ("openvino", "OpenVINO was requested but onnxruntime has no OpenVINO provider; pip install "
                 "onnxruntime-openvino (the openvino extra) in place of onnxruntime, or use "
                 "--device cpu."),
    ("coreml", "CoreML was requested but onnxruntime has no CoreML provider; on macOS, pip "
               "install onnxruntime (its CoreML provider is built in), or use --device cpu."),
])
def test_a_missing_gpu_runtime_is_one_sentence_naming_the_install(device, fix):
    from engine.runtime.onnx_backend import pick_providers

    with pytest.raises(EngineError) as error:
        pick_providers(device, ["CPUExecutionProvider"])
    assert str(error.value) == fix


def test_an_unknown_onnx_device_lists_the_known_ones():
    from engine.runtime.onnx_backend import pick_providers

    with pytest.raises(EngineError, match="use auto, cpu, cuda, tensorrt, directml, coreml, "
                                          "openvino"):
        pick_providers("gpu", ALL)


def test_the_cli_reports_a_missing_runtime_in_one_line(tiny_student_dir, capsys, tmp_path):
    from engine.__main__ import main

    code = main(["generate", "--model", str(tiny_student_dir), "--backend", "onnx", "--device",
                 "directml", "--prompt", "red apple", "--out", str(tmp_path / "x.png")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "pip install onnxruntime-directml" in error


def test_gpu_provider_options_and_the_tensorrt_cache_live_outside_the_export(user_folders):
    import numpy as np

    from engine.runtime.onnx_backend import OnnxBackend, tensorrt_cache_dir

    export = Path("/read/only/model/onnx-fp16")
    backend = type("Fake", (), {"gpu": 1, "np_dtype": np.float16, "folder": export})()
    assert OnnxBackend.provider_options(backend, "DmlExecutionProvider") == {"device_id": 1}
    assert OnnxBackend.provider_options(backend, "CoreMLExecutionProvider") == {}
    trt = OnnxBackend.provider_options(backend, "TensorrtExecutionProvider")
    assert Path(trt["trt_engine_cache_path"]) == tensorrt_cache_dir(export)
    assert tensorrt_cache_dir(export).parent == user_folders["cache"] / "tensorrt"


# -- about -----------------------------------------------------------------------------------------
def test_about_lists_versions_and_a_models_card(tmp_path):
    from engine import __version__
    from engine.about import model_card, versions

    rows = versions()
    assert rows["DMD Studio"] == __version__
    assert set(rows) == {"DMD Studio", "Python", "torch", "diffusers", "onnxruntime"}
    assert "CPU" in rows["onnxruntime"]
    (tmp_path / "README.md").write_text("# A model\n\nIt draws emoji.\n" + "more\n" * 40)
    card = model_card(tmp_path, lines=3)
    assert card == "# A model\n\nIt draws emoji."
    assert model_card(tmp_path / "none") == "" and model_card(None) == ""
