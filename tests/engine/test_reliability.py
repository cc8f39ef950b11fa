"""No input may stop a start, cost gigabytes or end in a traceback (docs/reliability.md).

Each test reproduces one crafted or hostile input and checks what happens now: one `error:`
line and exit 2 on the command line, a clear EngineError in the engine, memory under a cap
measured in a fresh process.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine.api import EngineError, GenerateRequest, InvalidRequestError, os_error_message
from engine.recipe import RECIPE_KEY, Recipe, png_info, read_recipe
from engine.untrusted import (
    MAX_JSON_DEPTH,
    MAX_PROMPT_CHARS,
    UntrustedInputError,
    check_request,
    json_depth,
    load_json,
)
from tests.engine.test_cli import assert_clean_error, run_cli, run_in_process

NESTED = "[" * 100_000 + "]" * 100_000  # 200 KB that used to raise RecursionError


PEAK_MIB = """
try:  # this process's own peak: ru_maxrss may include the memory of the parent it forked from
    peak = [int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:")][0]
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak", peak // 1024)
"""


def peak_mb_of(code: str, *args: str) -> tuple[int, str]:
    """Run code in a fresh interpreter; (its peak resident MiB, its stdout)."""
    script = f"import resource, sys\n{code}\n{PEAK_MIB}"
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.rsplit("peak", 1)[1])
    return peak, result.stdout


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with one tiny (truncated) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save_with_recipe_text(path: Path, text: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECIPE_KEY, text)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, pnginfo=info)


def recipe_text(**fields) -> str:
    return json.dumps({"version": 1, "prompt": "x", "mode": "text", **fields})


# -- 1. deeply nested JSON ------------------------------------------------------------------
def test_nesting_is_measured_without_parsing_and_strings_do_not_count():
    assert json_depth(NESTED) == 100_000
    assert json_depth('{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    with pytest.raises(UntrustedInputError, match=f"100,000 levels deep, more than the "
                                                  f"{MAX_JSON_DEPTH}"):
        load_json(NESTED, "The recipe")
    assert load_json('{"a": [[1]]}', "x") == {"a": [[1]]}


def test_a_recipe_of_deeply_nested_json_is_one_clear_error(tmp_path):
    path = tmp_path / "nested.png"
    save_with_recipe_text(path, NESTED)
    with pytest.raises(EngineError, match="recipe is damaged.*levels deep"):
        read_recipe(path)
    nested_prompt = recipe_text(prompt="x").replace('"x"', NESTED, 1)
    with pytest.raises(EngineError, match="levels deep"):
        Recipe.from_text(nested_prompt)


# -- 2. pixel counts and prompt length ------------------------------------------------------
def test_a_28kb_recipe_embedding_a_13000px_image_stays_under_200_mib(tmp_path):
    buffer = io.BytesIO()  # 13,000 x 13,000 black pixels compress to 20 KB (1.8 GiB decoded)
    Image.new("1", (13_000, 13_000)).save(buffer, format="PNG", optimize=True)
    bomb = base64.b64encode(buffer.getvalue()).decode("ascii")
    path = tmp_path / "bomb.png"
    save_with_recipe_text(path, recipe_text(mode="edit", init_image=bomb, strength=0.5))
    assert path.stat().st_size < 30_000
    peak, out = peak_mb_of(
        "from engine.api import EngineError\nfrom engine.recipe import read_recipe\n"
        "try:\n    read_recipe(sys.argv[1])\nexcept EngineError as error:\n    print(error)",
        str(path))
    assert "its init image declares 13,000 x 13,000 pixels, more than the 4,096 x 4,096" in out
    assert peak < 200, f"{peak} MiB"


def test_a_frame_declaring_huge_pixels_gives_its_recipe_without_decoding(tmp_path):
    recipe = Recipe(prompt="red apple", seed=3)
    path = tmp_path / "huge.png"
    data = png_declaring(12_000, 12_000)  # over our limit, under Pillow's refusal
    chunk_text = RECIPE_KEY.encode() + b"\0\0\0\0\0" + recipe.to_text().encode()
    text_chunk = struct.pack(">I", len(chunk_text)) + b"iTXt" + chunk_text + \
        struct.pack(">I", zlib.crc32(b"iTXt" + chunk_text))
    path.write_bytes(data[:33] + text_chunk + data[33:])  # after IHDR, before IDAT
    peak, out = peak_mb_of("from engine.recipe import read_recipe\n"
                           "print(read_recipe(sys.argv[1]).describe())", str(path))
    assert '"red apple", seed 3, 1 step' in out
    assert peak < 200, f"{peak} MiB"


def test_a_prompt_is_cut_to_the_limit_before_anything_allocates():
    long = "red apple " * 1_000_000  # 10 MB
    recipe = Recipe.from_request(GenerateRequest(prompt=long))
    assert len(recipe.prompt) == MAX_PROMPT_CHARS and long.startswith(recipe.prompt)
    assert len(recipe.to_text()) < MAX_PROMPT_CHARS + 500


def test_a_10mb_prompt_line_costs_no_more_than_a_short_one(tiny_model_dir, tmp_path):
    run = ("from engine.__main__ import main\n"
           "code = main(['generate', '--model', sys.argv[1], '--prompts', sys.argv[2], "
           "'--out', sys.argv[3]])\nassert code == 0")
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("red apple\n")
    long.write_text("red apple " * 1_000_000 + "\n")
    base, _ = peak_mb_of(run, str(tiny_model_dir), str(short), str(tmp_path / "a"))
    peak, _ = peak_mb_of(run, str(tiny_model_dir), str(long), str(tmp_path / "b"))
    assert peak < base + 50, f"{peak} MiB against {base} MiB for a short prompt"
    written = tmp_path / "b" / "0000.png"
    assert written.stat().st_size < 20_000
    assert len(read_recipe(written).prompt) == MAX_PROMPT_CHARS


# -- 5. one sentence instead of a traceback -------------------------------------------------
def test_a_non_utf8_byte_in_the_prompt_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8"}
    result = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt",
                             b"caf\xe9 au lait", "--out", str(tmp_path / "o.png")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert_clean_error(result, "--prompt is not valid UTF-8 text (byte 0xe9 at character 4)")


def test_a_lone_surrogate_in_a_prompt_or_recipe_is_one_line(tmp_path, capsys):
    result = run_in_process(capsys, "generate", "--prompt", "a\ud800b", "--out", tmp_path / "o")
    assert_clean_error(result, "lone surrogate U+D800 at character 2")
    with pytest.raises(EngineError, match="recipe is damaged.*lone surrogate"):
        Recipe.from_text(recipe_text(prompt="\ud800"))


@pytest.mark.parametrize("args", [["generate", "--steps", "3"], ["nope"],
                                  ["distill", "--teacher"], ["info", "--json", "extra"]])
def test_argparse_errors_are_one_error_line_and_exit_2(args, capsys):
    with pytest.raises(SystemExit) as stop:
        run_in_process(capsys, *args)
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], lines


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "Could not write /r/x: the disk is full."),
                                         (errno.EROFS, "the file system is read-only"),
                                         (errno.EACCES, "Could not open /r/x: permission denied")])
def test_os_errors_read_as_one_sentence_with_path_and_cause(code, words):
    assert words in os_error_message(OSError(code, os.strerror(code), "/r/x"))


def test_distill_into_a_read_only_folder_is_one_line(tiny_model_dir, tmp_path, capsys,
                                                     read_only):
    locked = read_only(tmp_path / "locked")
    result = run_in_process(capsys, "distill", "--teacher", tiny_model_dir, "--out",
                            locked / "run", "--steps", 1, "--device", "cpu")
    assert_clean_error(result, f"--out: Could not write {locked / 'run'}: the file system is "
                               "read-only.")


def test_a_full_disk_while_checkpointing_says_disk_full(tmp_path, monkeypatch):
    import shutil

    import torch

    from engine.distill import checkpoint

    class FullDisk:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            torch.save({"weights": torch.zeros(1000)}, "/dev/full")  # torch's own failure

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=10 * 2**20))
    with pytest.raises(EngineError) as caught:
        checkpoint.save_checkpoint(FullDisk(), tmp_path / "checkpoints", 7, keep=2)
    assert "inline_container" in str(caught.value.__cause__)
    assert str(caught.value) == (f"Checkpoint not saved: could not write "
                                 f"{tmp_path / 'checkpoints' / '.tmp-step-7'}: the disk is full.")
    assert list((tmp_path / "checkpoints").iterdir()) == []  # the partial write is gone


def test_a_bad_unet_config_is_named_not_called_corrupt_weights(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model / "unet" / "config.json").write_text('{"in_channels": 4,')
    result = run_in_process(capsys, "info", "--model", model)
    assert_clean_error(result, f"{model / 'unet' / 'config.json'} is not valid JSON")
    assert "corrupt" not in result.stderr


# -- 6. guidance and every request field finite, within range -------------------------------
@pytest.mark.parametrize("guidance", ["inf", "1e308", "nan", "-1"])
def test_a_guidance_out_of_range_is_refused_before_the_model_loads(guidance, tmp_path):
    result = run_cli("generate", "--model", tmp_path / "never-loaded", "--prompt", "x",
                     "--teacher-steps", 2, "--guidance", guidance, "--out", tmp_path / "o.png")
    assert_clean_error(result, "Guidance must be between 0 and 100")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("fields, words", [
    ({"seed": 2**80}, "The seed"), ({"steps": 2.5}, "Student steps"),
    ({"teacher_steps": 10**6}, "Teacher steps"), ({"strength": float("inf")}, "Strength"),
    ({"preview_above_ms": float("nan")}, "preview threshold"), ({"prompt": b"x"}, "text")])
def test_every_request_field_is_checked(fields, words):
    with pytest.raises(InvalidRequestError, match=words):
        check_request(GenerateRequest(**{"prompt": "x", **fields}))


@pytest.mark.parametrize("fields, words", [
    ({"seed": 2**80}, "The seed"), ({"teacher_steps": 10**6}, "Teacher steps"),
    ({"guidance": 1e308}, "Guidance"), ({"steps": 17}, "Student steps")])
def test_a_recipe_with_a_value_out_of_range_is_damaged(fields, words):
    with pytest.raises(EngineError, match=f"recipe is damaged.*{words}"):
        Recipe.from_text(recipe_text(**fields))


def test_a_recipe_round_trip_is_unchanged_by_the_limits(tmp_path):
    request = GenerateRequest(prompt="cat face", seed=5, steps=2, guidance=7.5,
                              teacher_steps=20)
    path = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        path, pnginfo=png_info(Recipe.from_request(request)))
    again = read_recipe(path).request()
    assert (again.prompt, again.seed, again.steps, again.guidance, again.teacher_steps) == \
        ("cat face", 5, 2, 7.5, 20)


# -- 3, 4, 7. the ONNX export cache ---------------------------------------------------------
@pytest.fixture
def student_copy(tmp_path, tiny_student_dir):
    """A private copy of the tiny student: the onnx backends export into it."""
    import shutil

    pytest.importorskip("onnxruntime")
    return shutil.copytree(tiny_student_dir, tmp_path / "student")


def test_a_damaged_cached_export_is_deleted_and_rebuilt_once(student_copy, caplog):
    from engine.runtime import create_backend
    from engine.runtime.onnx_backend import BrokenExportError, OnnxBackend
    from engine.runtime.onnx_export import cache_dir_for

    create_backend(str(student_copy), "onnx", "cpu")
    unet = cache_dir_for(student_copy) / "unet.onnx"
    size = unet.stat().st_size
    unet.write_bytes(unet.read_bytes()[: size // 2])  # truncated: its size no longer matches
    backend = create_backend(str(student_copy), "onnx", "cpu")
    assert unet.stat().st_size == size and backend.name == "onnx"
    unet.write_bytes(b"\0" * size)  # damaged at the same size: found by the load attempt
    caplog.clear()
    backend = create_backend(str(student_copy), "onnx", "cpu")
    assert unet.stat().st_size == size and backend.name == "onnx"
    assert backend.decode(torch_zeros_latents(backend)).shape[-1] == backend.image_size
    warnings = [r.getMessage() for r in caplog.records if "cannot be loaded" in r.getMessage()]
    assert len(warnings) == 1 and "exporting again" in warnings[0]
    unet.write_bytes(b"\0" * size)  # an export folder given directly is the user's: reported
    with pytest.raises(BrokenExportError, match="unet.onnx cannot be loaded"):
        OnnxBackend.load(str(unet.parent), "cpu")


def test_a_damaged_export_in_the_model_folder_is_left_and_rebuilt_in_the_cache(student_copy):
    import shutil

    from engine.runtime import create_backend
    from engine.runtime.onnx_export import cache_dir_for

    create_backend(str(student_copy), "onnx", "cpu")
    cached = cache_dir_for(student_copy)
    earlier = shutil.copytree(cached, student_copy / "onnx")  # an earlier version's export
    shutil.rmtree(cached)
    size = (earlier / "unet.onnx").stat().st_size
    (earlier / "unet.onnx").write_bytes(b"\0" * size)
    backend = create_backend(str(student_copy), "onnx", "cpu")
    assert backend.folder == cached and (cached / "unet.onnx").stat().st_size == size
    assert (earlier / "unet.onnx").read_bytes() == b"\0" * size  # the model folder untouched


def torch_zeros_latents(backend):
    import torch

    return torch.zeros(1, backend.latent_channels, backend.latent_size, backend.latent_size)


def test_staging_folders_of_killed_exports_are_swept(student_copy):
    from engine.runtime.onnx_export import OWNER_FILE, cache_dir_for, resolve_export

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead, alive = int(finished.stdout), os.getpid()
    folders = {}
    for name, owner, age_s in (("killed", dead, 0), ("running", alive, 0),
                               ("old", None, 7200), ("young", None, 0)):
        cache = cache_dir_for(student_copy)
        folder = cache.parent / f".{cache.name}-{name}"
        folder.mkdir(parents=True)
        (folder / "unet.onnx").write_bytes(b"\0" * 4096)  # a partly written graph
        if owner is not None:
            (folder / OWNER_FILE).write_text(str(owner))
        if age_s:
            os.utime(folder, (folder.stat().st_atime - age_s, folder.stat().st_mtime - age_s))
        folders[name] = folder
    resolve_export(student_copy)  # what every onnx load does first
    assert {name for name, folder in folders.items() if folder.exists()} == {"running", "young"}


def test_with_no_writable_cache_the_onnx_backends_fall_back_to_pytorch(
        student_copy, tmp_path, monkeypatch, read_only, caplog, capsys):
    from engine.runtime import create_backend

    read_only(student_copy)
    cache = read_only(tmp_path / "cache")
    monkeypatch.setenv("DMD_STUDIO_CACHE", str(cache))
    for name in ("onnx", "onnx-int8"):
        caplog.clear()
        backend = create_backend(str(student_copy), name, "cpu")
        assert backend.name == "torch"
        notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert notes == [f"No writable place for the ONNX export of {student_copy}: the cache "
                         f"folder {cache} cannot be written; make it writable or set "
                         "DMD_STUDIO_CACHE to a folder that is. Running PyTorch instead."]
    out = tmp_path / "out.png"
    result = run_in_process(capsys, "generate", "--model", student_copy, "--backend", "onnx",
                            "--prompt", "red apple", "--out", out)
    assert result.returncode == 0 and out.is_file(), result.stderr
    assert not list(student_copy.glob(".onnx*")) and not (student_copy / "onnx").exists()


def test_export_onnx_into_a_read_only_folder_is_one_line(tiny_model_dir, tmp_path, capsys,
                                                         read_only):
    locked = read_only(tmp_path / "locked")
    result = run_in_process(capsys, "export-onnx", "--model", tiny_model_dir, "--out",
                            locked / "onnx")
    assert_clean_error(result, f"ONNX export not written: Could not write {locked / 'onnx'}: "
                               "the file system is read-only.")
