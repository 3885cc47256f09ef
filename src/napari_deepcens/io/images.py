"""Reading images and turning them into the single normalised plane the networks see.

Nuclei appear bright on dark (fluorescence) or dark on bright (brightfield, H&E histology), in
8-bit, 16-bit or float, grey or RGB. The networks are trained on one convention: one float
plane, percentile-normalised, nuclei bright. :func:`to_plane` is the one place that maps every
supported input onto it, for training and inference alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: Percentiles mapped to 0 and 1; robust to a few hot pixels, as in StarDist/Cellpose.
PERCENTILES = (1.0, 99.8)
#: Above this many pixels, percentiles are estimated on a strided subsample (same answer,
#: a fraction of the memory and time).
_PERCENTILE_SAMPLE = 4_000_000
#: The percentile range is never stretched beyond this many noise standard deviations. A field
#: with no objects (an empty well, pure camera noise) has a range of ~5 σ and would otherwise be
#: stretched until its noise looks like nuclei (the bundled U-Net then found ~6000 objects in a
#: 256² noise image). Every DSB2018 train/val image has a range of ≥ 23 σ, so this never
#: changes an image with objects in it (docs/models.md, "Empty fields").
MIN_RANGE_SIGMAS = 12.0
#: Saturated pixels (a plateau at the image's maximum) tell only "at least this bright". When
#: more than this fraction of a dark-background image is saturated — bright debris, dust, a
#: fibre — they would set the 99.8th percentile and leave the nuclei dim (val with three
#: saturated debris discs: U-Net AP@0.5 0.506), so the range is read from the other pixels
#: (0.667; with such discs at nuclear brightness about 0.70). Exactly the images whose 99.8th
#: percentile saturation decides are changed (docs/models.md, "Saturated debris").
SATURATED_FRACTION = 1.0 - PERCENTILES[1] / 100.0
#: ... and only when the rest of the image would otherwise be dimmed by more than a quarter.
SATURATED_DIMMING = 0.75


#: Pillow's decompression-bomb limit is raised to this (it refuses twice it): the in-memory
#: segmentation limit, 256 MP.
READ_PIXELS = 256_000_000


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image file (TIFF through tifffile, the rest through imageio).

    Raises :class:`ImageError` naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file: give one image (`deepcens "
                         "segment` takes whole folders)")
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio
            from PIL import Image

            # Pillow refuses images over ~179 MP as "decompression bombs"; we segment up to
            # 256 MP in one piece (inference.predictor.MAX_PIXELS), larger ones are refused there
            if Image.MAX_IMAGE_PIXELS is not None:
                Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, READ_PIXELS)
            data = iio.imread(path)
    except Exception as exc:  # decoders raise many types; the user needs one message
        if type(exc).__name__ == "DecompressionBombError":
            raise ImageError(f"cannot read {path.name}: over {2 * READ_PIXELS / 1e6:.0f} MP, too "
                             "large to read whole; save it as a (tiled) TIFF or OME-Zarr, which "
                             "are segmented chunk by chunk") from exc
        kind = path.suffix.lstrip(".").upper() or "image"
        log.debug("decoder error for %s: %s", path, exc)
        if "imagecodecs" in str(exc):  # a compression this installation cannot decode
            raise ImageError(f"cannot read {path.name}: its compression needs the imagecodecs "
                             "package (pip install imagecodecs)") from exc
        raise ImageError(f"cannot read {path.name}: not a readable {kind} file (damaged, "
                         "empty, or another format under this name)") from exc
    data = np.asarray(data)
    if data.size == 0:
        raise ImageError(f"cannot read {path.name}: the file holds no pixels (corrupt or empty)")
    if data.ndim == 3 and data.shape[-1] == 2 and path.suffix.lower() not in (".tif", ".tiff"):
        data = data[..., 0]  # grey + alpha (a PNG's "LA" mode): the alpha is not a channel
    return data


@dataclass(frozen=True)
class Stack:
    """An image file's pixels with named axes: ``data`` (…, Y, X) or (…, Y, X, S) where ``S``
    (colour samples) is kept last; ``axes`` names them (tifffile's letters: T time, Z depth,
    C channel, Q/I unnamed planes, Y, X, S colour)."""

    data: np.ndarray
    axes: str

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S")

    @property
    def leading(self) -> str:
        """The stack axes before the plane ('' for one image)."""
        return self.axes[: len(self.axes) - (3 if self.rgb else 2)]


def read_stack(path: str | Path, channel: int | None = None,
               cyto_channel: int | None = None) -> Stack:
    """Read an image file that may hold several planes (a time-lapse, a z-stack, an ImageJ
    hyperstack) with its axes; axes of length one are dropped.

    A channel axis (``C``, as in a multichannel ImageJ TIFF) holds different stains, which are
    not planes of one sample: ``channel`` picks the nuclear one (0-based); without it such a
    file is refused with a message saying how many there are. ``channel`` also picks one
    colour of an RGB image.

    ``cyto_channel`` (two-stain models such as the cells + nuclei DeepCeNS): the cytoplasm
    stain's channel; the result is then colour, red the nuclear stain (``channel``, default 0)
    and green the cytoplasm, as those models were trained.
    """
    path = Path(path)
    axes = None
    alpha = True  # a second sample is alpha unless the file says otherwise (PNG "LA")
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                data, axes = series.asarray(), series.axes.upper()
                # ExtraSamples 1/2: (un)associated alpha; 0 or none: a sample of its own
                alpha = any(int(v) in (1, 2) for v in (tif.pages[0].extrasamples or ()))
                if axes.startswith("S") and data.dtype != np.uint8:
                    # tifffile.imwrite((3, H, W) uint16) stores planar RGB: it may be 3 planes
                    log.warning("%s is stored as a %d-channel colour image (%s, channels "
                                "first) and is read as colour; if these are planes of a stack, "
                                "save it with axes (e.g. imagej=True, axes 'ZYX')", path.name,
                                data.shape[0], data.dtype)
                if len(tif.series) > 1:  # several positions of a multi-position acquisition
                    log.warning("%s holds %d image series (positions); only the first is "
                                "segmented: save each position as its own file", path.name,
                                len(tif.series))
        except Exception:
            data = read_image(path)  # the same clear message for a damaged file
        if data.size == 0:
            raise ImageError(f"cannot read {path.name}: the file holds no pixels (corrupt or empty)")
    else:
        data = read_image(path)
    data = np.asarray(data)
    if axes is None or len(axes) != data.ndim:
        axes = ("YX" if data.ndim == 2 else "YXS" if data.ndim == 3 and data.shape[-1] in (3, 4)
                else "Q" * (data.ndim - 2) + "YX")
    if (data.ndim >= 3 and axes.endswith("YX") and data.shape[-1] in (3, 4)
            and set(axes[:-2]) <= set("QI")):  # (H, W, 3) written as grey pages: colour
        axes = axes[:-3] + "YXS"
    if "S" in axes and axes[-1] != "S":  # planar colour (S, Y, X): colour last
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    if "S" in axes and data.shape[-1] not in (3, 4) and cyto_channel is None:
        if alpha:  # grey + alpha: keep grey (with --cyto-channel the samples are two stains)
            data, axes = data[..., 0], axes[:-1]
        else:  # two stains stored as the samples of each pixel: channels, one to be chosen
            axes = axes[:-1] + "C"
    keep = [i for i, n in enumerate(data.shape) if n > 1 or axes[i] in "YX"]
    data = data.reshape(tuple(data.shape[i] for i in keep))
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes or axes.index("X") != axes.index("Y") + 1:
        raise ImageError(f"{path.name}: axes {axes} with shape {data.shape}: expected the image "
                         "plane (Y, X) as the last axes")
    plane = data.shape[axes.index("Y"):axes.index("X") + 1]
    if axes[:1] in ("Q", "I") and min(plane) <= 4 < data.shape[0]:
        raise ImageError(f"{path.name}: {data.shape[0]} planes of {plane[0]}×{plane[1]} pixels: "
                         "this looks like a (height, width, channels) image saved as pages; "
                         "save it with its axes (an ImageJ hyperstack, or OME-TIFF with axes YXC)")
    if cyto_channel is not None:
        return two_stains(data, axes, 0 if channel is None else channel, cyto_channel, path.name)
    if channel is not None:
        unnamed = [i for i, a in enumerate(axes) if a in "QI"]  # tifffile's (2, H, W): channels
        where = (axes.index("C") if "C" in axes else data.ndim - 1 if axes.endswith("S")
                 else unnamed[0] if len(unnamed) == 1 else None)
        if where is None and unnamed:
            raise ImageError(f"{path.name}: axes {axes} with shape {data.shape} do not say which "
                             "axis holds the channels: save it with named axes (an ImageJ "
                             "hyperstack, e.g. TCYX)")
        if where is None:
            raise ImageError(f"{path.name} has one channel (axes {axes}): leave --channel out")
        if not 0 <= channel < data.shape[where]:
            raise ImageError(f"{path.name} has {data.shape[where]} channels: --channel must be "
                             f"0 to {data.shape[where] - 1}, got {channel}")
        data = np.take(data, channel, axis=where)
        axes = axes[:where] + axes[where + 1:]
    elif axes in ("QYX", "IYX") and data.shape[0] == 2:
        # tifffile's plain (2, H, W): two stains more often than a 2-plane stack; the chunked
        # path (scale/lazy.py) reads it as channels, and both paths must agree
        raise ImageError(f"{path.name} holds 2 unnamed planes (shape {data.shape}): two stains? "
                         "choose the nuclear one with --channel (0 or 1); a 2-plane stack: save "
                         "it with its axes (ImageJ hyperstack, ZYX or TYX)")
    elif "C" in axes:
        raise ImageError(f"{path.name} has {data.shape[axes.index('C')]} channels (axes {axes}, "
                         f"shape {data.shape}): choose the nuclear stain with --channel "
                         f"(0 to {data.shape[axes.index('C')] - 1})")
    return Stack(data, axes)


def two_stains(data: np.ndarray, axes: str, nuclear: int, cyto: int, name: str) -> Stack:
    """A two-stain model's input from a multichannel or RGB image: red the nuclear channel,
    green the cytoplasm, blue empty (the order the bundled cells model was trained on)."""
    if "C" in axes and axes.endswith("S"):
        raise ImageError(f"{name} has channels of colour images (axes {axes}): save the nuclear "
                         "and the cytoplasm stain as two grey channels")
    unnamed = [i for i, a in enumerate(axes) if a in "QI"]
    where = (axes.index("C") if "C" in axes else data.ndim - 1 if axes.endswith("S")
             else unnamed[0] if len(unnamed) == 1 else None)  # a plain (C, Y, X) TIFF
    if where is None and len(unnamed) > 1:
        raise ImageError(f"{name}: axes {axes} with shape {data.shape} do not say which axis "
                         "holds the stains: save it with named axes (an ImageJ hyperstack, "
                         "e.g. TCYX)")
    if where is None:
        raise ImageError(f"{name} has one channel (axes {axes}): a cells + nuclei model needs "
                         "the nuclear and the cytoplasm stain in one file (a multichannel TIFF "
                         "or an RGB image)")
    count = data.shape[where]
    for what, index in (("--channel", nuclear), ("--cyto-channel", cyto)):
        if not 0 <= index < count:
            raise ImageError(f"{name} has {count} channels: {what} must be 0 to {count - 1}, "
                             f"got {index}")
    if nuclear == cyto:
        raise ImageError(f"{name}: --channel and --cyto-channel are both {cyto}: the nuclear "
                         "and the cytoplasm stain are different channels")
    rest = axes[:where] + axes[where + 1:]
    pair = pair_stains(np.take(data, nuclear, axis=where), np.take(data, cyto, axis=where))
    return Stack(pair, rest.rstrip("S") + "S")


def pair_stains(nuclear, cyto):
    """The input of a two-stain model, (…, Y, X, 3): red the nuclear stain, green the
    cytoplasm, blue empty (the order the bundled cells model was trained on), in a type that
    keeps both stains' values (each is normalised on its own later). Dask arrays stay lazy,
    one plane per chunk, so a stack is paired as its planes are read."""
    dtype = np.result_type(nuclear.dtype, cyto.dtype)
    if isinstance(nuclear, np.ndarray) and isinstance(cyto, np.ndarray):
        nuclear, cyto = nuclear.astype(dtype, copy=False), cyto.astype(dtype, copy=False)
        return np.stack([nuclear, cyto, np.zeros(nuclear.shape, dtype)], axis=-1)
    import dask.array as da

    chunks = (1,) * (nuclear.ndim - 2) + tuple(nuclear.shape[-2:])
    nuc = da.asarray(nuclear).astype(dtype).rechunk(chunks)
    cyt = da.asarray(cyto).astype(dtype).rechunk(chunks)
    return da.stack([nuc, cyt, da.zeros_like(nuc)], axis=-1)


def check_stains(stack: Stack, in_channels: int, name: str) -> None:
    """A model trained on several stains refuses a one-stain image with what to do, rather
    than segmenting the same grey in every channel (cells would be guessed from nuclei)."""
    if in_channels > 1 and not stack.rgb:
        raise ImageError(f"{name} is one stain: this model needs a nuclear and a cytoplasm "
                         "stain (an RGB image, red nuclei and green cytoplasm, or a multichannel "
                         "file with --channel N --cyto-channel M)")
    if in_channels > 1 and nuclei_in_blue(stack.data):
        raise ImageError(f"{name}: its red channel is empty and its blue one is not: nuclei "
                         "in blue (DAPI, Hoechst) and cytoplasm in green? Say so with "
                         "--channel 2 --cyto-channel 1 (the model reads red as the nuclear stain)")


def nuclei_in_blue(rgb: np.ndarray) -> bool:
    """Whether a colour image (…, Y, X, 3) has an empty red channel beside a blue one that
    holds signal: the usual DAPI-blue composite, whose nuclei a red-nuclear model would miss."""
    plane = np.asarray(rgb[tuple(n // 2 for n in rgb.shape[:-3])])  # the middle plane of a stack
    if plane.ndim != 3 or plane.shape[-1] < 3:
        return False
    sample = plane[::4, ::4].astype(np.float32)
    spread = [float(np.percentile(sample[..., c], 99.8) - np.percentile(sample[..., c], 1))
              for c in (0, 2)]
    return spread[0] <= 1e-3 * max(spread[1], 1e-12) and spread[1] > 0


def read_labels(path: str | Path) -> np.ndarray:
    """Read an instance label image (0 = background, one integer per object) as int32.

    Refuses what would silently score or train on garbage: colour-coded labels (objects
    told apart by colour, not by value) and fractional values (a probability map).
    """
    name = Path(path).name
    labels = np.squeeze(_palette_indices(Path(path)) if Path(path).suffix.lower() == ".png"
                        else read_image(path))
    if labels.ndim == 3 and labels.shape[-1] in (3, 4):  # label PNGs saved as RGB grey
        rgb = labels[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ImageError(f"{name}: colour labels (objects told apart by colour) are not "
                             "instance labels: save one integer value per object (0 = background)")
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ImageError(f"{name}: labels must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise ImageError(f"{name}: labels hold fractional values (a probability map?): "
                             "expected one integer value per object (0 = background)")
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise ImageError(f"{name}: label values above {np.iinfo(np.int32).max} are not supported")
    return labels.astype(np.int32, copy=False)


def _palette_indices(path: Path) -> np.ndarray:
    """A PNG's pixel values; for an indexed ("P" mode) PNG the palette indices, which
    labelling tools (labelme, CVAT, VOC) use as object ids, not the colours they map to."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image)
    except Exception:  # not readable by PIL: read_image says why
        pass
    return read_image(path)


def validate_image(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is a 2-D grey (H, W) or colour (H, W, 3|4) image.

    Returns the array as given; raises :class:`ImageError` saying what was expected.
    """
    image = np.asarray(image)
    if image.ndim > 2 and 1 in image.shape:  # (1, H, W), (H, W, 1), (1, 1, H, W): one plane
        image = np.squeeze(image)
        if image.ndim < 2:
            raise ImageError(f"image has shape {np.shape(image)}: expected a 2-D image")
    if image.ndim < 2:
        raise ImageError(f"image has shape {image.shape}: expected a 2-D image (height, width)")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ImageError(f"unsupported pixel type {image.dtype}: expected integer or float pixels")
    if image.ndim == 3 and image.shape[-1] not in (3, 4) and image.shape[0] in (3, 4):
        raise ImageError(
            f"image has shape {image.shape}: channels first is not supported, expected "
            "(height, width) or (height, width, 3) — move the colour axis last"
        )
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise ImageError(
            f"image has shape {image.shape}: expected a 2-D image (height, width) or an RGB "
            "image (height, width, 3); for a stack or time series, pick one plane first"
        )
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageError(f"image of {image.shape[0]}×{image.shape[1]} pixels is too small (≥ 8×8)")
    return image


def _grey(image: np.ndarray) -> np.ndarray:
    """Colour to one float32 plane; identical channels are kept as they are."""
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    rgb = image[..., :3].astype(np.float32, copy=False)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)


def noise_sigma(plane: np.ndarray, finite: np.ndarray | None = None) -> float:
    """Robust standard deviation of the pixel noise: the median absolute deviation of
    differences between horizontal neighbours (objects and gradients barely move it). 0 for
    noise below one grey level of an integer image."""
    rows = plane[:: max(1, plane.shape[0] // 512)]
    diff = np.diff(rows, axis=1)
    if finite is not None:
        ok = finite[:: max(1, plane.shape[0] // 512)]
        diff = diff[ok[:, 1:] & ok[:, :-1]]
    diff = diff.ravel()
    if diff.size == 0:
        return 0.0
    mad = np.median(np.abs(diff - np.median(diff)))
    return float(mad / (0.6745 * np.sqrt(2.0)))


def _percentiles(plane: np.ndarray, finite: np.ndarray | None) -> tuple[float, float]:
    """The normalisation range: (1, 99.8) percentiles, widened to at least
    :data:`MIN_RANGE_SIGMAS` noise σ above the low end."""
    values = plane if finite is None else plane[finite]
    values = values.ravel()
    if values.size > _PERCENTILE_SAMPLE:
        values = values[:: values.size // _PERCENTILE_SAMPLE + 1]
    lo, hi = np.percentile(values, PERCENTILES)
    hi = below_saturation(values, float(lo), float(hi))
    return float(lo), widen_to_noise(float(lo), hi, plane, finite)


def below_saturation(values: np.ndarray, lo: float, hi: float) -> float:
    """``hi`` (the 99.8th percentile of ``values``, a pixel sample) read from the unsaturated
    pixels when saturation decides it in an image with a dark background and the unsaturated
    pixels reach less than :data:`SATURATED_DIMMING` of the range; else ``hi``.

    A bright background (brightfield, H&E: median above mid-range) is left alone, as is an
    image whose median would then pass mid-range (the inversion test must not flip).
    """
    if hi <= lo or values.size == 0:
        return hi
    top = values.max()
    if hi < top:  # the 99.8th percentile is below the maximum: saturation did not set it
        return hi
    saturated = np.count_nonzero(values >= top)
    if saturated == values.size or saturated / values.size <= SATURATED_FRACTION:
        return hi
    # more than 0.2 % of the unsaturated pixels reach 3/4 of the range: their 99.8th percentile
    # would too, so nothing is dimmed much (saturated nuclei, or the top grey level of a coarse
    # image). One counting pass; the percentile below is paid only by images with debris.
    above = np.count_nonzero(values > lo + SATURATED_DIMMING * (hi - lo)) - saturated
    if above > SATURATED_FRACTION * (values.size - saturated):
        return hi
    lower = float(np.percentile(values[values < top], PERCENTILES[1]))
    median = float(np.median(values))
    if lower <= lo or (median - lo) / (hi - lo) > 0.5 or (median - lo) / (lower - lo) > 0.5:
        return hi
    log.info("%.2f %% of the image is saturated: normalised to the unsaturated pixels",
             100.0 * saturated / values.size)
    return lower


def widen_to_noise(lo: float, hi: float, plane: np.ndarray, finite: np.ndarray | None = None) -> float:
    """``hi`` widened to at least :data:`MIN_RANGE_SIGMAS` noise σ of ``plane`` above ``lo``,
    so that a field of camera noise alone is not stretched into 'objects' (``plane``: whole
    rows of pixels; the chunked path passes rows of a huge image)."""
    if hi <= lo:
        return hi
    sigma = noise_sigma(plane, finite)
    if hi - lo < MIN_RANGE_SIGMAS * sigma:
        log.info("image contrast is only %.1f noise σ: treated as a field without objects",
                 (hi - lo) / sigma)
        return lo + MIN_RANGE_SIGMAS * sigma
    return hi


def to_plane(image: np.ndarray, invert: bool | None = None) -> np.ndarray:
    """Map any supported image to one float32 plane in ~[0, 1] with nuclei bright.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array of any integer or float type.
    invert : whether objects are dark on a bright background. ``None`` decides from the image:
        a bright background (median above mid-range after normalisation) means brightfield or
        H&E, whose nuclei are dark.
    """
    image = validate_image(image)
    plane = _grey(image)
    finite = None
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        finite = np.isfinite(plane)
        if not finite.any():
            raise ImageError("image contains no finite values (all NaN or infinite)")
        log.warning("image has %d NaN/infinite pixels; treated as background", int((~finite).sum()))
    lo, hi = _percentiles(plane, finite)
    if hi <= lo:
        vmin, vmax = (float(np.min(plane[finite])), float(np.max(plane[finite]))) if (
            finite is not None) else (float(plane.min()), float(plane.max()))
        if vmax <= vmin:
            raise ImageError(
                f"image has the same value ({vmin:g}) everywhere: nothing to segment"
            )
        lo, hi = vmin, vmax
    out = (plane - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if finite is not None:
        out[~finite] = 0.0
    if invert is None:
        invert = bool(np.median(out[:: max(1, out.shape[0] // 512), :: max(1, out.shape[1] // 512)]) > 0.5)
    if invert:
        out = np.float32(1.0) - out
        if finite is not None:
            out[~finite] = 0.0
    np.clip(out, -0.5, 1.5, out=out)
    return out.astype(np.float32, copy=False)


def guess_modality(image: np.ndarray) -> str:
    """"histology" for colour images, "brightfield" for grey ones with dark objects on a
    bright background, else "fluorescence" — the default of an export's modality field."""
    image = np.asarray(image)
    step = max(1, max(image.shape[:2]) // 512)  # a sample is enough to decide
    sample = validate_image(image[::step, ::step])
    if sample.ndim == 3:
        rgb = sample[..., :3].astype(np.float32)
        if np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean() > 0.02 * (np.ptp(rgb) or 1.0):
            return "histology"
    bright_background = float(np.median(to_plane(sample, invert=False))) > 0.5  # as to_plane
    return "brightfield" if bright_background else "fluorescence"


def to_channels(image: np.ndarray, channels: int = 1, invert: bool | None = None) -> np.ndarray:
    """The network input for a model taking ``channels`` planes.

    One channel: :func:`to_plane`, (H, W). Three: each colour channel percentile-normalised
    on its own (a grey image repeated), (3, H, W) — what multi-stain models such as a
    cells + nuclei DeepCeNS need, since luminance would mix the stains.
    """
    if channels == 1:
        return to_plane(image, invert=invert)
    image = validate_image(image)
    rgb = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    planes = []
    for c in range(channels):
        channel = rgb[..., min(c, rgb.shape[-1] - 1)].astype(np.float32)
        if not np.isfinite(channel).all():
            finite = np.isfinite(channel)
            if not finite.any():
                raise ImageError("image contains no finite values (all NaN or infinite)")
            channel = np.where(finite, channel, np.nanmin(np.where(finite, channel, np.inf)))
        lo, hi = _percentiles(channel, None)
        if hi <= lo:
            lo, hi = float(channel.min()), float(channel.max())
        plane = (channel - lo) / (hi - lo) if hi > lo else np.zeros_like(channel)
        planes.append(np.clip(plane, -0.5, 1.5))
    out = np.stack(planes).astype(np.float32)
    if not np.any(out.max(axis=(1, 2)) > out.min(axis=(1, 2))):
        raise ImageError("image has the same value everywhere: nothing to segment")
    return out
