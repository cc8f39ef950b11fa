"""Fusing LoRAs into a model's weights, and taking them out again bit-exactly.

Each adapted weight becomes W + sum_i weight_i * (alpha_i / rank_i) * up_i @ down_i (Hu et
al. 2021), computed in float32 and stored in the weight's own dtype, in place (CUDA graphs
keep pointing at the same storage). Before the first change the original tensor of every
touched weight is copied to the CPU; unfusing, or fusing another set, copies them back, so
the model returns to exactly the weights it was loaded with. Frames then cost nothing
extra: the live path runs plain fused weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.api import LoraChoice, ModelLoadError
from engine.runtime.lora_files import LoraFile, LoraLayer, read_lora_file, sgm_to_diffusers

# CLIP text encoders were saved with a text_model. level (transformers 4) that transformers 5
# folds away; LoRA files name their layers with it.
TEXT_MODEL_PREFIX = "text_model."


def find_module(component: nn.Module, path: str) -> nn.Module | None:
    """The submodule at a dotted path (with or without the text_model. level), or None."""
    for candidate in (path, path.removeprefix(TEXT_MODEL_PREFIX)):
        try:
            return component.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def flat_name(module_path: str) -> str:
    """kohya's spelling of a module path: dots become underscores."""
    return module_path.replace(".", "_")


class LoraFuser:
    """Fuses LoRA sets into named components ({"unet": ..., "text_encoder": ...})."""

    def __init__(self, components: dict[str, nn.Module]):
        self.components = components
        # (component, weight id) -> (the weight, a CPU copy of it as loaded)
        self.originals: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._flat_names: dict[str, dict[str, str]] = {}

    def weight_of(self, layer: LoraLayer) -> torch.Tensor | None:
        """The weight tensor a layer adapts, or None when this model has no such layer."""
        module = self.module_of(layer)
        weight = getattr(module, "weight", None)
        return weight if isinstance(weight, torch.Tensor) else None

    def module_of(self, layer: LoraLayer) -> nn.Module | None:
        component = self.components.get(layer.component)
        if component is None:
            return None
        path = layer.module
        if layer.flat:
            if layer.component not in self._flat_names:
                self._flat_names[layer.component] = {
                    flat_name(name): name for name, _ in component.named_modules() if name}
            names = self._flat_names[layer.component]
            path = names.get(path) or names.get(path.removeprefix(flat_name(TEXT_MODEL_PREFIX)))
            if path is None:
                return None
        return find_module(component, path)

    def check(self, lora: LoraFile) -> None:
        """Raise ModelLoadError when a layer of the file is missing here or has another
        shape (a LoRA made for another architecture)."""
        missing = [layer for layer in lora.layers if self.weight_of(layer) is None]
        if missing:
            what = "text encoder" if missing[0].component.startswith("text") else "UNet"
            raise ModelLoadError(
                f"The LoRA {lora.path.name} does not fit this model: {len(missing)} of its "
                f"{len(lora.layers)} layers name {what} layers it lacks (such as "
                f"{missing[0].module}), so it was made for another architecture.")
        for layer in lora.layers:
            weight = self.weight_of(layer)
            if fitted_delta_shape(layer, weight) is None:
                raise ModelLoadError(
                    f"The LoRA {lora.path.name} does not fit this model: its layer "
                    f"{layer.module} changes a {tuple(weight.shape)} weight by "
                    f"{tuple(layer.up.shape[:1]) + tuple(layer.down.shape[1:])}, so it was made "
                    "for another architecture.")

    def resolved(self, lora: LoraFile) -> LoraFile:
        """The file with kohya SDXL (sgm) block names renamed to this UNet's modules."""
        layers = list(lora.layers)
        renamed = sgm_to_diffusers(layers, self.components["unet"].config, lora.path)
        return lora if renamed is layers else LoraFile(lora.path, lora.sha256, tuple(renamed))

    @torch.no_grad()
    def fuse(self, loras: Sequence[tuple[LoraFile, float]]) -> None:
        """Replace whatever is fused now by these (file, weight) pairs; every file is checked
        before any weight changes."""
        loras = [(self.resolved(lora), weight) for lora, weight in loras]
        for lora, _ in loras:
            self.check(lora)
        self.unfuse()
        deltas: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for lora, weight in loras:
            for layer in lora.layers:
                target = self.weight_of(layer)
                key = (layer.component, str(id(target)))
                if key not in deltas:
                    deltas[key] = (target, torch.zeros(target.shape, dtype=torch.float32,
                                                       device=target.device))
                change = layer.delta().to(target.device).reshape(target.shape)
                deltas[key][1].add_(change, alpha=float(weight) * layer.scale)
        for key, (target, delta) in deltas.items():
            self.originals[key] = (target, target.detach().to("cpu", copy=True))
            target.copy_((target.float() + delta).to(target.dtype))

    @torch.no_grad()
    def unfuse(self) -> None:
        """Copy every touched weight back from its original (bit-exact)."""
        for target, original in self.originals.values():
            target.copy_(original.to(target.device))
        self.originals.clear()


def fitted_delta_shape(layer: LoraLayer, weight: torch.Tensor) -> tuple[int, ...] | None:
    """The delta's shape when it can be added to weight (a linear LoRA on a 1x1 conv counts),
    None when it cannot."""
    shape = (layer.up.shape[0], *layer.down.shape[1:])
    if layer.up.shape[1] != layer.down.shape[0]:
        return None
    if tuple(shape) == tuple(weight.shape):
        return tuple(shape)
    squeezed = [size for size in weight.shape[2:] if size != 1]
    same_matrix = tuple(weight.shape[:2]) == tuple(shape[:2]) and not squeezed
    return tuple(weight.shape) if same_matrix and all(s == 1 for s in shape[2:]) else None


def read_choices(choices: Sequence[LoraChoice]) -> list[tuple[LoraFile, float]]:
    """Read each chosen file; a digest that differs from the choice's sha256 is refused."""
    files = []
    for choice in choices:
        lora = read_lora_file(choice.path)
        if choice.sha256 and choice.sha256 != lora.sha256:
            raise ModelLoadError(f"The LoRA {choice.path} is not the file that was used before "
                                 "(its SHA-256 differs); it changed since.")
        files.append((lora, float(choice.weight)))
    return files


def applied_choices(loras: Sequence[tuple[LoraFile, float]]) -> tuple[LoraChoice, ...]:
    """The fused set as LoraChoices with their files' digests (what a recipe records)."""
    return tuple(LoraChoice(str(lora.path), weight, lora.sha256) for lora, weight in loras)


def lora_components(parts) -> dict[str, nn.Module]:
    """The parts of a loaded pipeline a LoRA may adapt, by the names LoRA files use (SDXL's
    two text encoders: text_encoder and text_encoder_2)."""
    encoders = getattr(parts.text_encoder, "models", None) or (parts.text_encoder.model,)
    names = ("text_encoder", "text_encoder_2")
    return {"unet": parts.unet, **dict(zip(names, encoders, strict=False))}
