"""Losses for the U-Net: shape-aware weighted cross-entropy + Dice, and the distance map.

The shape-aware loss (seed 003) weights each pixel's cross-entropy by
``w = w_c + 10·exp(-D²/50)``, so the thin background gaps between touching nuclei, where
watershed seeds are won or lost, count up to eleven times more than open background. Dice on
top keeps small and sparse images from collapsing to all-background.
"""

from __future__ import annotations

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
    outputs: torch.Tensor, targets: torch.Tensor, distance_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total U-Net loss and its parts.

    outputs: FloatTensor[N, 2, H, W] logits (foreground, distance).
    targets: FloatTensor[N, 3, H, W] (foreground, normalised distance, shape-aware weight).
    """
    fg_logits, dist_logits = outputs[:, 0], outputs[:, 1]
    fg, dist, weights = targets[:, 0], targets[:, 1], targets[:, 2]
    bce = shape_aware_bce(fg_logits, fg, weights)
    dice = soft_dice_loss(fg_logits, fg)
    dist_loss = F.binary_cross_entropy_with_logits(dist_logits, dist)
    total = bce + dice + distance_weight * dist_loss
    parts = {"bce": bce.item(), "dice": dice.item(), "distance": dist_loss.item()}
    return total, parts
