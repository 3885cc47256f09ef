"""Automatic object-size estimate: at which zoom does the network see objects it knows?

A network trained on ~20 px nuclei fragments 100 px nuclei and misses 4 px ones. We run it on a
bounded crop at a ladder of zooms (×4 … ×¼) and measure, at each zoom, the median diameter of
what it finds, converted back to original pixels. Where the zoom suits the objects, neighbouring
zooms agree on that physical size (a plateau); where it does not, they disagree (fragments look
small at high zoom, merged clusters look big at low zoom). The estimate is the size on which two
neighbouring zooms agree best, weighted towards zooms whose detections sit near the training
size. Cost is bounded: every pass sees at most ``budget``² model pixels (one check pass,
when only enlarging zooms found objects, (2·``budget``)²).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

#: Zooms tried, from upsampling ×4 (4 px nuclei → 16 px) to downsampling ×¼ (100 px → 25 px).
ZOOMS = (4.0, 2.0, 1.0, 0.5, 0.25)
MIN_OBJECTS = 3
#: A reading that only enlarging zooms give is checked at the zoom it implies (at most this);
#: it stands if the check finds objects of the same physical size, within this factor.
MAX_CHECK_ZOOM = 12.0
CHECK_TOLERANCE = 1.5


@dataclass
class DiameterEstimate:
    """The estimate and, per zoom, (physical median diameter, number of objects)."""

    diameter: float | None
    per_zoom: dict[float, tuple[float, int]] = field(default_factory=dict)


def _centre_crop(plane: np.ndarray, side: int) -> np.ndarray:
    h, w = plane.shape[-2:]
    y0, x0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return plane[..., y0 : y0 + side, x0 : x0 + side]


def _diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters of objects not touching the crop border."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = np.bincount(labels.ravel())
    areas[border] = 0
    areas = areas[1:]
    return 2.0 * np.sqrt(areas[areas > 0] / np.pi)


def estimate_diameter(predictor, plane: np.ndarray, budget: int = 256) -> DiameterEstimate:
    """Estimate the typical object diameter (pixels) in a normalised ``plane``."""
    from .predictor import resize

    # the training median, not the working diameter: the ladder asks at which zoom objects
    # look like those the network was trained on (the working diameter only moves the zoom
    # the whole image then runs at)
    train = predictor.info.median_diameter
    # the ladder reads the main class (nuclei) only: outlining cells on their stain is wasted
    params = replace(predictor.default_params(), outline_threshold=0.0)
    if predictor.object_scorer is not None:
        # the ladder's readings are judged by how fragments and clusters look; the U-Net's
        # object scorer would drop exactly those, and it was fitted on objects at their
        # estimated size, not on a zoomed crop it is told is at the training scale
        params = replace(params, score_threshold=0.0)

    def reading(zoom: float, side: int = budget) -> tuple[float, int] | None:
        """(median physical diameter, count) of what the network finds at ``zoom``."""
        crop = _centre_crop(plane, math.ceil(side / zoom))
        size = (max(round(crop.shape[-2] * zoom), 32), max(round(crop.shape[-1] * zoom), 32))
        work = resize(crop, size)
        raw = predictor.predict(work, diameter=None, estimate=False, normalised=True, tta=False,
                                denoise=False)
        found = _diameters(predictor.postprocess(raw, params))
        return (float(np.median(found)) / zoom, int(found.size)) if found.size >= MIN_OBJECTS else None

    per_zoom: dict[float, tuple[float, int]] = {}
    for zoom in ZOOMS:
        found = reading(zoom)
        if found is not None:
            per_zoom[zoom] = found
    best: tuple[float, float] | None = None
    zooms = [z for z in ZOOMS if z in per_zoom]
    for a, b in itertools.pairwise(zooms):
        if a / b > 2.0 + 1e-6:  # only neighbours on the ladder
            continue
        da, db = per_zoom[a][0], per_zoom[b][0]
        disagreement = abs(math.log(da / db))
        # how far the detections at these zooms are from the training size
        offset = 0.5 * (abs(math.log(da * a / train)) + abs(math.log(db * b / train)))
        cost = disagreement + 0.25 * offset
        if best is None or cost < best[0]:
            best = (cost, math.sqrt(da * db))
    if best is None and per_zoom:
        # No two neighbouring zooms agree. Take the reading of the most shrinking zoom: large
        # objects are still seen whole there (val ×4: 26 of 63 images end here).
        zoom = min(per_zoom)
        diameter = per_zoom[zoom][0]
        if zoom > 1.0:
            # Only enlarging zooms found anything: tiny objects (val ×0.25, 2.3 px nuclei) or
            # fragments of texture or noise (val bf4a61bb, three nuclei on textured tissue:
            # "2.6 px" → 811 objects). Look once more at the zoom the reading asks for, on a
            # crop twice as wide (sparse images: 5 nuclei in all): real objects then appear
            # at the same physical size, fragments do not.
            check = reading(min(train / diameter, MAX_CHECK_ZOOM), side=2 * budget)
            if check is None or abs(math.log(check[0] / diameter)) > math.log(CHECK_TOLERANCE):
                return DiameterEstimate(None, per_zoom)
        return DiameterEstimate(diameter, per_zoom)
    return DiameterEstimate(best[1] if best else None, per_zoom)
