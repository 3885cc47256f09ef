"""OME-Zarr output written chunk by chunk, and the per-object table written in parts.

The output is one OME-Zarr image (NGFF 0.4, Zarr format 2: what napari-ome-zarr, Fiji/MoBIE,
QuPath and ome-zarr-py all read) holding a copy of the image pyramid and, in the spec's
``labels`` group beside it, one label pyramid per class (``labels/nucleus/0``, ``/1``, …).
Every array is created empty up front; workers then fill disjoint chunks, so several
processes can write the same store without locks and no array is ever held whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..io.export import atomic_write

NGFF_VERSION = "0.4"
#: Columns of the object table.
TABLE_COLUMNS = ("label", "class", "score", "area", "centroid_y", "centroid_x",
                 "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
                 "box_cx", "box_cy", "box_width", "box_height", "box_angle_deg")


def pyramid_shapes(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """(H, W) of each level, halving until the image fits in one chunk."""
    shapes = [tuple(shape[:2])]
    while max(shapes[-1]) > chunk:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _multiscales(name: str, axes: list[dict], n_levels: int,
                 pixel_size: tuple[float, float] = (1.0, 1.0),
                 origin: tuple[float, float] = (0.0, 0.0)) -> list[dict]:
    """Coarser levels take every other pixel (:func:`downsample_chunk`): their pixel
    ``j`` is level 0's pixel ``2^l·j``, so every level starts where level 0 does."""
    ndim = len(axes)
    datasets = []
    for level in range(n_levels):
        scale = [1.0] * (ndim - 2) + [float(2**level) * p for p in pixel_size]
        translate = [0.0] * (ndim - 2) + [float(o) for o in origin]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": translate}]})
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
             "type": "nearest" if name else "gaussian"}]


def create_store(path: Path, shape: tuple[int, ...], dtype, classes: Iterable[str], chunk: int,
                 name: str = "image", pixel_size: tuple[float, float] = (1.0, 1.0),
                 unit: str | None = None, origin: tuple[float, float] = (0.0, 0.0)) -> None:
    """Create the empty OME-Zarr image (image pyramid + one label pyramid per class), with
    the input's pixel size, unit and position (so the labels overlay it)."""
    import zarr

    path = Path(path)
    rgb = len(shape) == 3
    levels = pyramid_shapes(shape[:2], chunk)
    unit = unit or "pixel"
    space = [{"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}]
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for i, (h, w) in enumerate(levels):
        full = (shape[2], h, w) if rgb else (h, w)
        chunks = (shape[2], chunk, chunk) if rgb else (chunk, chunk)
        root.create_array(str(i), shape=full, chunks=chunks, dtype=dtype, fill_value=0)
    axes = ([{"name": "c", "type": "channel"}] if rgb else []) + space
    multiscales = _multiscales(name, axes, len(levels), pixel_size, origin)
    multiscales[0].pop("type")
    root.attrs["multiscales"] = multiscales
    labels = root.create_group("labels")
    classes = list(classes)
    labels.attrs["labels"] = classes
    for cls in classes:
        group = labels.create_group(cls)
        for i, (h, w) in enumerate(levels):
            group.create_array(str(i), shape=(h, w), chunks=(chunk, chunk), dtype=np.int32,
                               fill_value=0)
        group.attrs["multiscales"] = _multiscales(cls, space, len(levels), pixel_size, origin)
        group.attrs["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"}}


def open_array(path: Path | str, component: str, mode: str = "r+"):
    """One array of the output store (opened by path in each worker)."""
    import zarr

    return zarr.open_array(str(path), path=component, mode=mode)


def write_image_region(path: Path | str, pixels: np.ndarray, ys: slice, xs: slice) -> None:
    """Copy input pixels (h, w[, c]) into level 0 of the image (c, y, x for colour)."""
    arr = open_array(path, "0")
    arr[(slice(None), ys, xs) if pixels.ndim == 3 else (ys, xs)] = (
        np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 else pixels)


def downsample_chunk(path: Path | str, group: str, level: int, iy: int, ix: int, chunk: int) -> None:
    """Chunk (iy, ix) of ``level`` from level - 1 by taking every other pixel (labels stay
    labels; for the image preview this is as good as averaging)."""
    prefix = f"{group}/" if group else ""
    src = open_array(path, f"{prefix}{level - 1}", mode="r")
    dst = open_array(path, f"{prefix}{level}")
    ys = slice(2 * iy * chunk, 2 * (iy + 1) * chunk, 2)
    xs = slice(2 * ix * chunk, 2 * (ix + 1) * chunk, 2)
    lead = (slice(None),) * (src.ndim - 2)
    data = src[(*lead, slice(ys.start, ys.stop), slice(xs.start, xs.stop))][..., ::2, ::2]
    dst[(*lead, slice(iy * chunk, iy * chunk + data.shape[-2]),
         slice(ix * chunk, ix * chunk + data.shape[-1]))] = data


def downsample_tasks(shape: tuple[int, int], chunk: int, groups: list[str]) -> list[list[tuple]]:
    """Per level ≥ 1, the (group, level, iy, ix) chunk tasks (a level needs the previous one)."""
    levels = pyramid_shapes(shape, chunk)
    out = []
    for level in range(1, len(levels)):
        h, w = levels[level]
        out.append([(g, level, iy, ix) for g in groups
                    for iy in range(-(-h // chunk)) for ix in range(-(-w // chunk))])
    return out


def write_table_part(path: Path, rows: list[tuple]) -> None:
    """One block's rows of the object table (no header)."""
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def assemble_table(parts: list[Path], target: Path, overwrite: bool = False) -> Path:
    """The parts under one header in ``target``, atomically; one row per (label, class).

    Each object is measured by one block (``chunked.owners``); should two parts ever claim
    the same (label, class), the one measuring the largest area (the most of the object) is
    kept. Two streaming passes: the table is never held in memory, only one number per
    object.
    """

    def rows():
        for index, part in enumerate(parts):
            if part.exists():
                with open(part, newline="") as fh:
                    for number, row in enumerate(csv.reader(fh)):
                        yield (index, number), row

    best: dict[tuple[str, str], tuple[int, tuple[int, int]]] = {}
    for where, row in rows():
        key, area = (row[0], row[1]), int(row[3])
        if key not in best or area > best[key][0]:
            best[key] = (area, where)
    chosen = {where for _area, where in best.values()}

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(TABLE_COLUMNS)
            for where, row in rows():
                if where in chosen:
                    writer.writerow(row)

    return atomic_write(target, write, overwrite)
