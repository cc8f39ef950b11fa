"""The command line as a user runs it: subprocesses, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def run_cli(*args, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_in_process(capsys, *args):
    """The same entry point as `python -m engine`, without a new interpreter (faster)."""
    from engine.__main__ import main

    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_clean_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_a_bad_model_exits_2_with_one_line_in_a_real_process(tmp_path):
    result = run_cli("generate", "--model", tmp_path / "nope", "--prompt", "x", "--out",
                     tmp_path / "o.png")
    assert_clean_error(result, "does not exist")


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("generate", "info"):
        assert command in result.stdout


def test_generate_writes_a_png(tiny_model_dir, tmp_path):
    out = tmp_path / "apple.png"
    result = run_cli("generate", "--model", tiny_model_dir, "--prompt", "red apple", "--seed", 3,
                     "--out", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_generate_batch_writes_numbered_files_and_index(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\n\ncat face\nrocket\n")
    out = tmp_path / "batch"
    result = run_cli("generate", "--model", tiny_model_dir, "--prompts", prompts, "--seed", 5,
                     "--out", out)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index == {"0000.png": {"prompt": "red apple", "seed": 5},
                     "0001.png": {"prompt": "cat face", "seed": 5},
                     "0002.png": {"prompt": "rocket", "seed": 5}}
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png"]


def test_generate_img2img_and_teacher(tiny_model_dir, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(init)
    result = run_cli("generate", "--model", tiny_model_dir, "--prompt", "cat", "--init", init,
                     "--strength", "0.5", "--out", tmp_path / "edit.png")
    assert result.returncode == 0, result.stderr
    result = run_cli("generate", "--model", tiny_model_dir, "--prompt", "cat", "--teacher-steps",
                     "3", "--guidance", "2", "--out", tmp_path / "teacher.png")
    assert result.returncode == 0 and (tmp_path / "teacher.png").is_file()


def test_info_json(tiny_model_dir, capsys):
    result = run_in_process(capsys, "info", "--model", tiny_model_dir, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["components"]["unet"]["class"] == "UNet2DConditionModel"
    assert info["components"]["unet"]["parameters"] > 0
    assert info["schedule"]["prediction_type"] == "epsilon"
    assert info["latent"] == [4, 4, 4] and info["device"] == "cpu"


@pytest.mark.parametrize("case", ["missing", "no_unet", "corrupt", "bad_init", "strength",
                                  "hub_offline", "bad_device"])
def test_bad_input_exits_2_with_one_line(case, tiny_model_dir, tmp_path, capsys):
    import shutil

    model, extra = str(tiny_model_dir), []
    if case == "missing":
        model, fragment = str(tmp_path / "nope"), "does not exist"
    elif case == "no_unet":
        (tmp_path / "empty").mkdir()
        model, fragment = str(tmp_path / "empty"), "no unet/"
    elif case == "corrupt":
        shutil.copytree(tiny_model_dir, tmp_path / "corrupt")
        (tmp_path / "corrupt/unet/diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
        model, fragment = str(tmp_path / "corrupt"), "corrupt"
    elif case == "bad_init":
        (tmp_path / "init.png").write_text("this is not an image")
        extra, fragment = ["--init", str(tmp_path / "init.png")], "not a readable image"
    elif case == "strength":
        extra, fragment = ["--init", str(tmp_path / "x.png"), "--strength", "1.5"], "--strength"
    elif case == "bad_device":
        extra, fragment = ["--device", "gpu"], "Unknown device"
    else:
        model, fragment = "nobody-here/no-such-model-xyz", "not available offline"
    result = run_in_process(capsys, "generate", "--model", model, "--prompt", "x", "--out",
                            tmp_path / "o.png", *extra)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "o.png").exists()


def test_an_unwritable_out_exits_2_with_one_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "taken.png").mkdir()  # a folder where the PNG should go
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "x",
                            "--out", tmp_path / "taken.png")
    assert_clean_error(result, "Could not write")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]  # no temporary file left


def test_generate_without_steps_uses_the_steps_the_student_was_distilled_for(tmp_path, capsys):
    from engine.pipeline.tiny import build_tiny_pipeline

    four_step = build_tiny_pipeline(tmp_path / "student",
                                    student_timesteps=[999, 749, 499, 249], seed=2)
    outputs = {}
    for name, extra in (("default", []), ("one", ["--steps", "1"]), ("four", ["--steps", "4"])):
        result = run_in_process(capsys, "generate", "--model", four_step, "--prompt", "cat",
                                "--out", tmp_path / f"{name}.png", *extra)
        assert result.returncode == 0, result.stderr
        outputs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outputs["default"], outputs["four"])
    assert not np.array_equal(outputs["default"], outputs["one"])


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")
def test_low_priority_gives_the_process_the_lowest_priority():
    probe = ("import os; from engine.cli.common import lower_cpu_priority; "
             "before = os.getpriority(os.PRIO_PROCESS, 0); assert lower_cpu_priority(); "
             "print(os.getpriority(os.PRIO_PROCESS, 0) - before)")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               check=True)
    assert int(completed.stdout) == min(19, 19 - os.getpriority(os.PRIO_PROCESS, 0))
