"""Writing results: atomic, and never over something the user already has (unless asked)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DeepCeNSError


def atomic_write(path: Path, write, overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` then move the file into place in one step.

    A crash or a full disk leaves either the old file or no file, never half a file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise DeepCeNSError(f"{path} exists already; not overwritten")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
    except OSError as exc:
        raise DeepCeNSError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        if not overwrite and path.exists():  # appeared meanwhile: keep the user's
            raise DeepCeNSError(f"{path} exists already; not overwritten")
        os.replace(tmp, path)
    except OSError as exc:
        raise DeepCeNSError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Save instance labels as a compressed TIFF (uint16 when they fit, else uint32)."""
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    data = labels.astype(dtype, copy=False)
    return atomic_write(
        Path(path), lambda tmp: tifffile.imwrite(tmp, data, compression="zlib"), overwrite
    )


def write_boxes_csv(path: str | Path, boxes, overwrite: bool = False, cls: str | None = None) -> Path:
    """Rotated boxes as CSV: label, score, cx, cy, width, height, angle_deg (pixels, x = column),
    and a ``class`` column when ``cls`` is given.

    ``boxes``: :class:`~napari_deepcens.postprocess.centers.Detections`, box ``i`` ↔ label i+1.
    """
    import csv

    from ..postprocess.centers import BOX_COLUMNS

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(BOX_COLUMNS + (("class",) if cls else ()))
            for row in boxes.table():
                writer.writerow([int(row[0]), *(f"{v:.4f}" for v in row[1:]), *((cls,) if cls else ())])

    return atomic_write(Path(path), write, overwrite)


def write_segmentation(folder: str | Path, stem: str, seg, overwrite: bool = False) -> list[Path]:
    """Write a :class:`~napari_deepcens.inference.predictor.Segmentation` as ``deepcens
    segment`` does: ``<stem>_labels.tif`` (+ ``<stem>_boxes.csv`` for detection models); for
    multi-class models one ``<stem>_<class>_labels.tif`` (+ ``_boxes.csv``) per class."""
    folder = Path(folder)
    parts = seg.by_class()
    written = []
    for name, part in parts.items():
        prefix = f"{stem}_{name}" if len(parts) > 1 else stem
        if part.boxes is not None:
            written.append(write_boxes_csv(folder / f"{prefix}_boxes.csv", part.boxes, overwrite,
                                           cls=name if len(parts) > 1 else None))
        written.append(write_labels(folder / f"{prefix}_labels.tif", part.labels, overwrite))
    return written
