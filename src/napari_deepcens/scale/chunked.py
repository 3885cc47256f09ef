"""Chunked segmentation of images of any size on Dask, with no object cut or duplicated.

The image is split into a grid of square cores (``chunk`` pixels). Four kinds of tasks run
on a ``dask.distributed`` client (an in-process local cluster by default, or any scheduler
address: SLURM/Kubernetes clusters made with dask-jobqueue/dask-kubernetes need nothing more):

1. **segment**: each core grown by a ``halo`` (larger than the largest object plus the
   network's context) is normalised with *global* percentiles, run through the network and
   post-processed in one piece; its labels (local numbers 1..n) go to a scratch Zarr.
2. **match**: for each pair of neighbouring blocks (8-connectivity), the labels of the two
   versions are compared where their grown regions overlap; two objects that overlap by more
   than half of the smaller one are the same object.
3. Union-find (``scipy.sparse.csgraph.connected_components``) over those pairs, on the client,
   gives every object one label unique in the whole image (1..N, in raster order of first
   appearance); only object versions present in a block's own core take part, so a version
   that a block saw only in its halo (with less context) can never join two objects.
4. **relabel**: each block writes its own core, renumbered, to the OME-Zarr output. An object
   crossing a seam is the union of the parts of its versions in each core: each part was
   segmented with ≥ ``halo`` pixels of context on both sides of the seam.
5. **measure**: the object table (centroid, area, bbox, rotated box, score, class) is computed
   from the written labels. Task 4 reports where each object has pixels in each core; joined,
   they give its whole bounding box, and the block holding the box's top-left corner reads
   that box and measures the object once, whatever its size or shape.

Normalisation and object size are global decisions: percentiles are sampled once from a
coarse pyramid level (or a strided sample of level 0), and the diameter estimated once on a
central crop, so neighbouring chunks see the same intensities and the same zoom.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DeepCeNSError, ImageError
from .lazy import LazyImage, Source, check_colour
from .zarr_out import (
    TABLE_COLUMNS,
    assemble_table,
    create_store,
    downsample_chunk,
    downsample_tasks,
    open_array,
    write_image_region,
    write_table_part,
)

if TYPE_CHECKING:
    from ..inference.denoise import Denoiser

log = logging.getLogger(__name__)

#: Pixels read for the global percentiles (as the in-memory path samples).
SAMPLE_PIXELS = 4_000_000
#: Up to this much level-0 data, the percentile sample is exactly the in-memory path's.
EXACT_SAMPLE_BYTES = 4 * 2**30
#: Rows of level 0 read for the noise level of a large image, and how much of each.
NOISE_ROWS = 64
NOISE_WIDTH = 8192
#: Side of the central crop the object size is estimated on.
ESTIMATE_CROP = 1024
#: Largest network input side for one block (bounds the memory of a worker).
MAX_TILE = 2048
#: Two versions of an object are the same when they overlap by more than this fraction of the
#: smaller one (inside the region both blocks segmented).
MATCH_FRACTION = 0.5
Progress = tuple[int, int]



class Cancelled(DeepCeNSError):
    """The user cancelled a chunked run; nothing was written."""


_PREDICTORS: dict = {}
_PREDICTORS_LOCK = threading.Lock()
_THREADS_SET = False


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the network itself (a path, not a torch module)."""

    model: str = "unet"
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    #: Average the network over four flips (inference/tta.py). Not part of the key: the same
    #: loaded network serves both.
    tta: bool = field(default=False, compare=False)
    #: Non-local means first (inference/denoise.py): ``None`` when the image is noisy.
    denoise: bool | None = field(default=None, compare=False)

    def load(self):
        """The predictor, loaded once per worker process and shared by its threads."""
        with _PREDICTORS_LOCK:
            if self not in _PREDICTORS:
                from ..inference.predictor import Predictor

                _PREDICTORS[self] = Predictor.from_name(self.model, weights=self.weights,
                                                        device=self.device, precision=self.precision)
            return _PREDICTORS[self]

    def share(self, predictor) -> None:
        """Make an already loaded predictor the one in-process workers use."""
        with _PREDICTORS_LOCK:
            _PREDICTORS.setdefault(self, predictor)


def _limit_torch_threads() -> None:
    """One torch thread pool per worker thread would oversubscribe the cores: split them."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    if os.environ.get("DEEPCENS_TORCH_THREADS"):  # set by a local cluster of several processes
        import torch

        torch.set_num_threads(int(os.environ["DEEPCENS_TORCH_THREADS"]))
        return
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // max(nthreads, 1)))


# ---------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalisation:
    """Global intensity mapping, identical for every chunk (what ``to_plane`` does per image)."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    invert: bool = False
    channels: int = 1
    luminance: bool = False

    def _grey(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim == 2:
            return pixels.astype(np.float32, copy=False)
        rgb = pixels[..., :3].astype(np.float32, copy=False)
        if not self.luminance:
            return np.ascontiguousarray(rgb[..., 0])
        return rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w[, c]) pixels → the network input, (h, w) or (C, h, w) float32."""
        if self.channels == 1:
            plane = self._grey(pixels)
            bad = ~np.isfinite(plane) if np.issubdtype(plane.dtype, np.floating) else None
            out = (plane - np.float32(self.lo[0])) * np.float32(1.0 / (self.hi[0] - self.lo[0]))
            if self.invert:
                out = np.float32(1.0) - out
            if bad is not None and bad.any():
                out[bad] = 0.0
            return np.clip(out, -0.5, 1.5).astype(np.float32, copy=False)
        rgb = pixels[..., :3] if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)
        planes = []
        for c in range(self.channels):
            ch = rgb[..., min(c, rgb.shape[-1] - 1)].astype(np.float32)
            ch = np.where(np.isfinite(ch), ch, np.float32(self.lo[c]))
            span = self.hi[c] - self.lo[c]
            planes.append(np.clip((ch - self.lo[c]) / span, -0.5, 1.5) if span > 0 else np.zeros_like(ch))
        return np.stack(planes).astype(np.float32)


def _sample(image: LazyImage, coarse: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values for the percentiles, a 2-D ~512² grid of pixels for the bright/dark decision,
    whole rows of level 0 for the noise level).

    Up to :data:`EXACT_SAMPLE_BYTES` of level 0, exactly the pixels the in-memory path samples
    (every k-th pixel in raster order; the image is read once, chunk by chunk), so chunked and
    one-piece runs normalise identically. Larger images: a strided sample of the coarsest
    pyramid level that still has :data:`SAMPLE_PIXELS` (strides of a pyramid level can alias
    with periodic structure; on a 8192² mosaic of 256² tiles it moved the 99.8th percentile by
    3 %, hence the exact sample wherever it is affordable).
    """
    import dask

    level = image.levels[0]
    h, w = level.shape[:2]
    grid = level[:: max(1, h // 512), :: max(1, w // 512)]
    if not coarse or level.nbytes <= EXACT_SAMPLE_BYTES or not image.multiscale:
        rows = level[:: max(1, h // 512)]  # the rows the in-memory noise estimate reads
        with dask.config.set({"array.rechunk.method": "tasks"}):  # here, not on a cluster's P2P
            flat = level.reshape((-1, *level.shape[2:]))
            values, grid, rows = dask.compute(flat[:: flat.shape[0] // SAMPLE_PIXELS + 1], grid,
                                              rows, scheduler="threads")
        return np.asarray(values), np.asarray(grid), np.asarray(rows)
    # noise needs neighbouring pixels: NOISE_ROWS whole rows of level 0 (up to NOISE_WIDTH wide)
    picks = np.unique(np.linspace(0, h - 1, NOISE_ROWS).astype(int))
    rows = level[picks][:, :NOISE_WIDTH]
    for candidate in image.levels[1:]:
        if candidate.shape[0] * candidate.shape[1] >= SAMPLE_PIXELS:
            level = candidate
    step = max(1, math.ceil(math.sqrt(level.shape[0] * level.shape[1] / SAMPLE_PIXELS)))
    values, grid, rows = dask.compute(level[::step, ::step], grid, rows, scheduler="threads")
    return np.asarray(values).reshape((-1, *level.shape[2:])), np.asarray(grid), np.asarray(rows)


def global_normalisation(image: LazyImage, channels: int = 1, invert: bool | None = None) -> Normalisation:
    """Percentiles (and whether objects are dark) for the whole image, from one sample."""
    try:
        try:
            values, grid, rows = _sample(image)
            return _normalisation(values, grid, channels, invert, rows)
        except ImageError:
            if not image.multiscale:
                raise
            log.warning("%s: the coarse pyramid levels look empty; sampling level 0", image.name)
            values, grid, rows = _sample(image, coarse=False)
            return _normalisation(values, grid, channels, invert, rows)
    except ImageError:
        raise
    except (OSError, ValueError, KeyError) as exc:  # the sample hit a half-copied file
        raise ImageError(f"cannot read {image.name}: the file is damaged "
                         f"({type(exc).__name__}: {exc})") from exc


def _noise_floor(lo: float, hi: float, rows: np.ndarray) -> float:
    """The in-memory noise floor (``io.images.widen_to_noise``) on one plane of sampled rows."""
    from ..io.images import widen_to_noise

    finite = np.isfinite(rows) if np.issubdtype(rows.dtype, np.floating) else None
    return widen_to_noise(lo, hi, rows.astype(np.float32, copy=False), finite)


def _normalisation(sample: np.ndarray, grid: np.ndarray, channels: int, invert: bool | None,
                   rows: np.ndarray | None = None) -> Normalisation:
    """``sample``: (n,) or (n, C) pixel values; ``grid``: (h, w[, C]) pixels; ``rows``:
    (r, w[, C]) whole rows of pixels, for the noise level (``None``: no noise floor)."""
    from ..io.images import PERCENTILES, below_saturation

    if channels == 1:
        same = sample.ndim == 2 and np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(
            sample[..., 1], sample[..., 2])
        luminance = bool(sample.ndim == 2 and not same)
        if sample.ndim == 2:
            rgb = sample[:, :3].astype(np.float32)
            plane = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32) if luminance else rgb[:, 0]
        else:
            plane = sample.astype(np.float32, copy=False)
        values = plane[np.isfinite(plane)]
        if values.size == 0:
            raise ImageError("image contains no finite values (all NaN or infinite)")
        lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
        hi = below_saturation(values, lo, hi)
        if rows is not None:
            grey = Normalisation((0.0,), (1.0,), False, 1, luminance)._grey(rows)
            hi = _noise_floor(lo, hi, grey)
        if hi <= lo:
            lo, hi = float(values.min()), float(values.max())
            if hi <= lo:
                raise ImageError(f"image has the same value ({lo:g}) everywhere: nothing to segment")
        norm = Normalisation((lo,), (hi,), False, 1, luminance)
        if invert is None:  # as to_plane: a bright background means dark objects
            invert = bool(np.median(norm.apply(grid)) > 0.5)
        return Normalisation((lo,), (hi,), bool(invert), 1, luminance)
    rgb = sample[..., :3] if sample.ndim == 2 else np.repeat(sample[..., None], 3, axis=-1)
    los, his = [], []
    for c in range(channels):
        ch = rgb[..., min(c, rgb.shape[-1] - 1)].astype(np.float32)
        ch = ch[np.isfinite(ch)]
        if ch.size == 0:
            raise ImageError("image contains no finite values (all NaN or infinite)")
        lo, hi = (float(v) for v in np.percentile(ch, PERCENTILES))
        hi = below_saturation(ch, lo, hi)
        if rows is not None:
            rgb_rows = rows[..., :3] if rows.ndim == 3 else rows[..., None]
            hi = _noise_floor(lo, hi, rgb_rows[..., min(c, rgb_rows.shape[-1] - 1)])
        if hi <= lo:
            lo, hi = float(ch.min()), float(ch.max())
        los.append(lo)
        his.append(hi)
    if all(h <= lo for lo, h in zip(los, his, strict=True)):
        raise ImageError("image has the same value everywhere: nothing to segment")
    return Normalisation(tuple(los), tuple(his), False, channels, False)


def central_crop(image: LazyImage, norm: Normalisation) -> np.ndarray:
    """The normalised central crop (at most :data:`ESTIMATE_CROP` wide) of level 0 that the
    whole image's size estimate and noise decision are read from."""
    h, w = image.shape[:2]
    side = min(ESTIMATE_CROP, h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return norm.apply(image.sources[0].region(slice(y0, y0 + side), slice(x0, x0 + side)))


# ---------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Plan:
    """Everything a task needs, small and picklable."""

    shape: tuple[int, int]
    chunk: int
    halo: int
    norm: Normalisation
    diameter: float | None
    params: dict
    classes: tuple[str, ...]
    scratch: str
    output: str
    copy_image: bool = True
    #: the whole image is noisy (decided once, on the central crop): every chunk is denoised
    #: with the same settings (``inference.denoise.Denoiser``); ``None``: it is not
    denoiser: Denoiser | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.shape[0] // self.chunk), -(-self.shape[1] // self.chunk)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        ny, nx = self.grid
        return [(by, bx) for by in range(ny) for bx in range(nx)]

    def core(self, b: tuple[int, int]) -> tuple[slice, slice]:
        (by, bx), c = b, self.chunk
        return (slice(by * c, min((by + 1) * c, self.shape[0])),
                slice(bx * c, min((bx + 1) * c, self.shape[1])))

    def ext(self, b: tuple[int, int]) -> tuple[slice, slice]:
        ys, xs = self.core(b)
        return (slice(max(ys.start - self.halo, 0), min(ys.stop + self.halo, self.shape[0])),
                slice(max(xs.start - self.halo, 0), min(xs.stop + self.halo, self.shape[1])))

    @property
    def ext_side(self) -> int:
        return self.chunk + 2 * self.halo

    def scratch_array(self, cls: str, mode: str = "r+"):
        import zarr

        return zarr.open_array(os.path.join(self.scratch, f"ext_{cls}.zarr"), mode=mode)

    def read_ext(self, cls: str, b: tuple[int, int]) -> np.ndarray:
        ys, xs = self.ext(b)
        h, w = ys.stop - ys.start, xs.stop - xs.start
        return np.asarray(self.scratch_array(cls, "r")[b[0], b[1], :h, :w])


def default_halo(predictor, diameter: float | None, chunk: int) -> int:
    """A halo of 4 object diameters (≥ 128 px of network context), at most half a chunk."""
    size = diameter or predictor.info.median_diameter or 32.0
    halo = max(128, math.ceil(4 * size / 32.0) * 32)
    return min(halo, chunk // 2)


# ---------------------------------------------------------------------------- tasks
@dataclass
class BlockResult:
    """Per class: number of local labels, the labels present in the core, their core areas
    and scores."""

    n: dict[str, int] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)
    area: dict[str, np.ndarray] = field(default_factory=dict)
    score: dict[str, np.ndarray] = field(default_factory=dict)
    #: U-Net objects scoring below this are dropped once stitched (blocks keep them all, so
    #: neighbours that see one object never decide differently about its two halves).
    score_floor: float = 0.0
    seconds: float = 0.0


def _scores(seg_part, raw, labels: np.ndarray, n: int) -> np.ndarray:
    """Score of each local label 1..n (index 0 unused): the detection score of its box, the
    U-Net's object score, or (weights without an object scorer) the mean foreground
    probability over the object."""
    from scipy import ndimage as ndi

    out = np.full(n + 1, np.nan, np.float32)
    if n == 0:
        return out
    if seg_part.boxes is not None and len(seg_part.boxes) >= n:
        out[1:] = seg_part.boxes.score[:n]
    elif seg_part.scores is not None and len(seg_part.scores) >= n:
        out[1:] = seg_part.scores[:n]
    elif "foreground" in raw.maps:
        out[1:] = ndi.mean(raw.maps["foreground"], labels, index=np.arange(1, n + 1))
    return out


def segment_block(spec: ModelSpec, source: Source, plan: Plan, b: tuple[int, int]) -> BlockResult:
    """Task 1: segment one core + halo in one piece; labels to scratch, a summary back."""
    from ..postprocess.params import PostprocessParams

    _limit_torch_threads()
    started = time.perf_counter()
    predictor = spec.load()
    ys, xs = plan.ext(b)
    pixels = source.region(ys, xs)
    plane = plan.norm.apply(pixels)
    if plan.denoiser is not None:
        plane = plan.denoiser.apply(plane)
    scale = predictor.scale_for(plan.diameter)
    side = max(plane.shape[-2:]) * scale
    # whole tiles of what the network needs: 2**depth px for the dense models (32 at the
    # usual depth 4, 64 at depth 6), 64 for DeepCeNS
    model = getattr(predictor, "model", None)
    config = getattr(model, "config", None)
    multiple = max(32, int(getattr(model, "SIZE_MULTIPLE", 32)),
                   2 ** int(getattr(config, "depth", 0) or 0))
    tile = min(math.ceil(side / multiple) * multiple, MAX_TILE)
    raw = predictor.predict(plane, diameter=plan.diameter, estimate=False, normalised=True,
                            tile=max(tile, 64), overlap=64, tta=spec.tta, denoise=False)
    params = PostprocessParams(**{**predictor.default_params(raw.scale).to_dict(), **plan.params})
    floor = 0.0
    if predictor.object_scorer is not None:
        floor, params = params.score_threshold, replace(params, score_threshold=0.0)
    seg = predictor.instances(raw, params)
    cy, cx = plan.core(b)
    core = (slice(cy.start - ys.start, cy.stop - ys.start), slice(cx.start - xs.start, cx.stop - xs.start))
    result = BlockResult(score_floor=floor)
    for cls, part in seg.by_class().items():
        if cls not in plan.classes:
            continue
        labels = part.labels.astype(np.int32, copy=False)
        n = int(labels.max(initial=0))
        plan.scratch_array(cls)[b[0], b[1], : labels.shape[0], : labels.shape[1]] = labels
        counts = np.bincount(labels[core].ravel(), minlength=n + 1)
        present = np.flatnonzero(counts[1:]) + 1
        result.n[cls] = n
        result.present[cls] = present.astype(np.int32)
        result.area[cls] = counts[present].astype(np.int64)
        result.score[cls] = _scores(part, raw, labels, n)[present]
    result.seconds = time.perf_counter() - started
    return result


#: Neighbours compared by each block (the other half are compared by the neighbour).
_FORWARD = ((0, 1), (1, -1), (1, 0), (1, 1))


def match_block(plan: Plan, b: tuple[int, int]) -> dict[str, list[tuple]]:
    """Task 2: overlapping label pairs between block ``b`` and its forward neighbours.

    Returns per class a list of (neighbour, labels in b, labels in neighbour, overlap,
    area in b, area in neighbour) arrays, areas counted in the shared region only.
    """
    ny, nx = plan.grid
    out: dict[str, list[tuple]] = {cls: [] for cls in plan.classes}
    for cls in plan.classes:
        mine = plan.read_ext(cls, b)
        eys, exs = plan.ext(b)
        for dy, dx in _FORWARD:
            nb = (b[0] + dy, b[1] + dx)
            if not (0 <= nb[0] < ny and 0 <= nb[1] < nx):
                continue
            nys, nxs = plan.ext(nb)
            y0, y1 = max(eys.start, nys.start), min(eys.stop, nys.stop)
            x0, x1 = max(exs.start, nxs.start), min(exs.stop, nxs.stop)
            if y1 <= y0 or x1 <= x0:
                continue
            a = mine[y0 - eys.start : y1 - eys.start, x0 - exs.start : x1 - exs.start].ravel()
            theirs = plan.read_ext(cls, nb)
            c = theirs[y0 - nys.start : y1 - nys.start, x0 - nxs.start : x1 - nxs.start].ravel()
            both = (a > 0) & (c > 0)
            if not both.any():
                continue
            width = np.int64(c.max()) + 1
            keys, overlap = np.unique(a[both].astype(np.int64) * width + c[both], return_counts=True)
            la, lc = keys // width, keys % width
            area_a, area_c = np.bincount(a), np.bincount(c)
            out[cls].append((nb, la.astype(np.int32), lc.astype(np.int32), overlap.astype(np.int64),
                             area_a[la].astype(np.int64), area_c[lc].astype(np.int64)))
    return out


def relabel_block(source: Source, plan: Plan, b: tuple[int, int],
                  lookups: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Task 3: this block's core, renumbered with the global labels, into the output (and the
    image pixels, copied into the output's image pyramid). Returns per class the extent of
    each object's pixels in this core, rows of (label, min y, min x, max y + 1, max x + 1)
    in image coordinates: the driver joins them into each object's whole bounding box."""
    from scipy import ndimage as ndi

    ys, xs = plan.core(b)
    eys, exs = plan.ext(b)
    core = (slice(ys.start - eys.start, ys.stop - eys.start),
            slice(xs.start - exs.start, xs.stop - exs.start))
    extents: dict[str, np.ndarray] = {}
    for cls, lookup in lookups.items():
        local = plan.read_ext(cls, b)[core]
        open_array(plan.output, f"labels/{cls}/0")[ys, xs] = lookup[local]
        rows = [(lookup[i + 1], sl[0].start + ys.start, sl[1].start + xs.start,
                 sl[0].stop + ys.start, sl[1].stop + xs.start)
                for i, sl in enumerate(ndi.find_objects(local)) if sl is not None and lookup[i + 1]]
        extents[cls] = np.array(rows, np.int32).reshape(-1, 5)  # 20 bytes per object part
    if plan.copy_image:
        write_image_region(plan.output, source.region(ys, xs), ys, xs)
    return extents


def owners(plan: Plan, extents: list[dict[str, np.ndarray]],
           counts: dict[str, int]) -> dict[tuple[int, int], dict[str, tuple[np.ndarray, tuple]]]:
    """Which block measures which object: the block whose core holds the top-left corner of
    the object's whole bounding box (joined from every core it has pixels in), so each
    object is measured once, whatever its shape. Per block and class: the labels it owns and
    the region holding all of them, (min y, min x, max y, max x)."""
    out: dict[tuple[int, int], dict[str, tuple[np.ndarray, tuple]]] = {b: {} for b in plan.blocks}
    for cls in plan.classes:
        n = counts.get(cls, 0)
        rows = [e[cls] for e in extents if cls in e and len(e[cls])]
        if not n or not rows:
            continue
        rows_a = np.concatenate(rows)
        label = rows_a[:, 0]
        box = np.empty((n + 1, 4), np.int32)
        box[:, :2] = np.iinfo(np.int32).max
        box[:, 2:] = -1
        for k, join in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
            join.at(box[:, k], label, rows_a[:, k + 1])
        found = np.flatnonzero(box[1:, 2] >= 0) + 1
        block = (box[found, 0] // plan.chunk).astype(np.int64) * plan.grid[1] + box[found, 1] // plan.chunk
        order = np.argsort(block, kind="stable")  # objects grouped by owner, one sort
        found, block = found[order], block[order]
        keys, starts = np.unique(block, return_index=True)
        lows = [np.minimum.reduceat(box[found, k], starts) for k in (0, 1)]
        highs = [np.maximum.reduceat(box[found, k], starts) for k in (2, 3)]
        for j, (key, mine) in enumerate(zip(keys, np.split(found, starts[1:]), strict=True)):
            region = (int(lows[0][j]), int(lows[1][j]), int(highs[0][j]), int(highs[1][j]))
            out[(int(key) // plan.grid[1], int(key) % plan.grid[1])][cls] = (mine, region)
    return out


def measure_block(plan: Plan, owned: dict[str, tuple[np.ndarray, tuple]], part_path: str) -> int:
    """Task 5: object table rows for the objects this block owns (:func:`owners`), each
    measured whole from one read of the region holding them."""
    from skimage.measure import regionprops_table
    from skimage.segmentation import relabel_sequential

    from ..postprocess.rotated_boxes import rotated_boxes

    rows: list[tuple] = []
    for cls, (mine, (y0, x0, y1, x1)) in owned.items():
        labels = np.asarray(open_array(plan.output, f"labels/{cls}/0", mode="r")[y0:y1, x0:x1])
        labels = np.where(np.isin(labels, mine), labels, 0)
        seq, _fw, inverse = relabel_sequential(labels)
        props = regionprops_table(seq, properties=("label", "area", "centroid", "bbox"))
        boxes = {r[0]: r[1:] for r in rotated_boxes(seq)}
        scores = np.load(os.path.join(plan.scratch, f"scores_{cls}.npy"), mmap_mode="r")
        for i, s in enumerate(props["label"]):
            g = int(inverse[s])
            cxb, cyb, bw, bh, angle = boxes[s]
            rows.append((g, cls, f"{float(scores[g]):.4f}", int(props["area"][i]),
                         f"{props['centroid-0'][i] + y0:.2f}", f"{props['centroid-1'][i] + x0:.2f}",
                         int(props["bbox-0"][i] + y0), int(props["bbox-1"][i] + x0),
                         int(props["bbox-2"][i] + y0), int(props["bbox-3"][i] + x0),
                         f"{cxb + x0:.2f}", f"{cyb + y0:.2f}", f"{bw:.2f}", f"{bh:.2f}", f"{angle:.2f}"))
    write_table_part(Path(part_path), rows)
    return len(rows)


_HOST = re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:32] or "host"


def remove_stale_runs(output: Path) -> list[Path]:
    """Delete the temporary stores of earlier runs for ``output`` whose process is gone (a
    run killed outright, or out of memory, cannot clean up after itself).

    Only stores made on this machine are judged (a run on another node of a shared file
    system has a process id that means nothing here), and only when untouched for an hour.
    """
    removed = []
    for stale in output.parent.glob(f".{output.name}.tmp-{_HOST}-*"):
        try:
            pid = int(stale.name.rsplit(".tmp-", 1)[1].split("-")[1])
            idle = time.time() - max((p.stat().st_mtime for p in stale.rglob("*")),
                                     default=stale.stat().st_mtime)
        except (IndexError, ValueError, OSError):
            continue
        if pid == os.getpid() or _alive(pid) or idle < 3600:
            continue  # a run going on now (this process or another), or just now
        shutil.rmtree(stale, ignore_errors=True)
        log.warning("removed %s, left by an interrupted run", stale)
        removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (psutil ships with Dask's distributed)."""
    try:
        import psutil
    except ImportError:  # cannot tell: leave the folder alone
        return True
    return psutil.pid_exists(pid)


# ---------------------------------------------------------------------------- union-find
def resolve_labels(plan: Plan, results: dict[tuple[int, int], BlockResult],
                   matches: list[dict[str, list[tuple]]]) -> tuple[dict, dict, dict]:
    """Global labels from the per-block summaries and the overlap pairs (union-find).

    Returns per class: per-block lookup tables (local → global), the score of every global
    label (index = label) and the number of objects.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from ..postprocess.watershed import renumbering

    blocks = plan.blocks
    lookups: dict[tuple[int, int], dict[str, np.ndarray]] = {b: {} for b in blocks}
    scores: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for cls in plan.classes:
        sizes = np.array([results[b].n.get(cls, 0) + 1 for b in blocks], np.int64)
        offsets = dict(zip(blocks, np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist(), strict=True))
        total = int(sizes.sum())
        present_mask = np.zeros(total, bool)
        for b in blocks:
            present_mask[offsets[b] + results[b].present.get(cls, np.zeros(0, np.int64))] = True
        src, dst = [], []
        for per_block, b in zip(matches, blocks, strict=True):
            for nb, la, lc, overlap, area_a, area_c in per_block.get(cls, []):
                na, nc = offsets[b] + la, offsets[nb] + lc
                same = ((overlap > MATCH_FRACTION * np.minimum(area_a, area_c))
                        & present_mask[na] & present_mask[nc])
                src.append(na[same])
                dst.append(nc[same])
        src_a = np.concatenate(src) if src else np.zeros(0, np.int64)
        dst_a = np.concatenate(dst) if dst else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(src_a.size, np.int8), (src_a, dst_a)), shape=(total, total))
        _n, component = connected_components(graph, directed=False)
        nodes = np.flatnonzero(present_mask)  # raster order of blocks, then local label
        uniq, first = np.unique(component[nodes], return_index=True)
        rank = np.empty(uniq.size, np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(1, uniq.size + 1)
        final_of_node = np.zeros(total, np.int32)
        final_of_node[nodes] = rank[np.searchsorted(uniq, component[nodes])]
        if uniq.size >= 2**31 - 1:
            raise DeepCeNSError("more than 2^31 objects: too many for int32 labels")
        node_area = np.zeros(total, np.int64)
        node_score = np.full(total, np.nan, np.float32)
        for i, b in enumerate(blocks):
            present = results[b].present.get(cls, np.zeros(0, np.int64))
            if present.size:
                node_area[offsets[b] + present] = results[b].area[cls]
                node_score[offsets[b] + present] = results[b].score[cls]
            lookups[b][cls] = final_of_node[offsets[b] : offsets[b] + sizes[i]].copy()
        # score of an object: that of its version with the largest part in its own core
        order = np.lexsort((-node_area[nodes], final_of_node[nodes]))
        ids = final_of_node[nodes][order]
        firsts = np.r_[True, ids[1:] != ids[:-1]] if ids.size else np.zeros(0, bool)  # none found
        per_label = np.full(uniq.size + 1, np.nan, np.float32)
        per_label[ids[firsts]] = node_score[nodes][order][firsts]
        n_objects = int(uniq.size)
        floor = max((results[b].score_floor for b in blocks), default=0.0)
        if floor > 0:  # drop low-scoring stitched objects, renumber the rest in order
            keep = np.nan_to_num(per_label, nan=-1.0) >= floor
            renumber = renumbering(keep)
            n_objects = int(renumber.max(initial=0))
            for b in blocks:
                lookups[b][cls] = renumber[lookups[b][cls]]
            per_label = np.concatenate([[np.nan], per_label[renumber > 0]]).astype(np.float32)
        scores[cls] = per_label
        counts[cls] = n_objects
    return lookups, scores, counts


# ---------------------------------------------------------------------------- the driver
@dataclass
class ChunkedResult:
    """Where the output went and what it holds."""

    output: Path
    table: Path | None
    counts: dict[str, int]
    shape: tuple[int, int]
    chunk: int
    halo: int
    diameter: float | None
    estimated: bool
    seconds: float
    block_seconds: float = 0.0
    denoised: bool = False


def _run(client, func, items: list, *args,
         cancel: threading.Event | None = None) -> Generator[int, None, list]:
    """Submit ``func(*args, item)`` per item; yield after each completion; results in order."""
    import uuid

    from distributed import as_completed

    key = getattr(func, "__name__", "task").strip("_").replace("_", "-")
    token = uuid.uuid4().hex[:8]
    futures = [client.submit(func, *args, item, pure=False, key=f"{key}-{i}-{token}")
               for i, item in enumerate(items)]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        for future in as_completed(futures):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled: nothing written")
            results[index[future.key]] = future.result()
            yield 1
    finally:
        client.cancel([f for f in futures if not f.done()])
    return results


def segment_chunked_iter(
    client,
    image: LazyImage,
    output: str | Path,
    spec: ModelSpec,
    predictor=None,
    chunk: int = 1024,
    halo: int | None = None,
    diameter: float | None = None,
    estimate: bool = True,
    params: dict | None = None,
    table: str | Path | None = None,
    overwrite: bool = False,
    copy_image: bool = True,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, ChunkedResult]:
    """Segment ``image`` chunk by chunk on ``client``; yield (tasks done, tasks total).

    Writes the OME-Zarr ``output`` (image + ``labels/<class>``) and, when ``table`` is given,
    the per-object CSV table. Both appear atomically at the end (written under a temporary
    name and renamed), so an interrupted run leaves no half output.
    """
    check_colour(image)  # separate stains, none chosen: said before any work
    started = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise DeepCeNSError(f"{output} exists already; not overwritten")
    if chunk < 64 or chunk % 32:
        raise DeepCeNSError(f"chunk size must be a multiple of 32 and ≥ 64, got {chunk}")
    predictor = predictor or spec.load()
    spec.share(predictor)  # in-process workers use it; other workers load their own copy
    norm = global_normalisation(image, predictor.in_channels)
    from ..inference.progress import drain

    # one decision for every chunk, on the central crop, as one image decides (denoising, size
    # estimate, snapping), so that neighbours agree (non-local means reads 8 px around each
    # pixel, well inside the halo)
    diameter = diameter if diameter is not None and diameter > 0 else None
    _crop, decision = drain(predictor.decide_iter(central_crop(image, norm), diameter, estimate,
                                                  spec.denoise))
    denoiser = decision.denoiser
    if denoiser is not None:
        log.info("%s: every chunk is denoised (non-local means)", image.name)
    run_d = decision.diameter if decision.scale != 1.0 else None  # None: as it is
    shown_d, estimated = decision.diameter, decision.estimated
    halo = default_halo(predictor, shown_d, chunk) if halo is None else int(halo)
    if not 0 <= halo <= chunk:
        raise DeepCeNSError(f"halo must lie in [0, chunk]; got halo {halo}, chunk {chunk}")
    classes = tuple(predictor.class_names)
    remove_stale_runs(output)
    if halo == 0:
        log.warning("halo 0: objects on chunk borders are segmented without context and may "
                    "be cut or merged wrongly")
    tmp = output.with_name(f".{output.name}.tmp-{_HOST}-{os.getpid()}-{int(time.time())}")
    scratch = tmp / ".scratch"
    plan = Plan(tuple(image.shape[:2]), chunk, halo, norm, run_d, dict(params or {}), classes,
                str(scratch), str(tmp), copy_image, denoiser)
    blocks = plan.blocks
    levels = downsample_tasks(plan.shape, chunk, [*(f"labels/{c}" for c in classes),
                                                   *([""] if copy_image else [])])
    total = 4 * len(blocks) + sum(len(lvl) for lvl in levels)
    done = 0
    try:
        create_store(tmp, image.shape, image.levels[0].dtype, classes, chunk, image.name,
                     image.pixel_size, image.unit, image.origin)
        import zarr

        ny, nx = plan.grid
        for cls in classes:
            zarr.open_array(os.path.join(plan.scratch, f"ext_{cls}.zarr"), mode="w", zarr_format=2,
                            shape=(ny, nx, plan.ext_side, plan.ext_side),
                            chunks=(1, 1, plan.ext_side, plan.ext_side), dtype=np.int32, fill_value=0)
        source = client.scatter(image.sources[0], broadcast=False)
        yield done, total
        gen = _run(client, segment_block, blocks, spec, source, plan, cancel=cancel)
        while True:
            try:
                done += next(gen)
                yield done, total
            except StopIteration as stop:
                results = dict(zip(blocks, stop.value, strict=True))
                break
        matches = yield from _counted(_run(client, match_block, blocks, plan, cancel=cancel), total, done)
        done += len(blocks)
        lookups, scores, counts = resolve_labels(plan, results, matches)
        for cls, values in scores.items():
            np.save(os.path.join(plan.scratch, f"scores_{cls}.npy"), values)
        futures_lookups = [(b, lookups[b]) for b in blocks]
        extents = yield from _counted(_run_pairs(client, relabel_block, source, plan,
                                                 futures_lookups, cancel), total, done)
        done += len(blocks)
        owned = owners(plan, extents, counts)
        parts = [os.path.join(plan.scratch, f"part_{by}_{bx}.csv") for by, bx in blocks]
        yield from _counted(_run_pairs(client, measure_block, None, plan,
                                       [(owned[b], p) for b, p in zip(blocks, parts, strict=True)],
                                       cancel), total, done)
        done += len(blocks)
        for tasks in levels:
            yield from _counted(_run(client, _downsample, tasks, str(tmp), chunk, cancel=cancel), total, done)
            done += len(tasks)
        table_path = None
        if table is not None:
            table_path = assemble_table([Path(p) for p in parts], Path(table), overwrite=overwrite)
        shutil.rmtree(scratch, ignore_errors=True)
        if output.exists() and overwrite:
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ChunkedResult(output, table_path, counts, plan.shape, chunk, halo, shown_d, estimated,
                         time.perf_counter() - started, sum(r.seconds for r in results.values()),
                         denoiser is not None)


def _downsample(path: str, chunk: int, task: tuple) -> None:
    group, level, iy, ix = task
    downsample_chunk(path, group, level, iy, ix, chunk)


def _relabel_task(source, plan, item):
    b, lookups = item
    return relabel_block(source, plan, b, lookups)


def _measure_task(_source, plan, item):
    owned, part = item
    return measure_block(plan, owned, part)


def _run_pairs(client, func, source, plan, items, cancel):
    task = _relabel_task if func is relabel_block else _measure_task
    return _run(client, task, items, source, plan, cancel=cancel)


def _counted(gen, total: int, done: int) -> Generator[Progress, None, list]:
    """Re-yield a task generator's completions as (done, total); return its results."""
    while True:
        try:
            done += next(gen)
            yield done, total
        except StopIteration as stop:
            return stop.value


def segment_chunked(client, image: LazyImage, output, spec: ModelSpec, **kwargs) -> ChunkedResult:
    """:func:`segment_chunked_iter` drained, for scripts."""
    gen = segment_chunked_iter(client, image, output, spec, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


__all__ = ["TABLE_COLUMNS", "ChunkedResult", "ModelSpec", "Normalisation", "Plan",
           "global_normalisation", "resolve_labels", "segment_chunked", "segment_chunked_iter"]
