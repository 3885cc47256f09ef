"""Noisy images are denoised before the network sees them.

The training collection is clean: its noisiest image has a normalised range of 22.9 noise σ
(median 89). Other labs image live cells with little light, and there the networks fail
where a person still sees every nucleus: val with 20 photons per nucleus (Poisson plus read
noise, ranges of 9–13 σ), U-Net AP@0.5 0.795 → 0.677, CenterUNet 0.774 → 0.622. Non-local means
(patches of 5 px compared within 6 px, ``h`` = 0.6 noise σ) restores most of it: 0.745 and
0.727; at 10 photons 0.515 → 0.666. A Gaussian blur does less (0.709 at σ 1 px) and
smears small nuclei. Clean images are left alone — on them the filter costs 0.007 — so only
a plane under :data:`NOISY_SNR` is filtered. Cost: about 1 s per megapixel on one core, paid
only by noisy images. Measured with ``bench/eval_corruptions.py`` (see docs/models.md, "Noisy
images and saturated debris").
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..io.images import PERCENTILES, noise_sigma
from .progress import drain

#: A plane whose normalised range is under this many noise σ is denoised (the training
#: images' lowest is 22.9; a field of camera noise alone is normalised to 12).
NOISY_SNR = 20.0
#: Non-local means: filter strength in noise σ, patch side and search distance in pixels.
STRENGTH = 0.6
PATCH = 5
DISTANCE = 6
#: After filtering, a channel is normalised again to its own (1, 99.8) percentiles, as the
#: networks were trained, but over at least this many of its *original* noise σ, so that a
#: field of camera noise alone, smoothed, is not stretched into blobs.
RANGE_FLOOR = 4.0
#: The filter runs block by block (with a margin that makes the result identical to one
#: pass) and yields after each, so Cancel answers within a block (~0.3 s on one core).
BLOCK = 512
MARGIN = PATCH // 2 + DISTANCE + 2
#: The user's choice (CLI ``--denoise``, the widget's *denoise* box) as ``predict``'s argument.
CHOICES: dict[str, bool | None] = {"auto": None, "yes": True, "no": False}


def snr(plane: np.ndarray) -> float:
    """Normalised range over pixel noise of a plane from :func:`~napari_deepcens.io.images.
    to_plane` (range 1): ``1 / σ``; ``inf`` for a noiseless plane."""
    sigma = noise_sigma(np.asarray(plane, np.float32))
    return float("inf") if sigma <= 0 else 1.0 / sigma


def _planes(plane: np.ndarray) -> list[np.ndarray]:
    return [plane] if plane.ndim == 2 else list(plane)


def _nl_means(channel: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(channel, patch_size=PATCH, patch_distance=DISTANCE,
                            h=STRENGTH * sigma, sigma=sigma, fast_mode=True).astype(np.float32)


def _nl_means_iter(channel: np.ndarray, sigma: float) -> Generator[None, None, np.ndarray]:
    """:func:`_nl_means` block by block, yielding after each block."""
    h, w = channel.shape
    out = np.empty((h, w), np.float32)
    for r0 in range(0, h, BLOCK):
        for c0 in range(0, w, BLOCK):
            r1, c1 = min(r0 + BLOCK, h), min(c0 + BLOCK, w)
            a, b = max(r0 - MARGIN, 0), max(c0 - MARGIN, 0)
            part = _nl_means(channel[a: min(r1 + MARGIN, h), b: min(c1 + MARGIN, w)], sigma)
            out[r0:r1, c0:c1] = part[r0 - a: r1 - a, c0 - b: c1 - b]
            yield
    return out


@dataclass(frozen=True)
class Denoiser:
    """What filtering an image takes, fixed once per image so that every part of it (the
    chunks of a huge one) is filtered and normalised alike: per channel, the noise σ (0: the
    channel is clean and left alone) and the range it is normalised to afterwards."""

    sigmas: tuple[float, ...]
    los: tuple[float, ...]
    his: tuple[float, ...]

    @classmethod
    def fit(cls, plane: np.ndarray, force: bool = False) -> tuple[Denoiser, np.ndarray]:
        """The settings read off a normalised (H, W) or (C, H, W) ``plane``, and the plane
        denoised with them. ``force``: filter every channel with any noise, not only noisy ones."""
        return drain(cls.fit_iter(plane, force))

    @classmethod
    def fit_iter(cls, plane: np.ndarray, force: bool = False
                 ) -> Generator[None, None, tuple[Denoiser, np.ndarray]]:
        """:meth:`fit`, yielding between blocks of the filter (so a worker can be cancelled)."""
        sigmas, los, his, out = [], [], [], []
        for p in _planes(plane):
            p = np.asarray(p, np.float32)
            sigma = noise_sigma(p)
            if sigma > 0 and (force or 1.0 / sigma < NOISY_SNR):
                filtered = yield from _nl_means_iter(p, sigma)
                lo, hi = (float(v) for v in np.percentile(filtered, PERCENTILES))
                # never above the range the image was normalised to: saturated debris, read
                # out of that range (io.images.below_saturation), must not set it again
                hi = min(hi, 1.0)
                sigmas.append(sigma)
                los.append(lo)
                his.append(max(hi, lo + RANGE_FLOOR * sigma))
                out.append(_rescale(filtered, los[-1], his[-1]))
            else:
                sigmas.append(0.0)
                los.append(0.0)
                his.append(1.0)
                out.append(p)
        fitted = cls(tuple(sigmas), tuple(los), tuple(his))
        return fitted, out[0] if plane.ndim == 2 else np.stack(out)

    @property
    def filters(self) -> bool:
        """Whether any channel is filtered (a noiseless one never is)."""
        return any(s > 0 for s in self.sigmas)

    def apply(self, plane: np.ndarray) -> np.ndarray:
        """``plane`` (normalised as the one fitted) filtered and normalised alike."""
        return drain(self.apply_iter(plane))

    def apply_iter(self, plane: np.ndarray) -> Generator[None, None, np.ndarray]:
        """:meth:`apply`, yielding between blocks of the filter."""
        out = []
        for p, sigma, lo, hi in zip(_planes(plane), self.sigmas, self.los, self.his, strict=True):
            p = np.asarray(p, np.float32)
            if sigma > 0:
                p = _rescale((yield from _nl_means_iter(p, sigma)), lo, hi)
            out.append(p)
        return out[0] if plane.ndim == 2 else np.stack(out)


def _rescale(channel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((channel - np.float32(lo)) * np.float32(1.0 / (hi - lo)), -0.5, 1.5)
