"""bench --arch sdxl: its code path on the tiny SDXL (CPU), and the shipped family configs
build models of the published sizes."""

import pytest
import torch

from engine.runtime.sd_configs import family_config


def test_tiny_sdxl_arch_measures_both_sizes():
    from engine.bench.gpu import bench_arch
    from engine.bench.report import gpu_report

    report = bench_arch("tiny-sdxl", "cpu", repeats=1, backends=("torch", "onnx"))
    names = [v["variant"] for v in report["variants"]]
    assert names == ["64 px torch eager", "32 px torch eager", "onnxruntime"]
    assert all(v["fps"] > 0 for v in report["variants"][:2]), report["variants"]
    assert report["variants"][2]["note"] == "not measured: the ONNX export does not cover SDXL"
    assert report["image_sizes"] == [64, 32]
    assert gpu_report(report).startswith("tiny-sdxl at 64 and 32 px, batch 1")


def test_sdxl_on_a_cpu_needs_force(capsys):
    from engine.__main__ import main

    assert main(["bench", "--arch", "sdxl", "--device", "cpu"]) == 2
    assert "The SDXL-shaped benchmark needs CUDA" in capsys.readouterr().err


@pytest.mark.parametrize(("family", "unet_parameters", "text_parameters"), [
    ("sd1", 859_520_964, [123_060_480]),
    ("sd2", 865_910_724, [340_387_840]),
    ("sdxl", 2_567_463_684, [123_060_480, 694_659_840]),
])
def test_the_shipped_configs_have_the_published_sizes(family, unet_parameters, text_parameters):
    """Built on the meta device (no memory): the parameter counts of SD 1.5, SD 2.1 and SDXL
    base's UNet and text encoders."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = family_config(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config["unet"])
        texts = [(CLIPTextModelWithProjection if spec.get("with_projection") else CLIPTextModel)(
            CLIPTextConfig(**spec["config"])) for spec in config["text_encoders"]]
    assert sum(p.numel() for p in unet.parameters()) == unet_parameters
    assert [sum(p.numel() for p in text.parameters()) for text in texts] == text_parameters
