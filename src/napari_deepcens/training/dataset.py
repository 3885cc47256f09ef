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

from ..errors import DeepCeNSError
from ..io.images import read_image, read_labels, to_channels
from ..io.layout import list_samples
from .augment import AugmentConfig, augment
from .targets import targets_for

log = logging.getLogger(__name__)


@dataclass
class AnnotatedImage:
    """A normalised plane with its instance labels.

    ``plane``: (H, W), or (C, H, W) for multi-channel models. ``labels``: (H, W) instance
    labels, or (K, H, W), one label image per class of ``classes``.
    """

    id: str
    plane: np.ndarray
    labels: np.ndarray
    modality: str = "unknown"
    classes: tuple[str, ...] = ("nucleus",)

    def class_labels(self) -> dict[str, np.ndarray]:
        """Label image of each class."""
        per_class = self.labels[None] if self.labels.ndim == 2 else self.labels
        return dict(zip(self.classes, per_class, strict=True))


def network_input(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    """``image`` as a model of ``channels`` inputs reads it; a grey image for a model of
    several stains is refused (copied into every channel it would teach the model that the
    cytoplasm looks like the nuclei)."""
    if channels > 1 and (image.ndim == 2 or image.shape[-1] == 1):
        raise DeepCeNSError(f"{name} is a grey image, but this model reads {channels} colour "
                            "channels, one per stain (red nuclear, green cytoplasm for the cells "
                            "model): export samples segmented with both stains, or train a "
                            "one-channel model on grey data (--channels 1)")
    return to_channels(image, channels)


def load_folder(data_dir: str | Path, channels: int = 1) -> list[AnnotatedImage]:
    """Read and normalise every sample of a dataset folder (one class)."""
    items = []
    for sample in list_samples(data_dir):
        plane = network_input(read_image(sample.image), channels, f"{sample.id}/{sample.image.name}")
        classes = tuple(sample.classes)
        if len(classes) > 1:  # <id>/labels_<class>.* : one label image per class
            labels = np.stack([read_labels(path) for path in sample.classes.values()])
        else:
            labels = read_labels(sample.labels)
        if labels.shape[-2:] != plane.shape[-2:]:
            log.warning("%s: labels %s do not match image %s; skipped",
                        sample.id, labels.shape, plane.shape)
            continue
        items.append(AnnotatedImage(sample.id, plane, labels, sample.modality, classes))
    return items


def load_coco(annotations: str | Path, channels: int = 3,
              classes: tuple[str, ...] | None = None) -> list[AnnotatedImage]:
    """Images and instance masks of a COCO instances JSON, one label image per category.

    Image paths are relative to the JSON's folder. ``classes`` picks and orders categories by
    name (default: all, in category-id order). Overlapping masks of one class (rare in
    microscopy) are resolved in favour of the later annotation.
    """
    import json

    from pycocotools import mask as mask_utils

    annotations = Path(annotations)
    try:
        data = json.loads(annotations.read_text())
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images, anns = data["images"], data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeepCeNSError(f"{annotations}: not a readable COCO instances file ({exc})") from exc
    names = tuple(classes) if classes else tuple(categories[k] for k in sorted(categories))
    unknown = set(names) - set(categories.values())
    if unknown:
        raise DeepCeNSError(f"{annotations}: no categories named {', '.join(sorted(unknown))}; "
                            f"it has {', '.join(categories.values())}")
    by_image: dict[int, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann)
    items = []
    unannotated = [info["file_name"] for info in images if info["id"] not in by_image]
    if unannotated:  # an unfinished annotation would teach its nuclei as background
        log.warning("%s: %d image(s) with no annotations left out (%s%s)", annotations.name,
                    len(unannotated), ", ".join(unannotated[:3]), ", …" if len(unannotated) > 3 else "")
    images = [info for info in images if info["id"] in by_image]
    for info in images:
        path = annotations.parent / info["file_name"]
        plane = network_input(read_image(path), channels, info["file_name"])
        h, w = plane.shape[-2:]
        labels = np.zeros((len(names), h, w), np.int32)
        counts = [0] * len(names)
        skipped = 0
        for ann in by_image.get(info["id"], []):
            name = categories.get(ann["category_id"])
            if name not in names or ann.get("iscrowd", 0):
                continue
            seg = ann.get("segmentation")
            try:
                if isinstance(seg, list):  # polygons (each of ≥ 3 points)
                    polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6]
                    if not polygons:
                        raise ValueError("no polygon of 3 points or more")
                    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
                elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed
                    rle = mask_utils.frPyObjects(seg, h, w)
                elif isinstance(seg, dict):
                    rle = seg
                else:
                    raise ValueError(f"segmentation of type {type(seg).__name__}")
                mask = mask_utils.decode(rle).astype(bool)
                if mask.shape != (h, w):  # drawn on another size of this image
                    raise ValueError(f"a mask of {mask.shape[1]}×{mask.shape[0]} px on an image "
                                     f"of {w}×{h}")
            except Exception as exc:  # one bad outline must not stop a dataset
                log.debug("%s: annotation %s of %s skipped (%s)", annotations.name,
                            ann.get("id"), info["file_name"], exc)
                skipped += 1
                continue
            if not mask.any():
                skipped += 1
                continue
            k = names.index(name)
            counts[k] += 1
            labels[k][mask] = counts[k]
        # this package's own layout is <id>/image.tif; other tools name the file itself
        file = Path(info["file_name"])
        sample_id = file.parent.name if file.stem == "image" and file.parent.name else file.stem
        if skipped:
            log.warning("%s: %d empty or unreadable outlines skipped in %s", annotations.name,
                        skipped, info["file_name"])
        items.append(AnnotatedImage(sample_id, plane, labels, "fluorescence", names))
    if not items:
        raise DeepCeNSError(f"{annotations}: no annotated images")
    return items


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent-circle diameter (2·√(area/π)) of each object, in pixels."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def rescale_items(items: list[AnnotatedImage], factor: float) -> list[AnnotatedImage]:
    """The same samples zoomed by ``factor``: planes as inference zooms images
    (:func:`~napari_deepcens.inference.predictor.resize`), labels nearest at pixel centres.
    How fine-tuning brings a user's objects to the size the model was trained at."""
    import torch
    from torch.nn import functional as F

    from ..inference.predictor import resize

    out = []
    for item in items:
        h, w = item.plane.shape[-2:]
        size = (max(16, round(h * factor)), max(16, round(w * factor)))
        labels = torch.from_numpy(np.ascontiguousarray(item.labels, dtype=np.float32))
        labels = labels[None, None] if labels.ndim == 2 else labels[None]
        labels = F.interpolate(labels, size=size, mode="nearest-exact")[0]
        out.append(AnnotatedImage(
            item.id, resize(item.plane, size),
            (labels[0] if item.labels.ndim == 2 else labels).numpy().astype(np.int32),
            item.modality, item.classes))
    return out


def median_diameter(items: list[AnnotatedImage]) -> float:
    """Median object diameter over a whole collection (the model's training scale).

    With several classes, the nuclei set the scale (the first class otherwise), so the
    diameter knob means "nucleus diameter" for every model that has nuclei.
    """
    def reference(item: AnnotatedImage) -> np.ndarray:
        per_class = item.class_labels()
        return per_class.get("nucleus", next(iter(per_class.values())))

    diameters = np.concatenate([object_diameters(reference(item)) for item in items] or [np.zeros(0)])
    return float(np.median(diameters)) if diameters.size else 0.0


class RandomCrops(IterableDataset):
    """Endless stream of (image[1, S, S], {target name: tensor}) for ``model``."""

    def __init__(self, items: list[AnnotatedImage], cfg: AugmentConfig, seed: int = 0,
                 model: str = "unet") -> None:
        if not items:
            raise DeepCeNSError("no usable training images (each needs an image and labels of the same size)")
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
            image = image if image.ndim == 3 else image[None]
            yield torch.from_numpy(image), {k: torch.from_numpy(v) for k, v in targets.items()}


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack the images; keep the per-image targets (their object counts differ) as a list."""
    return torch.stack([image for image, _ in batch]), [targets for _, targets in batch]
