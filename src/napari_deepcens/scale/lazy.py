"""Lazy image input: OME-Zarr and large or pyramidal TIFF as Dask arrays, never loaded whole.

Two views of one image are kept apart on purpose:

* :class:`LazyImage` holds Dask arrays (every pyramid level) for the client side: napari shows
  them as a multiscale layer, global statistics are sampled from them.
* :class:`Source` is a small, picklable description (path, pyramid level, or an in-memory
  array) that a worker — a thread here or a process on a ``dask.distributed`` cluster — opens
  itself and reads one region from. An open TIFF store cannot be pickled; a path can, so the
  same graph runs on a laptop and on a SLURM/Kubernetes cluster sharing the file system.

Images are (H, W) grey or (H, W, C) colour, as everywhere else in the plugin; OME-Zarr
(c, y, x) images are moved to channels-last, singleton t/z axes dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageError

log = logging.getLogger(__name__)

#: Suffixes read lazily (TIFF through tifffile's zarr store, OME-Zarr directories).
LAZY_SUFFIXES = (".zarr", ".tif", ".tiff")

_OPEN: dict[tuple[str, str], object] = {}
_OPEN_LOCK = threading.Lock()


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a Zarr store (a directory with Zarr metadata)."""
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in (".zattrs", ".zgroup", ".zarray", "zarr.json"))


def _zarr_attrs(group) -> dict:
    """Group attributes, NGFF 0.5 (under ``ome``) or 0.4."""
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def _axes_order(multiscale: dict, ndim: int) -> list[str]:
    axes = multiscale.get("axes")
    if not axes:
        return ["t", "c", "z", "y", "x"][-ndim:] if ndim > 2 else ["y", "x"]
    return [a["name"] if isinstance(a, dict) else str(a) for a in axes]


#: ``Source.level`` of an uncompressed TIFF stored in one piece, read region by region.
PLAIN = "<plain>"
#: Chunks of the Dask view of such a TIFF (napari's display and the sampling).
PLAIN_CHUNK = 2048


class PlainTiff:
    """An uncompressed TIFF stored in one piece (what most tools write when not asked to
    tile or compress), read region by region from the file.

    Why: tifffile's zarr view of such a file is one chunk, the whole image, so each region
    read loaded the whole slide. Not a memory map: a file rewritten while mapped kills the
    process (SIGBUS); read with seek + read, a file that changed is a clear error. Pickles
    as its path and layout, so task graphs carry no pixels."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype) -> None:
        self.path, self.offset, self.shape = path, int(offset), tuple(int(n) for n in shape)
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")  # Fiji writes big-endian
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        """Pixels of ``key`` (integers and slices, steps too: napari and the sampling read
        every n-th pixel), as NumPy indexes them."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        for k, n in zip(key, self.shape, strict=True):
            if not isinstance(k, slice) and not -n <= int(k) < n:
                raise IndexError(f"index {k} is out of bounds for an axis of size {n}")
        picks = [k if isinstance(k, slice) else slice(int(k) % n, int(k) % n + 1)
                 for k, n in zip(key, self.shape, strict=True)]
        wanted = [range(*k.indices(n)) for k, n in zip(picks, self.shape, strict=True)]
        if any(r.step != 1 and len(r) > 1 for r in wanted):  # read the block, then step
            block = self[tuple(slice(min(r), max(r) + 1) if len(r) else slice(0, 0) for r in wanted)]
            steps = tuple(slice(None) if not len(r) else slice(r[0] - min(r), None, r.step)
                          if r.step > 0 else slice(r[0] - min(r), None if r[-1] == min(r) else
                                                   r[-1] - min(r) - 1, r.step) for r in wanted)
            squeeze = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
            out = block[steps]
            return out.squeeze(axis=squeeze) if squeeze else out
        ranges = [range(w.start, w.start + len(w)) for w in wanted]  # all steps 1 from here
        squeeze = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        out = np.empty(tuple(len(r) for r in ranges), self.dtype)
        strides = np.cumprod((*self.shape[1:], 1)[::-1])[::-1]  # elements per step of each axis
        # one read per contiguous run: the innermost axis not taken whole, with the whole
        # axes after it (a colour image's rows are read whole, samples and all)
        j = self.ndim - 1
        while j > 0 and len(ranges[j]) == self.shape[j]:
            j -= 1
        count = len(ranges[j]) * int(strides[j])
        runs = out.reshape(int(np.prod(out.shape[:j], dtype=np.int64)), count)
        if out.size:
            with open(self.path, "rb") as fh:
                for n, index in enumerate(np.ndindex(*out.shape[:j])):
                    start = sum(r[i] * int(st) for r, i, st in zip(ranges[:j], index, strides[:j],
                                                                   strict=True))
                    fh.seek(self.offset + (start + ranges[j].start * int(strides[j]))
                            * self.file_dtype.itemsize)
                    data = fh.read(count * self.file_dtype.itemsize)
                    if len(data) != count * self.file_dtype.itemsize:
                        raise ImageError(f"cannot read {Path(self.path).name}: the file is shorter "
                                         "than its header says (changed or cut while being read)")
                    runs[n] = np.frombuffer(data, self.file_dtype)
        return out.squeeze(axis=squeeze) if squeeze else out


def _open_array(path: str, level: str):
    """The zarr array of ``level`` inside ``path`` (a TIFF or a Zarr store), or a plain
    TIFF's region reader (:data:`PLAIN`), cached per process."""
    key = (path, level)
    with _OPEN_LOCK:
        if key not in _OPEN:
            import zarr

            if level == PLAIN:
                reader = _plain_tiff(Path(path))
                if reader is None:
                    raise ImageError(f"cannot read {Path(path).name}: it is no longer stored as "
                                     "when the run started")
                _OPEN[key] = reader
                return reader
            if path.lower().endswith((".tif", ".tiff")):
                import tifffile

                node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
            else:
                node = zarr.open(path, mode="r")
            _OPEN[key] = node[level] if level else node
        return _OPEN[key]


def _plain_tiff(path: Path, shape: tuple[int, ...] | None = None) -> PlainTiff | None:
    """A region reader for a TIFF stored uncompressed in one piece, else ``None``."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            offset = series.dataoffset  # None: compressed, tiled or scattered strips
            if offset is None:
                return None
            # tifffile names the dtype natively; the file's byte order is the header's
            stored = np.dtype(series.dtype).newbyteorder(tif.byteorder)
            reader = PlainTiff(str(path), offset, tuple(series.shape), stored)
    except Exception as exc:  # any doubt: the zarr view, as before
        log.debug("%s: not read region by region (%s)", path.name, exc)
        return None
    size = path.stat().st_size
    if reader.offset + int(np.prod(reader.shape)) * reader.file_dtype.itemsize > size:
        return None  # cut short: the zarr view says it is damaged
    return reader if shape is None or reader.shape == tuple(shape) else None


@dataclass(frozen=True)
class Source:
    """Where a worker reads pixels from: a lazily opened file or an in-memory array.

    ``axes`` names the stored axes (OME-Zarr ``t``, ``c``, ``z``, ``y``, ``x``) when they are
    not already (y, x[, c]); singleton axes are dropped and a channel axis moved last.
    """

    path: str | None = None
    level: str = ""
    shape: tuple[int, ...] = ()
    axes: tuple[str, ...] | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: one colour channel of an (h, w, c) source (``deepcens segment --channel``)
    channel: int | None = None

    def region(self, ys: slice, xs: slice) -> np.ndarray:
        """Pixels of rows ``ys`` and columns ``xs`` as an (h, w[, c]) numpy array."""
        if self.array is not None:
            data = self.array[ys, xs]
            # a Dask-backed layer: computed here, not through the cluster running this task
            data = np.asarray(data.compute(scheduler="sync") if hasattr(data, "compute") else data)
        else:
            try:
                arr = _open_array(self.path, self.level)
                data = np.asarray(arr[ys, xs] if self.axes is None
                                  else _reorder(arr, self.axes, len(self.shape) == 3, ys, xs))
            except ImageError:
                raise
            except (OSError, ValueError, KeyError) as exc:  # a half-copied file, a lost chunk
                raise ImageError(f"cannot read {Path(self.path).name} at rows {ys.start}–{ys.stop}, "
                                 f"columns {xs.start}–{xs.stop}: the file is damaged there "
                                 f"({type(exc).__name__}: {exc})") from exc
        return data if self.channel is None else np.ascontiguousarray(data[..., self.channel])


def _reorder(arr, axes: tuple[str, ...], has_c: bool, ys: slice = slice(None), xs: slice = slice(None)):
    """``arr`` (numpy, zarr or Dask) with stored ``axes`` viewed as (y, x[, c])."""
    sl = tuple(ys if a == "y" else xs if a == "x" else slice(None) if (a == "c" and has_c) else 0
               for a in axes)
    kept = [a for a in axes if a in ("y", "x") or (a == "c" and has_c)]
    data = arr[sl]
    order = [kept.index(a) for a in ("y", "x", "c") if a in kept]
    return data.transpose(order) if order != list(range(len(order))) else data


@dataclass
class LazyImage:
    """An image as Dask arrays, finest level first, each (H, W) or (H, W, C)."""

    levels: list
    sources: list[Source]
    name: str = "image"
    path: Path | None = None
    #: (y, x) size of a level-0 pixel and its unit, from the file's metadata (OME-Zarr): the
    #: output store repeats them, so its labels overlay the input in napari
    pixel_size: tuple[float, float] = (1.0, 1.0)
    unit: str | None = None
    #: (y, x) position of the first pixel (OME-Zarr translation, the stage position), in
    #: the same unit: the output repeats it, or its labels sit elsewhere in other viewers
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.levels[0].shape)

    @property
    def rgb(self) -> bool:
        return len(self.shape) == 3

    @property
    def pixels(self) -> int:
        return int(self.shape[0] * self.shape[1])

    @property
    def multiscale(self) -> bool:
        return len(self.levels) > 1


def _check(shape: tuple[int, ...], dtype, name: str, channels: bool = False) -> None:
    """Pixels a segmentation can read: (H, W), or (H, W, 3|4) colour; with ``channels`` a
    file's (H, W, C) of any C, of which ``select_channel`` picks one (:func:`check_colour`)."""
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
            or np.issubdtype(dtype, np.bool_)):
        raise ImageError(f"{name}: unsupported pixel type {dtype}: expected integer or float pixels")
    if not (len(shape) == 2 or (len(shape) == 3 and (channels or shape[-1] in (3, 4)))):
        raise ImageError(f"{name}: image has shape {shape}: expected (height, width) or "
                         "(height, width, 3); pick one plane or channel of a stack first")
    if shape[0] < 8 or shape[1] < 8:
        raise ImageError(f"{name}: image of {shape[0]}×{shape[1]} pixels is too small (≥ 8×8)")


def _yx_view(shape: tuple[int, ...], axes: list[str], name: str) -> tuple[tuple[int, ...], bool]:
    """The (y, x[, c]) shape of stored ``axes``, and whether a colour axis is kept."""
    if "y" not in axes or "x" not in axes or len(axes) != len(shape):
        raise ImageError(f"{name}: OME-Zarr axes {axes} do not describe a y/x image of shape {shape}")
    for i, a in enumerate(axes):
        if a not in ("y", "x", "c") and shape[i] != 1:
            raise ImageError(f"{name}: axis {a!r} has {shape[i]} planes; only 2-D images "
                             "(one t, one z) can be segmented: pick one plane first")
    has_c = "c" in axes and shape[axes.index("c")] != 1
    view = (shape[axes.index("y")], shape[axes.index("x")]) + ((shape[axes.index("c")],) if has_c else ())
    return view, has_c


def _dask_view(arr, axes: tuple[str, ...] | None, has_c: bool):
    import dask.array as da

    if isinstance(arr, PlainTiff):
        chunks = tuple(min(n, PLAIN_CHUNK) for n in arr.shape)
        d = da.from_array(arr, chunks=chunks, meta=np.empty((0,) * arr.ndim, arr.dtype),
                          name=f"tiff-plain-{arr.path}-{arr.offset}-{arr.shape}-{arr.file_dtype.str}")
    else:
        d = da.from_zarr(arr)
    return d if axes is None else _reorder(d, axes, has_c)


def open_zarr(path: Path) -> LazyImage:
    """An OME-Zarr image (every multiscale level) or a plain Zarr array."""
    import zarr

    name = path.name
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ImageError(f"cannot read {name}: not a readable Zarr store ({exc})") from exc
    if isinstance(node, zarr.Array):
        _check(node.shape, node.dtype, name)
        src = Source(str(path), "", tuple(node.shape))
        return LazyImage([_dask_view(node, None, False)], [src], path.stem, path)
    multiscales = _zarr_attrs(node).get("multiscales")
    if not multiscales:
        raise ImageError(f"cannot read {name}: a Zarr group without OME-Zarr 'multiscales' metadata")
    ms = multiscales[0]
    pixel_size, unit, origin = _pixel_size(ms)
    levels, sources = [], []
    for ds in ms["datasets"]:
        arr = node[ds["path"]]
        axes = _axes_order(ms, arr.ndim)
        view, has_c = _yx_view(tuple(arr.shape), axes, name)
        plain = axes in (["y", "x"], ["y", "x", "c"])
        _check(view, arr.dtype, name, channels=True)
        sources.append(Source(str(path), ds["path"], view, None if plain else tuple(axes)))
        levels.append(_dask_view(arr, None if plain else tuple(axes), has_c))
    return LazyImage(levels, sources, path.stem, path, pixel_size, unit, origin)


def _pixel_size(ms: dict) -> tuple[tuple[float, float], str | None, tuple[float, float]]:
    """The (y, x) pixel size of level 0, the space unit and the (y, x) position of the first
    pixel of an OME-Zarr multiscale: its first dataset's transforms, then the multiscale's
    own, applied in order."""
    axes = _axes_order(ms, len(ms.get("axes") or []) or 2)
    size, shift = np.ones(len(axes)), np.zeros(len(axes))
    for transforms in (ms["datasets"][0].get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                size, shift = size * np.asarray(t["scale"], float), shift * np.asarray(t["scale"], float)
            elif t.get("type") == "translation" and len(t.get("translation", [])) == len(axes):
                shift = shift + np.asarray(t["translation"], float)
    units = {a["name"]: a.get("unit") for a in ms.get("axes") or [] if isinstance(a, dict)}
    if "y" not in axes or "x" not in axes:  # refused with its reason by _yx_view
        return (1.0, 1.0), None, (0.0, 0.0)
    y, x = axes.index("y"), axes.index("x")
    origin = (float(shift[y]), float(shift[x])) if np.isfinite(shift[[y, x]]).all() else (0.0, 0.0)
    if not (size[y] > 0 and size[x] > 0):
        return (1.0, 1.0), None, origin
    return (float(size[y]), float(size[x])), units.get("y") or units.get("x"), origin


def open_tiff(path: Path) -> LazyImage:
    """A TIFF through tifffile's zarr store: every pyramid level, read chunk by chunk."""
    import tifffile
    import zarr

    name = path.name
    try:
        node = zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
    except Exception as exc:
        raise ImageError(f"cannot read {name}: not a readable TIFF ({exc})") from exc
    keys = [d["path"] for d in _zarr_attrs(node)["multiscales"][0]["datasets"]] if (
        isinstance(node, zarr.Group)) else [""]
    try:
        with tifffile.TiffFile(str(path)) as tif:
            stored = tif.series[0].axes.upper()
    except Exception:  # pragma: no cover - the zarr view opened, so the header reads
        stored = ""
    levels, sources = [], []
    for key in keys:
        arr = node[key] if key else node
        shape = tuple(arr.shape)
        plain = _plain_tiff(path, shape) if not key and len(keys) == 1 else None
        if plain is not None:
            arr, key = plain, PLAIN
        # channels first (a multichannel CYX file, planar RGB, tifffile's plain (C, H, W)):
        # viewed channels-last, as OME-Zarr (c, y, x)
        first = len(shape) == 3 and len(stored) == 3 and stored[0] in "CSQI" and stored[1:] == "YX"
        axes = ("c", "y", "x") if first else None
        view = (shape[1], shape[2], shape[0]) if first else shape
        _check(view, arr.dtype, name, channels=first)  # a (T|Z, Y, X) stack is not colour
        sources.append(Source(str(path), key, view, axes))
        levels.append(_dask_view(arr, axes, first))
    return LazyImage(levels, sources, path.stem, path)


def check_colour(image: LazyImage) -> None:
    """A lazily read image is grey or colour (3 or 4 samples); other channel counts hold
    separate stains, of which one must be chosen (``--channel``, :func:`select_channel`)."""
    if image.rgb and image.shape[-1] not in (3, 4):
        raise ImageError(f"{image.name} has {image.shape[-1]} channels: choose the nuclear stain "
                         f"with --channel (0 to {image.shape[-1] - 1})")


def from_array(image, name: str = "image") -> LazyImage:
    """An in-memory (numpy or Dask) image, or a list of pyramid levels (napari multiscale)."""
    import dask.array as da

    levels = list(image) if isinstance(image, (list, tuple)) else [image]
    _check(tuple(levels[0].shape), levels[0].dtype, name)
    base = levels[0]
    src = Source(None, "", tuple(base.shape), array=base)
    return LazyImage([lvl if isinstance(lvl, da.Array) else da.from_array(lvl, chunks=2048)
                      for lvl in levels], [src], name)


def open_lazy(path: str | Path) -> LazyImage:
    """Open an image file without reading its pixels: OME-Zarr, TIFF, or (read in memory)
    PNG/JPEG. Raises :class:`ImageError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        if not is_zarr(path):
            raise ImageError(f"{path} is a folder but not a Zarr store")
        return open_zarr(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return open_tiff(path)
    from ..io.images import read_image

    return from_array(read_image(path), path.stem)


def select_channel(image: LazyImage, channel: int) -> LazyImage:
    """One colour channel of a colour ``image`` (the nuclear stain of an RGB or multichannel
    file too large for memory), read lazily like the rest."""
    from dataclasses import replace

    if not image.rgb:
        raise ImageError(f"{image.name} has one channel: leave --channel out")
    if not 0 <= channel < image.shape[-1]:
        raise ImageError(f"{image.name} has {image.shape[-1]} channels (0–{image.shape[-1] - 1}): "
                         f"there is no channel {channel}")
    return replace(image, levels=[lvl[..., channel] for lvl in image.levels],
                   sources=[replace(src, channel=channel) for src in image.sources])


def read_ome_labels(path: str | Path) -> dict[str, list]:
    """Label pyramids of an OME-Zarr image (``labels/<name>``) as lists of Dask arrays."""
    import dask.array as da
    import zarr

    root = zarr.open(str(path), mode="r")
    if "labels" not in root:
        return {}
    out = {}
    for name in _zarr_attrs(root["labels"]).get("labels", []):
        group = root["labels"][name]
        ms = _zarr_attrs(group)["multiscales"][0]
        out[name] = [da.from_zarr(group[d["path"]]) for d in ms["datasets"]]
    return out


def napari_get_reader(path):
    """npe2 reader: OME-Zarr folders (and their labels) as lazy multiscale layers."""
    if isinstance(path, list) or not str(path).rstrip("/").endswith(".zarr"):
        return None
    if not is_zarr(Path(path)):
        return None
    return read_for_napari


def read_for_napari(path) -> list[tuple]:
    """Layer data for napari: the image (multiscale when the store has levels) and any labels."""
    path = Path(path)
    image = open_zarr(path)
    scale = {"scale": image.pixel_size} if image.pixel_size != (1.0, 1.0) else {}
    if image.origin != (0.0, 0.0):
        scale["translate"] = image.origin
    colour = image.rgb and image.shape[-1] in (3, 4)
    stains = {"channel_axis": -1} if image.rgb and not colour else {"rgb": colour}  # a layer each
    layers: list[tuple] = [(image.levels if image.multiscale else image.levels[0],
                            {"name": image.name, "multiscale": image.multiscale, **stains,
                             **scale}, "image")]
    for name, levels in read_ome_labels(path).items():
        layers.append((levels if len(levels) > 1 else levels[0],
                       {"name": f"{image.name} {name}", "multiscale": len(levels) > 1, **scale},
                       "labels"))
    return layers


def describe(image: LazyImage) -> str:
    """One line for logs: size and levels."""
    return json.dumps({"shape": image.shape, "levels": len(image.levels)})
