"""Random crops with scale, dihedral and intensity augmentation.

Scale augmentation is what lets one model serve microscopes whose nuclei differ several-fold in
pixel size: each crop is taken at a log-uniform random zoom (default ×0.5–×2), so the network
sees the training nuclei (about 9–35 px) anywhere from ~5 to ~70 px across.

Zoom alone does not teach what a low-magnification image looks like once the predictor has
enlarged it to the training scale: 4-px nuclei, upsampled ×4, are soft blobs with no
texture. Some crops are therefore degraded that way on purpose (shrunk with an area filter by
×2–×5 and enlarged back, labels untouched), so the network meets such images in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all sampled per crop)."""

    crop: int = 160
    scale_min: float = 0.5
    scale_max: float = 2.0
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.1
    noise_max: float = 0.05
    blur_probability: float = 0.2
    lowres_probability: float = 0.2
    lowres_factor: tuple[float, float] = (2.0, 5.0)
    #: share of low-resolution crops shrunk by point sampling (a resampled image, sharp and
    #: aliased) instead of by area (a lower magnification or binning)
    lowres_point_fraction: float = 0.0
    #: unsharp-mask low-resolution crops shrunk ×2.5 or more on their small grid, as the
    #: predictor does for weights with ``sharpen_enlarged`` (inference/sharpen.py)
    lowres_sharpen: bool = False


def random_scaled_crop(
    image: np.ndarray, labels: np.ndarray, size: int, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``×``size`` crop of ``image``/``labels`` zoomed by ``scale``.

    The source window is ``size/scale`` pixels wide; images smaller than the window are padded
    with background (0 in a normalised plane, label 0), never with mirrored unlabelled nuclei.
    Leading axes (channels of a multi-channel image, classes of per-class labels) ride along.
    """
    window = max(round(size / scale), 8)
    h, w = labels.shape[-2:]
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    if pad_h or pad_w:
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        image = np.pad(image, ((0, 0),) * (image.ndim - 2) + pads, mode="constant")
        labels = np.pad(labels, ((0, 0),) * (labels.ndim - 2) + pads, mode="constant")
        h, w = labels.shape[-2:]
    y = int(rng.integers(0, h - window + 1))
    x = int(rng.integers(0, w - window + 1))
    img = image[..., y : y + window, x : x + window]
    lab = labels[..., y : y + window, x : x + window]
    if window != size:
        zoom = size / window
        img = ndi.zoom(img, (1,) * (img.ndim - 2) + (zoom, zoom), order=1, mode="nearest", grid_mode=True)
        lab = ndi.zoom(lab, (1,) * (lab.ndim - 2) + (zoom, zoom), order=0, mode="nearest", grid_mode=True)
        img, lab = img[..., :size, :size], lab[..., :size, :size]
        if img.shape[-2:] != (size, size):  # rounding left us a pixel short
            extra = ((0, size - img.shape[-2]), (0, size - img.shape[-1]))
            img = np.pad(img, ((0, 0),) * (img.ndim - 2) + extra, mode="edge")
            lab = np.pad(lab, ((0, 0),) * (lab.ndim - 2) + extra, mode="edge")
    return img, lab


def dihedral(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """One of the 8 flips/90° rotations, the same for image and labels."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k, axes=(-2, -1)), np.rot90(labels, k, axes=(-2, -1))
    if rng.random() < 0.5:
        image, labels = image[..., ::-1], labels[..., ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def low_resolution(image: np.ndarray, factor: float, point: bool = False,
                   sharpen: bool = False) -> np.ndarray:
    """``image`` as seen at ``factor``× lower magnification and enlarged back to its grid:
    area-filtered (Gaussian of σ ≈ 0.4·factor, the spread of a ``factor``-px pixel; skipped
    with ``point``: a resampled image), shrunk, unsharp-masked on the small grid when
    ``sharpen`` and ``factor`` ≥ 2.5 (as the predictor does), then enlarged bilinearly as the
    predictor enlarges small-object images."""
    from ..inference.sharpen import SHARPEN_FROM, unsharp

    lead = (0,) * (image.ndim - 2)
    size = image.shape[-2:]
    source = image if point else ndi.gaussian_filter(image, lead + (0.4 * factor,) * 2)
    small = ndi.zoom(source, (1,) * len(lead) + (1.0 / factor,) * 2, order=1, mode="nearest",
                     grid_mode=True)
    if sharpen and factor >= SHARPEN_FROM:
        small = unsharp(small)
    zoom = (size[0] / small.shape[-2], size[1] / small.shape[-1])
    # ndi.zoom's output side is round(side · zoom): exactly ``size`` again
    back = ndi.zoom(small, (1,) * len(lead) + zoom, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(back, dtype=np.float32)


def intensity(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast, brightness, blur and noise on a normalised plane, (H, W) or (C, H, W).

    A channel that is constant in the crop stays as it is: the two-stain models read an
    empty third channel (RGB with blue unused) whose spread is clamped to 1e-3 in the
    network's normalisation, so noise there would reach it a thousand times amplified,
    while at inference the channel is exactly 0."""
    flat = image.reshape(image.shape[0], -1) if image.ndim == 3 else None
    constant = (flat.max(axis=1) == flat.min(axis=1)) if flat is not None else None
    out = np.clip(image, 0.0, None) ** rng.uniform(*cfg.gamma)
    out = out * rng.uniform(*cfg.contrast) + rng.uniform(-cfg.brightness, cfg.brightness)
    if rng.random() < cfg.blur_probability:
        sigma = rng.uniform(0.5, 1.5)
        out = ndi.gaussian_filter(out, (0,) * (out.ndim - 2) + (sigma, sigma))
    if cfg.noise_max > 0:
        out = out + rng.normal(0.0, rng.uniform(0, cfg.noise_max), out.shape)
    if constant is not None and constant.any():
        out[constant] = image[constant]
    return out.astype(np.float32)


def augment(
    image: np.ndarray, labels: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One random training crop (image float32, labels int32) of ``cfg.crop`` pixels."""
    scale = float(np.exp(rng.uniform(np.log(cfg.scale_min), np.log(cfg.scale_max))))
    img, lab = random_scaled_crop(image, labels, cfg.crop, scale, rng)
    img, lab = dihedral(img, lab, rng)
    if rng.random() < cfg.lowres_probability:
        img = low_resolution(img, float(rng.uniform(*cfg.lowres_factor)),
                             point=cfg.lowres_point_fraction > 0
                             and rng.random() < cfg.lowres_point_fraction,
                             sharpen=cfg.lowres_sharpen)
    return intensity(img, cfg, rng), lab.astype(np.int32)
