"""The CLI with single-file checkpoints, UNet-only files and the model option flags."""

import json

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from tests.engine.original_layout import component_state
from tests.engine.test_cli import assert_clean_error, run_cli, run_in_process


def test_generate_from_a_single_file_checkpoint(tiny_family_models, tmp_path, capsys):
    folder, checkpoint = tiny_family_models["sdxl"]
    from_file, from_folder = tmp_path / "file.png", tmp_path / "folder.png"
    result = run_in_process(capsys, "generate", "--model", checkpoint, "--size", 32, "--prompt",
                            "red apple", "--seed", 4, "--out", from_file)
    assert result.returncode == 0, result.stderr
    assert run_in_process(capsys, "generate", "--model", folder, "--prompt", "red apple",
                          "--seed", 4, "--out", from_folder).returncode == 0
    with Image.open(from_file) as drawn, Image.open(from_folder) as expected:
        assert drawn.size == (32, 32) and np.array_equal(np.asarray(drawn), np.asarray(expected))


def test_generate_with_a_unet_file_and_student_timesteps(tiny_family_models, tmp_path, capsys):
    base, _ = tiny_family_models["sdxl"]
    sd1_folder, _ = tiny_family_models["sd1"]
    state, _ = component_state(base, "unet")
    unet = tmp_path / "student_unet.safetensors"
    save_file({key: value * 1.01 for key, value in state.items()}, str(unet))
    out = tmp_path / "student.png"
    result = run_in_process(capsys, "generate", "--model", base, "--unet", unet,
                            "--student-timesteps", 399, "--prompt", "cat", "--out", out)
    assert result.returncode == 0, result.stderr
    recipe = run_in_process(capsys, "info", "--image", out, "--json")
    assert f"with UNet {unet}" in recipe.stdout
    info = run_in_process(capsys, "info", "--model", base, "--unet", unet, "--student-timesteps",
                          "999,749,499,249", "--json")
    described = json.loads(info.stdout)
    assert described["kind"] == "student" and described["student"]["timesteps"] == [
        999, 749, 499, 249]
    assert described["family"] == "SDXL" and "text_encoder_2" in described["components"]
    wrong, _ = component_state(sd1_folder, "unet")
    other = tmp_path / "sd1_unet.safetensors"
    save_file(wrong, str(other))
    refused = run_in_process(capsys, "generate", "--model", base, "--unet", other, "--prompt",
                             "cat", "--out", tmp_path / "x.png")
    assert_clean_error(refused, "does not fit the base model's UNet")


def test_info_names_a_single_files_family(tiny_family_models, capsys):
    _, checkpoint = tiny_family_models["sd2"]
    result = run_in_process(capsys, "info", "--model", checkpoint, "--size", 32,
                            "--prediction", "epsilon", "--json")
    described = json.loads(result.stdout)
    assert described["family"] == "SD 2.x" and described["image_size"] == 32
    assert described["schedule"]["prediction_type"] == "epsilon"


def test_bad_model_files_and_flags_exit_2_with_one_line(tiny_family_models, tmp_path):
    _, checkpoint = tiny_family_models["sd1"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    out = tmp_path / "o.png"
    result = run_cli("generate", "--model", truncated, "--prompt", "x", "--out", out)
    assert_clean_error(result, "is not a complete safetensors file")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    result = run_cli("generate", "--model", text_file, "--prompt", "x", "--out", out)
    assert_clean_error(result, "is neither a model folder nor a .safetensors or .ckpt checkpoint")


def test_bad_option_values_exit_2(tiny_family_models, tmp_path, capsys):
    _, checkpoint = tiny_family_models["sd1"]
    out = tmp_path / "o.png"
    for flags, fragment in ((["--student-timesteps", "abc"], "must be integers"),
                            (["--student-timesteps", "249,999"], "must decrease"),
                            (["--size", "30"], "must be a positive multiple of 8")):
        result = run_in_process(capsys, "generate", "--model", checkpoint, *flags, "--prompt",
                                "x", "--out", out)
        assert_clean_error(result, fragment)


def test_commands_that_need_a_folder_say_so_for_a_single_file(tiny_family_models, tmp_path,
                                                              capsys):
    _, checkpoint = tiny_family_models["sd1"]
    result = run_in_process(capsys, "export-onnx", "--model", checkpoint, "--out",
                            tmp_path / "onnx")
    assert_clean_error(result, "is a single-file checkpoint; this needs a model folder")
