"""Losses for the U-Net: shape-aware weighted cross-entropy + Dice, and the distance map.

The shape-aware loss (seed 003) weights each pixel's cross-entropy by
``w = w_c + 10·exp(-D²/50)``, so the thin background gaps between touching nuclei, where
watershed seeds are won or lost, count up to eleven times more than open background. Dice on
top keeps small and sparse images from collapsing to all-background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice between sigmoid(logits) and a binary target, over the whole batch."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (prob.sum() + target.sum() + eps)


def shape_aware_bce(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel-weighted binary cross-entropy, normalised by the total weight."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weights).sum() / weights.sum().clamp_min(1e-6)


def unet_loss(
    outputs: torch.Tensor, targets: dict[str, torch.Tensor], distance_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total U-Net loss and its parts.

    outputs: FloatTensor[N, 2, H, W] logits (foreground, distance).
    targets["unet"]: FloatTensor[N, 3, H, W] (foreground, normalised distance, weight).
    """
    fg_logits, dist_logits = outputs[:, 0], outputs[:, 1]
    stack = targets["unet"]
    fg, dist, weights = stack[:, 0], stack[:, 1], stack[:, 2]
    bce = shape_aware_bce(fg_logits, fg, weights)
    dice = soft_dice_loss(fg_logits, fg)
    dist_loss = F.binary_cross_entropy_with_logits(dist_logits, dist)
    total = bce + dice + distance_weight * dist_loss
    parts = {"bce": bce.item(), "dice": dice.item(), "distance": dist_loss.item()}
    return total, parts


@dataclass(frozen=True)
class CenterLossWeights:
    """L = center + 2·size + 1·offset + 2·angle + 1·segmentation (seed 004)."""

    center: float = 1.0
    size: float = 2.0
    offset: float = 1.0
    angle: float = 2.0
    segmentation: float = 1.0


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                         beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss over Gaussian-splatted centre heatmaps."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(prob) * (1 - prob) ** alpha * pos
    neg_loss = torch.log(1 - prob) * prob**alpha * (1 - target) ** beta * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1.0)


def centerunet_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                    weights: CenterLossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Total CenterUNet loss; the regressions count only at object centres."""
    weights = weights or CenterLossWeights()
    mask = targets["mask"]
    n = mask.sum().clamp_min(1.0)
    center = centernet_focal_loss(outputs["heatmap"], targets["heatmap"])
    size = (F.l1_loss(outputs["size"], targets["size"], reduction="none") * mask).sum() / n
    offset = (F.l1_loss(torch.sigmoid(outputs["offset"]), targets["offset"], reduction="none")
              * mask).sum() / n
    diff = torch.remainder(outputs["angle"] - targets["angle"], 1.0)  # θ/π is periodic
    angle = (torch.minimum(diff, 1.0 - diff) * mask).sum() / n
    segm = soft_dice_loss(outputs["segmentation"], targets["segmentation"])
    total = (weights.center * center + weights.size * size + weights.offset * offset
             + weights.angle * angle + weights.segmentation * segm)
    parts = {"center": center.item(), "size": size.item(), "offset": offset.item(),
             "angle": angle.item(), "segmentation": segm.item()}
    return total, parts


LOSSES = {"unet": unet_loss, "centerunet": centerunet_loss}
