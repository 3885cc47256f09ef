"""The dataset folder layout shared by training, evaluation and export.

::

    DATA_DIR/index.csv            id,...,modality (optional; columns beyond id are optional)
    DATA_DIR/<id>/image.<ext>     the image
    DATA_DIR/<id>/labels.<ext>    instance labels, 0 = background
    DATA_DIR/<id>/labels_<class>.<ext>   or one label image per class (several classes)

Prediction folders written by ``deepcens segment`` (``<stem>_labels.tif``, or
``<stem>_<class>_labels.tif`` for multi-class models) are read by :func:`find_prediction`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeepCeNSError
from .images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Sample:
    """One annotated image of a dataset folder."""

    id: str
    image: Path
    labels: Path
    modality: str = "unknown"
    #: Several classes: class name → label image (``labels`` is then the first of them).
    class_labels: tuple[tuple[str, Path], ...] = ()

    @property
    def classes(self) -> dict[str, Path]:
        """Label file of each class (one-class samples: ``{"nucleus": labels}``)."""
        return dict(self.class_labels) if self.class_labels else {"nucleus": self.labels}


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_index(data_dir: Path) -> dict[str, dict[str, str]]:
    """Rows of ``index.csv`` by id ({} when there is none)."""
    index = data_dir / "index.csv"
    if not index.is_file():
        return {}
    with index.open(newline="") as fh:
        return {row["id"]: row for row in csv.DictReader(fh) if row.get("id")}


def list_samples(data_dir: str | Path) -> list[Sample]:
    """All ``<id>/image.* + <id>/labels.*`` pairs under ``data_dir``, sorted by id."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DeepCeNSError(f"dataset folder not found: {data_dir}")
    index = read_index(data_dir)
    samples = []
    # hidden folders are not samples (an export interrupted while staging: .export-*)
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image, labels = _find(sub, "image"), _find(sub, "labels")
        per_class = tuple(sorted((p.stem[len("labels_"):], p) for p in sub.glob("labels_*")
                                 if p.suffix.lower() in IMAGE_SUFFIXES))
        if image is None or (labels is None and not per_class):
            continue
        modality = index.get(sub.name, {}).get("modality") or "unknown"
        if labels is not None:
            samples.append(Sample(sub.name, image, labels, modality))
        else:
            samples.append(Sample(sub.name, image, per_class[0][1], modality, per_class))
    if not samples:
        raise DeepCeNSError(
            f"no samples in {data_dir}: expected sub-folders <id>/image.png (or .tif) "
            "with <id>/labels.png (or .tif) beside it"
        )
    return samples


def find_prediction(pred_dir: Path, sample_id: str, cls: str | None = None) -> Path | None:
    """The predicted label file for ``sample_id`` (and class ``cls`` of a multi-class model)
    in a ``deepcens segment`` output folder."""
    if cls is not None:
        for suffix in (".tif", ".tiff", ".png"):
            candidate = pred_dir / f"{sample_id}_{cls}_labels{suffix}"
            if candidate.is_file():
                return candidate
        return None
    for candidate in (
        pred_dir / f"{sample_id}_labels.tif",
        pred_dir / f"{sample_id}_labels.tiff",
        pred_dir / f"{sample_id}_labels.png",
        pred_dir / sample_id / "labels.tif",
        pred_dir / sample_id / "labels.png",
    ):
        if candidate.is_file():
            return candidate
    return None
