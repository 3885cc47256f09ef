"""Exporting corrected masks as training data, in the layout ``deepcens train`` reads.

::

    DATASET/<id>/image.tif         the image as it was in napari
    DATASET/<id>/labels.tif        instance labels (one class), or labels_<class>.tif (several)
    DATASET/<id>/provenance.json   source file, model, weights sha256, thresholds, time
    DATASET/<id>/coco.json         this sample's COCO annotations (encoded once, at export)
    DATASET/index.csv              id,height,width,n_objects,modality,classes
    DATASET/annotations.json       COCO instances of the whole dataset (RLE masks, boxes,
                                   rotated boxes as the extra field ``rotated_box``)

Nothing is overwritten: a new sample gets a new id (``name``, ``name-2``, …); every file is
written under a temporary name and moved into place; the sample folder appears only when all
its files are complete, so a failed export leaves the dataset as it was.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import DeepCeNSError
from ..postprocess.rotated_boxes import rotated_boxes
from .export import atomic_write

INDEX_FIELDS = ("id", "height", "width", "n_objects", "modality", "classes")


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip())
    return keep.strip("._") or "sample"


def _free_id(dataset: Path, name: str) -> str:
    base, candidate, n = _safe_name(name), _safe_name(name), 1
    while (dataset / candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def content_digest(image: np.ndarray, labels: dict[str, np.ndarray]) -> str:
    """A fingerprint of a sample's pixels: the same image with the same labels twice would
    make fine-tuning weigh them double."""
    sha = hashlib.sha1()
    for name, array in (("image", image), *sorted(labels.items())):
        array = np.ascontiguousarray(array)
        sha.update(f"{name}{array.shape}{array.dtype.str}".encode())
        sha.update(array.view(np.uint8).ravel())
    return sha.hexdigest()


def find_duplicate(dataset: Path, digest: str) -> str | None:
    """The id of a sample of ``dataset`` with exactly these pixels, if any."""
    for record in dataset.glob("*/provenance.json"):
        try:
            if json.loads(record.read_text()).get("content_sha1") == digest:
                return record.parent.name
        except (OSError, ValueError):
            continue
    return None


def _labels_name(cls: str, n_classes: int) -> str:
    """``labels.tif`` for nuclei alone (datasets read it as nuclei: io/layout.py), else
    ``labels_<class>.tif``, so a cell mask exported alone is never trained on as nuclei."""
    return "labels.tif" if n_classes == 1 and cls == "nucleus" else f"labels_{_safe_name(cls)}.tif"


def export_sample(
    dataset: str | Path,
    image: np.ndarray,
    labels: dict[str, np.ndarray],
    name: str,
    provenance: dict | None = None,
    modality: str = "unknown",
) -> Path:
    """Add one (image, labels per class) sample to ``dataset``; returns the sample folder."""
    import tifffile

    dataset = Path(dataset)
    if not labels:
        raise DeepCeNSError("nothing to export: no labels layer given")
    for cls, lab in labels.items():
        if lab.shape != image.shape[:2]:
            raise DeepCeNSError(
                f"labels {cls!r} have shape {lab.shape} but the image is {image.shape[:2]}"
            )
        if np.asarray(lab).min(initial=0) < 0 or np.asarray(lab).max(initial=0) >= 2**32:
            raise DeepCeNSError(f"labels {cls!r} hold values outside 0 … 2³²−1: relabel them "
                                "1..N (correction tab) before exporting")
    digest = content_digest(np.asarray(image), {c: np.asarray(v) for c, v in labels.items()})
    if dataset.is_dir() and (twin := find_duplicate(dataset, digest)) is not None:
        raise DeepCeNSError(f"sample {twin!r} in {dataset} already has this image with exactly "
                            "these labels: nothing written (edit the labels to export a new "
                            "version)")
    try:
        dataset.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dataset, prefix=".export-"))
    except OSError as exc:
        raise DeepCeNSError(f"cannot write to {dataset}: {exc.strerror or exc}") from exc
    try:
        tifffile.imwrite(staging / "image.tif", np.asarray(image), compression="zlib")
        n_objects = 0
        for cls, lab in labels.items():
            lab = np.asarray(lab)
            dtype = np.uint16 if lab.max(initial=0) < 2**16 else np.uint32
            tifffile.imwrite(staging / _labels_name(cls, len(labels)), lab.astype(dtype),
                             compression="zlib")
            n_objects += int(len(np.unique(lab)) - (lab == 0).any())
        record = {"name": name, "classes": list(labels), "exported": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), **(provenance or {}), "content_sha1": digest}
        (staging / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
        coco = {"height": int(image.shape[0]), "width": int(image.shape[1]),
                "annotations": sample_annotations({c: np.asarray(v) for c, v in labels.items()})}
        (staging / SAMPLE_COCO).write_text(json.dumps(coco))
        sample_id = _free_id(dataset, name)
        target = dataset / sample_id
        os.rename(staging, target)  # atomic; fails rather than replace an existing folder
        os.chmod(target, 0o755)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DeepCeNSError(f"export to {dataset} failed: {exc.strerror or exc}") from exc
    row = {"id": sample_id, "height": image.shape[0], "width": image.shape[1],
           "n_objects": n_objects, "modality": modality, "classes": ";".join(labels)}
    _append_index(dataset, row)
    write_coco(dataset)
    return target


def _append_index(dataset: Path, row: dict) -> None:
    index = dataset / "index.csv"
    rows = []
    if index.is_file():
        with index.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows.append({k: str(v) for k, v in row.items()})
    fields = list(INDEX_FIELDS) + [k for r in rows for k in r if k not in INDEX_FIELDS]
    fields = list(dict.fromkeys(fields))
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(index, lambda tmp: Path(tmp).write_text(buffer.getvalue()), overwrite=True)


SAMPLE_COCO = "coco.json"


def _class_of(path: Path) -> str:
    return path.stem[len("labels_"):] if path.stem.startswith("labels_") else "nucleus"


def object_rle(labels: np.ndarray, value: int, box: tuple[slice, slice]) -> tuple[dict, int]:
    """COCO RLE (compressed, as pycocotools encodes it) of ``labels == value`` in the whole
    frame, and its area, from the object's bounding ``box`` alone.

    Why: encoding a whole-frame mask per object costs the frame's size each time; a
    2048² field of 2000 nuclei took ~40 s to export that way, on the GUI thread."""
    from pycocotools import mask as mask_utils

    height, width = labels.shape
    rows, cols = box
    # the object's pixels in column-major order, as whole-frame indices (COCO's order)
    cc, rr = np.nonzero((labels[rows, cols] == value).T)
    index = (cc + cols.start) * height + rr + rows.start
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = index[np.r_[0, breaks]]
    ends = index[np.r_[breaks - 1, index.size - 1]] + 1
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0::2][:-1] = starts - np.r_[0, ends[:-1]]  # background before each run
    counts[1::2] = ends - starts
    counts[-1] = height * width - ends[-1]
    counts = counts[:-1] if counts[-1] == 0 else counts  # an object ending the frame
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [height, width]},
                                 height, width)
    return rle, int(index.size)


def sample_annotations(labels_by_class: dict[str, np.ndarray]) -> list[dict]:
    """COCO annotations (no ids yet) of one sample: RLE mask, bbox, area, rotated box, class."""
    out = []
    for cls, labels in labels_by_class.items():
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):  # Fiji saves label maps as float32
            labels = labels.astype(np.int64)
        boxes = {row[0]: row[1:] for row in rotated_boxes(labels)}
        dense, values = labels, None
        if labels.max(initial=0) > 1_000_000:  # find_objects lists every number up to the max
            values, inverse = np.unique(labels, return_inverse=True)
            dense = inverse.reshape(labels.shape) + int(values[0] != 0)
            values = np.r_[0, values] if values[0] != 0 else values
        for index, box in enumerate(ndi.find_objects(dense), start=1):
            if box is None:
                continue
            rle, area = object_rle(dense, index, box)
            value = int(values[index]) if values is not None else index
            rows, cols = box
            rle["counts"] = rle["counts"].decode("ascii")
            out.append({"category": cls, "segmentation": rle, "area": float(area),
                        "bbox": [float(cols.start), float(rows.start), float(cols.stop - cols.start),
                                 float(rows.stop - rows.start)], "iscrowd": 0,
                        "rotated_box": list(boxes[value])})
    return out


def _sample_record(folder: Path) -> dict | None:
    """The sample's COCO fragment: saved at export, computed for hand-made folders."""
    import tifffile

    label_files = sorted(folder.glob("labels*.tif"))
    if not label_files or not (folder / "image.tif").is_file():
        return None
    saved = folder / SAMPLE_COCO
    if saved.is_file():
        return json.loads(saved.read_text())
    labels = {_class_of(p): tifffile.imread(p) for p in label_files}
    shape = next(iter(labels.values())).shape
    return {"height": int(shape[0]), "width": int(shape[1]),
            "annotations": sample_annotations(labels)}


def coco_dataset(dataset: str | Path) -> dict:
    """COCO instances of every sample in ``dataset`` (categories from the label file names).

    Each sample's annotations are encoded once, at export (``<id>/coco.json``), so adding a
    sample to a large dataset does not re-read and re-encode all the others.
    """
    dataset = Path(dataset)
    images, annotations, categories = [], [], {}
    folders = sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
    for image_id, folder in enumerate(folders, start=1):
        record = _sample_record(folder)
        if record is None:
            continue
        images.append({"id": image_id, "file_name": f"{folder.name}/image.tif",
                       "height": record["height"], "width": record["width"]})
        for ann in record["annotations"]:
            cat = categories.setdefault(ann["category"], len(categories) + 1)
            fields = {k: v for k, v in ann.items() if k != "category"}
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat, **fields})
    return {
        "info": {"description": "exported by napari-deepcens",
                 "rotated_box": "[cx, cy, width, height, angle_deg], pixels, x = column"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in categories.items()],
    }


def write_coco(dataset: str | Path) -> Path:
    """(Re)write ``annotations.json`` for the whole dataset, atomically."""
    data = json.dumps(coco_dataset(dataset))
    return atomic_write(Path(dataset) / "annotations.json",
                        lambda tmp: Path(tmp).write_text(data), overwrite=True)
