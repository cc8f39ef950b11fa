"""Reading LoRA files (.safetensors) in the namings other tools write, into one form.

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") adds
scale * up @ down to a layer's weight, scale = alpha / rank. The namings read here:
- diffusers / PEFT: `unet.<module path>.lora_A.weight` and `.lora_B.weight` (alpha from the
  file's `lora_adapter_metadata`, else alpha = rank), the older `.lora.down.weight` /
  `.lora.up.weight`, the attention-processor form `attn1.processor.to_q_lora.down.weight`
  and `.lora_linear_layer.down.weight`; `text_encoder.` / `text_encoder_2.` likewise.
- kohya (sd-scripts, most files shared online): `lora_unet_<module path with _>` (SDXL:
  the original UNet's `input_blocks_N_M_...`, renamed by diffusers' block mapping),
  `lora_te_` (`lora_te1_` / `lora_te2_` for SDXL's two encoders), `.lora_down.weight`,
  `.lora_up.weight` and `.alpha`. Their module names lose the dots, so they are matched
  against the model's own module names when fused (engine/runtime/lora.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.api import ModelLoadError, os_error_message

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
# (suffix of the down tensor, suffix of the up tensor, what of the suffix names the layer) in
# diffusers / PEFT files; "…attn1.processor.to_q_lora.down.weight" keeps its "_lora"
DIFFUSERS_PAIRS = ((".lora_A.weight", ".lora_B.weight", ""),
                   (".lora.down.weight", ".lora.up.weight", ""),
                   (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight", ""),
                   ("_lora.down.weight", "_lora.up.weight", "_lora"))
# kohya's SDXL files name UNet layers by the original (sgm) UNet's blocks
SGM_BLOCKS = ("input_blocks_", "middle_block_", "output_blocks_")
# the attention-processor LoRA names and the layers they adapt (UNet, CLIP text encoder)
PROCESSOR_LAYERS = {"unet": {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v",
                             "to_out_lora": "to_out.0"},
                    "text": {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj",
                             "to_out_lora": "out_proj"}}
VARIANT_MARKERS = ("hada_", "lokr_", "lora_mid", "dora_scale", "lora_magnitude_vector", ".diff")
MAX_LORA_BYTES = 4 * 2**30  # larger files are not LoRAs


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: weight += scale * up @ down (conv kernels flattened)."""

    component: str  # "unet", "text_encoder" or "text_encoder_2"
    module: str  # a dotted module path, or a kohya name with "_" for "." (flat=True)
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    scale: float  # alpha / rank
    flat: bool = False

    def delta(self) -> torch.Tensor:
        """up @ down in float32, shaped like a Linear (out, in) or Conv2d (out, in, kh, kw)."""
        down, up = self.down.float(), self.up.float()
        product = up.flatten(1) @ down.flatten(1)  # (out, in * kh * kw)
        if down.dim() == 4:
            return product.reshape(up.shape[0], *down.shape[1:])
        return product


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's layers, named by component, and the SHA-256 of its bytes."""

    path: Path
    sha256: str
    layers: tuple[LoraLayer, ...]

    @property
    def components(self) -> set[str]:
        return {layer.component for layer in self.layers}


def read_lora_file(path: str | Path) -> LoraFile:
    """Read a LoRA .safetensors file in diffusers, PEFT or kohya naming; a file that is
    none of them raises ModelLoadError with one sentence."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path} is not a .safetensors file; LoRAs load from .safetensors "
                             "only (pickled .ckpt/.pt files can run code).")
    try:
        if path.stat().st_size > MAX_LORA_BYTES:
            raise ModelLoadError(f"{path} is larger than 4 GiB, too large for a LoRA.")
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(os_error_message(error, path)) from error
    try:
        tensors = load(data)
        metadata = read_metadata(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{path} is not a readable safetensors file (truncated or "
                             "damaged).") from error
    layers = parse_layers(tensors, metadata, path)
    return LoraFile(path, hashlib.sha256(data).hexdigest(), tuple(layers))


def read_metadata(data: bytes) -> dict:
    """The safetensors header's __metadata__ (string values), {} without one."""
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8:8 + header_size])
    return header.get("__metadata__") or {}


def parse_layers(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> list[LoraLayer]:
    """LoraLayers from a state dict in any supported naming."""
    variant = next((key for key in tensors if any(mark in key for mark in VARIANT_MARKERS)), None)
    if variant is not None:
        raise ModelLoadError(f"{path} is a LoRA variant (LoHa, LoKr, DoRA or a LoCon mid "
                             f"layer: {variant!r}); only plain LoRAs can be fused.")
    if any(key.startswith(tuple(KOHYA_PREFIXES)) for key in tensors):
        layers = kohya_layers(tensors, path)
    else:
        layers = diffusers_layers(tensors, peft_alphas(metadata), path)
    if not layers:
        raise ModelLoadError(f"{path} holds no LoRA layers (no lora_A/lora_B, lora.down/up or "
                             "kohya lora_down/lora_up tensors).")
    return layers


def peft_alphas(metadata: dict) -> dict[str, tuple[float, bool]]:
    """{component: (alpha / rank numerator source, use_rslora)} from lora_adapter_metadata:
    alpha per component, None entries when the file does not say."""
    try:
        values = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    alphas = {}
    for component in COMPONENTS:
        alpha = values.get(f"{component}.lora_alpha")
        if isinstance(alpha, (int, float)):
            alphas[component] = (float(alpha), bool(values.get(f"{component}.use_rslora")))
    return alphas


def lora_scale(alpha: float | None, rank: int, rslora: bool = False) -> float:
    """alpha / rank (alpha / sqrt(rank) for rank-stabilised LoRA); 1 when alpha is unknown."""
    if alpha is None:
        return 1.0
    return alpha / (math.sqrt(rank) if rslora else rank)


def kohya_layers(tensors: dict[str, torch.Tensor], path: Path) -> list[LoraLayer]:
    """kohya names: <prefix><module with _>.lora_down.weight / .lora_up.weight / .alpha."""
    layers = []
    names = {key.split(".", 1)[0] for key in tensors}
    for name in sorted(names):
        prefix = next((p for p in KOHYA_PREFIXES if name.startswith(p)), None)
        down, up = tensors.get(f"{name}.lora_down.weight"), tensors.get(f"{name}.lora_up.weight")
        if prefix is None or down is None or up is None:
            raise ModelLoadError(f"{path} mixes kohya LoRA names with others ({name!r}).")
        alpha = tensors.get(f"{name}.alpha")
        scale = lora_scale(None if alpha is None else float(alpha), down.shape[0])
        layers.append(LoraLayer(KOHYA_PREFIXES[prefix], name.removeprefix(prefix), down, up,
                                scale, flat=True))
    return layers


def split_component(key: str) -> tuple[str, str]:
    """("text_encoder", "text_model.encoder...") for a prefixed key; unprefixed keys (an old
    UNet attention-processor file) are the UNet's."""
    head, _, rest = key.partition(".")
    return (head, rest) if head in COMPONENTS else ("unet", key)


def module_path(component: str, name: str) -> str:
    """The layer a diffusers LoRA name adapts: attention-processor names mapped to layers."""
    layers = PROCESSOR_LAYERS["unet" if component == "unet" else "text"]
    parts = [part for part in name.split(".") if part != "processor"]
    return ".".join(layers.get(part, part) for part in parts)


def diffusers_layers(tensors: dict[str, torch.Tensor], alphas: dict, path: Path
                     ) -> list[LoraLayer]:
    """diffusers / PEFT names: <component>.<module>.lora_A.weight (and the older forms)."""
    layers, used = [], set()
    for key in sorted(tensors):
        pair = next((p for p in DIFFUSERS_PAIRS if key.endswith(p[0])), None)
        if pair is None:
            continue
        stem = key.removesuffix(pair[0])
        up_key = stem + pair[1]
        if up_key not in tensors:
            raise ModelLoadError(f"{path} has {key} without its {pair[1].lstrip('.')} tensor.")
        component, name = split_component(stem + pair[2])
        alpha_key = next((k for k in (f"{stem}.alpha", f"{key}.alpha") if k in tensors), None)
        down = tensors[key]
        if alpha_key is not None:
            scale = lora_scale(float(tensors[alpha_key]), down.shape[0])
            used.add(alpha_key)
        else:
            alpha, rslora = alphas.get(component, (None, False))
            scale = lora_scale(alpha, down.shape[0], rslora)
        layers.append(LoraLayer(component, module_path(component, name), down,
                                tensors[up_key], scale))
        used.update((key, up_key))
    unknown = sorted(set(tensors) - used)
    if unknown and layers:
        raise ModelLoadError(f"{path} has tensors that are not LoRA layers (such as "
                             f"{unknown[0]!r}).")
    return layers


def sgm_to_diffusers(layers: list[LoraLayer], unet_config, path: Path) -> list[LoraLayer]:
    """kohya SDXL layers named by the sgm UNet's blocks (lora_unet_input_blocks_4_1_...)
    renamed to the diffusers UNet's modules with diffusers' own block mapping (its public
    lora_state_dict); the other layers pass unchanged."""
    from diffusers import StableDiffusionXLPipeline

    sgm = [layer for layer in layers if layer.flat and layer.component == "unet"
           and layer.module.startswith(SGM_BLOCKS)]
    if not sgm:
        return layers
    tensors = {}
    for layer in sgm:
        name = f"lora_unet_{layer.module}"
        tensors[f"{name}.lora_down.weight"] = layer.down
        tensors[f"{name}.lora_up.weight"] = layer.up
        tensors[f"{name}.alpha"] = torch.tensor(layer.scale * layer.down.shape[0])
    try:
        converted, alphas = StableDiffusionXLPipeline.lora_state_dict(tensors,
                                                                      unet_config=unet_config)
    except (ValueError, KeyError, IndexError) as error:
        raise ModelLoadError(f"The LoRA {path.name} names UNet blocks this model does not have "
                             "(it was made for another architecture).") from error
    converted.update({key: torch.tensor(value) for key, value in (alphas or {}).items()})
    renamed = diffusers_layers(converted, {}, path)
    sgm_ids = {id(layer) for layer in sgm}
    return [layer for layer in layers if id(layer) not in sgm_ids] + renamed


def write_lora_file(path: str | Path, layers: dict[tuple[str, str], tuple[torch.Tensor,
                    torch.Tensor]], alpha: float) -> Path:
    """Write {(component, module path): (down, up)} as a diffusers / PEFT LoRA file
    (`unet.<path>.lora_A.weight`, rank and alpha in lora_adapter_metadata), atomically."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    tensors, metadata = {}, {}
    for (component, module), (down, up) in sorted(layers.items()):
        tensors[f"{component}.{module}.lora_A.weight"] = down.detach().contiguous().cpu()
        tensors[f"{component}.{module}.lora_B.weight"] = up.detach().contiguous().cpu()
        targets = metadata.setdefault(component, {"r": int(down.shape[0]), "lora_alpha": alpha,
                                                  "target_modules": []})["target_modules"]
        targets.append(module)
    flat = {f"{component}.{key}": value for component, config in metadata.items()
            for key, value in config.items()}
    temporary = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(temporary), metadata={
        "format": "pt", "lora_adapter_metadata": json.dumps(flat, sort_keys=True)})
    os.replace(temporary, path)
    return path
