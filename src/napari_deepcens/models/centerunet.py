"""CenterUNet (seed 004): one encoder-decoder that detects rotated nuclei and segments them.

The U-Net body is shared; CenterNet heads read the decoder level at 1/4 resolution:

* ``heatmap`` (1): object-centre likelihood (Gaussian targets, focal loss),
* ``size`` (2): long and short side of the object's minimum rotated rectangle, in cells of 4 px,
* ``offset`` (2): sub-cell position of the centre (x, y),
* ``angle`` (1): direction of the long side in [0, π),

and a segmentation head (1) on the full-resolution decoder output. Instances come from a
watershed of the segmentation seeded at the detected centres (postprocess/centers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .unet import UNet, UNetConfig

HEAD_STRIDE = 4


@dataclass(frozen=True)
class CenterUNetConfig(UNetConfig):
    """U-Net body plus the width of the detection heads."""

    out_channels: int = 1
    head_channels: int = 32


def _head(cin: int, width: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(width, cout, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterUNet(UNet):
    """``forward``: FloatTensor[N, 1, H, W] → dict of raw head outputs (see module doc)."""

    MAP_STRIDES: ClassVar[dict[str, int]] = {"segmentation": 1, "heatmap": HEAD_STRIDE, "size": HEAD_STRIDE,
                   "offset": HEAD_STRIDE, "angle2": HEAD_STRIDE}

    def __init__(self, config: CenterUNetConfig | None = None) -> None:
        config = config or CenterUNetConfig()
        if config.depth < 2:
            raise ValueError(f"CenterUNet needs depth ≥ 2 for its 1/4-resolution heads, got {config.depth}")
        super().__init__(config)
        cin = min(config.base_channels * 4, config.max_channels)  # decoder width at 1/4
        w = config.head_channels
        self.heatmap = _head(cin, w, 1, bias=-2.19)  # CenterNet's prior: sigmoid ≈ 0.1
        self.size = _head(cin, w, 2)
        self.offset = _head(cin, w, 2)
        self.angle = _head(cin, w, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        quarter = feats[-3]  # decoder levels: …, 1/4, 1/2, 1
        return {
            "segmentation": self.head(feats[-1]),
            "heatmap": self.heatmap(quarter),
            "size": self.size(quarter),
            "offset": self.offset(quarter),
            "angle": self.angle(quarter),
        }

    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities, sizes in cells, offsets in [0, 1], and the angle as (cos 2θ, sin 2θ),
        which averages correctly where tiles overlap (θ and θ+π are the same box)."""
        out = self(x)
        theta = out["angle"] * math.pi
        return {
            "segmentation": torch.sigmoid(out["segmentation"]),
            "heatmap": torch.sigmoid(out["heatmap"]),
            "size": out["size"].clamp_min(0),
            "offset": torch.sigmoid(out["offset"]),
            "angle2": torch.cat([torch.cos(2 * theta), torch.sin(2 * theta)], dim=1),
        }
