"""Training data: annotated images held in memory, served as endless random crops.

DSB-sized collections (hundreds of images of a few hundred pixels a side) fit in memory many
times over, so images are read and normalised once, and every crop is augmented afresh.
Modalities are balanced (weight ∝ 1/√count) so the dozen brightfield images are not drowned by
four hundred fluorescence ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..io.images import read_image, read_labels, to_plane
from ..io.layout import list_samples
from .augment import AugmentConfig, augment
from .targets import targets_for

log = logging.getLogger(__name__)


@dataclass
class AnnotatedImage:
    """A normalised plane with its instance labels."""

    id: str
    plane: np.ndarray
    labels: np.ndarray
    modality: str = "unknown"


def load_folder(data_dir: str | Path) -> list[AnnotatedImage]:
    """Read and normalise every sample of a dataset folder."""
    items = []
    for sample in list_samples(data_dir):
        plane = to_plane(read_image(sample.image))
        labels = read_labels(sample.labels)
        if labels.shape != plane.shape:
            log.warning("%s: labels %s do not match image %s; skipped",
                        sample.id, labels.shape, plane.shape)
            continue
        items.append(AnnotatedImage(sample.id, plane, labels, sample.modality))
    return items


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent-circle diameter (2·√(area/π)) of each object, in pixels."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def median_diameter(items: list[AnnotatedImage]) -> float:
    """Median object diameter over a whole collection (the model's training scale)."""
    diameters = np.concatenate([object_diameters(item.labels) for item in items] or [np.zeros(0)])
    return float(np.median(diameters)) if diameters.size else 0.0


class RandomCrops(IterableDataset):
    """Endless stream of (image[1, S, S], {target name: tensor}) for ``model``."""

    def __init__(self, items: list[AnnotatedImage], cfg: AugmentConfig, seed: int = 0,
                 model: str = "unet") -> None:
        if not items:
            raise ValueError("no training images")
        self.items, self.cfg, self.seed, self.model = items, cfg, seed, model
        counts = Counter(item.modality for item in items)
        weights = np.asarray([1.0 / np.sqrt(counts[item.modality]) for item in items])
        self.probabilities = weights / weights.sum()

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            item = self.items[rng.choice(len(self.items), p=self.probabilities)]
            image, labels = augment(item.plane, item.labels, self.cfg, rng)
            targets = targets_for(self.model, labels)
            yield torch.from_numpy(image[None]), {k: torch.from_numpy(v) for k, v in targets.items()}
