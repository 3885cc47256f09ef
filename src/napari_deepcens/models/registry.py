"""Model names the plugin knows, their builders and their bundled weights."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import WeightsError
from .centerunet import CenterUNet, CenterUNetConfig
from .deepcens import DeepCeNS, DeepCeNSConfig
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class ModelSpec:
    """How to build one kind of model and where its bundled weights are."""

    name: str
    label: str
    config_class: type
    model_class: type
    bundled: str
    boxes: bool = False  # gives rotated boxes beside the labels


MODELS: dict[str, ModelSpec] = {
    "unet": ModelSpec("unet", "U-Net + watershed", UNetConfig, UNet, "unet_dsb2018.safetensors"),
    "centerunet": ModelSpec("centerunet", "CenterUNet (rotated boxes)", CenterUNetConfig, CenterUNet,
                            "centerunet_dsb2018.safetensors", boxes=True),
    "deepcens": ModelSpec("deepcens", "DeepCeNS (Cascade Mask R-CNN)", DeepCeNSConfig, DeepCeNS,
                          "deepcens_dsb2018.safetensors", boxes=True),
}


@dataclass(frozen=True)
class Preset:
    """A bundled weights file users pick by name: which network it is and what it finds.

    Several presets can share one architecture: ``cells`` is a DeepCeNS trained on two stains
    (nuclear and cytoplasm) to find cells and nuclei, beside the one-stain nucleus DeepCeNS.
    """

    name: str
    label: str
    model: str  # the architecture, a key of MODELS
    bundled: str


PRESETS: dict[str, Preset] = {
    **{n: Preset(n, s.label, n, s.bundled) for n, s in MODELS.items()},
    "cells": Preset("cells", "Cells + nuclei (DeepCeNS, 2 stains)", "deepcens",
                    "deepcens_u2os_cells.safetensors"),
}


def get_spec(name: str) -> ModelSpec:
    """The spec of architecture ``name`` (a preset's is ``MODELS[get_preset(p).model]``);
    a clear error listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise WeightsError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}") from None


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise WeightsError(f"unknown model {name!r}: choose one of {', '.join(PRESETS)}") from None


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network of kind ``name``."""
    spec = get_spec(name)
    try:
        cfg = spec.config_class(**(config or {}))
    except TypeError as exc:
        raise WeightsError(f"invalid configuration for model {name!r}: {exc}") from exc
    return spec.model_class(cfg)


def bundled_weights(name: str) -> Path:
    """Path of the default weights shipped in the package for model (or preset) ``name``."""
    preset = get_preset(name)
    return Path(str(resources.files("napari_deepcens") / "weights" / preset.bundled))
