"""Writing results: atomic, and never over something the user already has (unless asked)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DeepCeNSError

log = logging.getLogger(__name__)


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


def write_labels(path: str | Path, labels: np.ndarray, overwrite: bool = False,
                 axes: str | None = None) -> Path:
    """Save instance labels as a compressed TIFF (uint16 when they fit, else uint32).
    ``axes`` (e.g. ``"TYX"`` for a time-lapse) is recorded so readers know the stack's axes."""
    import tifffile

    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    data = labels.astype(dtype, copy=False)
    extra = {"metadata": {"axes": axes}} if axes else {}
    return atomic_write(
        Path(path), lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", **extra), overwrite
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


def remove_stale(folder: Path, prefix: str, written: list[Path]) -> None:
    """Remove the box and track tables of ``prefix`` that this run did not rewrite: left by
    an earlier run (another model, a run with ``--link``), they describe labels that are no
    longer there. Called for ``--overwrite`` runs only."""
    for suffix in ("_boxes.csv", "_tracks.csv"):
        path = folder / f"{prefix}{suffix}"
        if path not in written and path.is_file():
            path.unlink()
            log.info("removed %s: it described the labels this run replaced", path.name)


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
        if overwrite:
            remove_stale(folder, prefix, written)
    return written


def write_stack_segmentation(folder: str | Path, stem: str, result, axes: str,
                             overwrite: bool = False, link: bool = False,
                             objects: dict | None = None, link_gap: int | None = None) -> list[Path]:
    """Write a stack's :class:`~napari_deepcens.inference.stack.StackResult` as ``deepcens
    segment`` does for one image, but each file holds the whole stack: ``<stem>_labels.tif``
    with the stack's axes (``axes`` without the colour axis), labels numbered across planes;
    for detection models ``<stem>_boxes.csv`` with one column per stack axis first.
    ``link``: one label per object across planes (along Z, else T, bridging ``link_gap``
    planes, by default ``link.LINK_GAP`` in time and none along Z; see
    :meth:`~napari_deepcens.inference.stack.StackResult.stacked`); linked along T,
    ``<stem>_tracks.csv`` holds each object's centroid and area frame by frame.
    ``objects``, if given, receives the number of distinct labels written per class."""
    import csv

    from ..inference.stack import link_axis
    from ..postprocess.centers import BOX_COLUMNS

    folder = Path(folder)
    axes = axes.replace("S", "")
    names = axes[: len(axes) - 2].lower()
    axis = link_axis(names.upper())
    along = names[axis] if axis < len(names) else ""
    if link_gap is None:  # gap closing for tracks in time, not for 3-D objects along z
        from ..postprocess.link import LINK_GAP

        link_gap = LINK_GAP if along == "t" else 0
        if link and along not in ("t", "z"):  # a plain stack: time or depth, nobody said
            log.warning("the stack axis is not named time (T) or depth (Z): planes linked "
                        "without bridging missed ones (--link-gap 1 bridges one, for a time-lapse)")
    stacked = result.stacked(link=link, axis=axis, link_gap=link_gap)
    written = []
    multi = len(stacked) > 1
    for name, (labels, boxes) in stacked.items():
        prefix = f"{stem}_{name}" if multi else stem
        if boxes is not None:
            def write(tmp: str, boxes=boxes, name=name) -> None:
                with open(tmp, "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(tuple(names) + BOX_COLUMNS + (("class",) if multi else ()))
                    for index, dets, offset in boxes:  # label offset, or linked labels
                        table = dets.table()
                        ids = (table[:, 0].astype(np.int64) + offset if np.isscalar(offset)
                               else np.asarray(offset, np.int64))
                        for label, row in zip(ids, table, strict=True):
                            writer.writerow([*index, int(label), *(f"{v:.4f}" for v in row[1:]),
                                             *((name,) if multi else ())])

            written.append(atomic_write(folder / f"{prefix}_boxes.csv", write, overwrite))
        if link and along == "t":  # tracks: each nucleus's centroid and area, frame by frame
            written.append(write_tracks(folder / f"{prefix}_tracks.csv", labels, axis,
                                        names, overwrite))
        # the labels last: a rerun skips an image whose labels exist, so they mark it done
        written.append(write_labels(folder / f"{prefix}_labels.tif", labels, overwrite, axes=axes))
        if overwrite:
            remove_stale(folder, prefix, written)
        if objects is not None:
            objects[name] = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    return written


def write_tracks(path: Path, labels: np.ndarray, axis: int, names: str,
                 overwrite: bool = False) -> Path:
    """``labels`` linked along stack axis ``axis`` as a CSV of tracks (postprocess/tracks.py):
    label, the linking axis's index, the other stack axes' and y, x centroids, area in px."""
    import csv

    from ..postprocess.tracks import track_table

    table = track_table(labels, axis)
    others = [c for i, c in enumerate(names) if i != axis]
    header = ["label", names[axis], *others, "y", "x", "area"]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in table:
                writer.writerow([int(row[0]), int(row[1]), *(f"{v:.2f}" for v in row[2:-1]),
                                 int(row[-1])])

    return atomic_write(path, write, overwrite)
