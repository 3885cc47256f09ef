"""Per-pixel training targets computed from an instance label image.

* foreground: 1 inside any object.
* normalised distance: each object's Euclidean distance to its own border divided by its
  maximum, so every object peaks at 1 in its middle whatever its size. Thresholding it gives
  one seed per object for the watershed, and touching nuclei separate because the map dips
  to 0 between them.
* shape-aware weight (seed 003, eq. 3): ``w = w_c + a·exp(-D² / 2σ²)`` with ``a = 10``,
  ``σ = 5``, ``D`` the distance to the nearest object boundary and ``w_c`` 1 on background and
  the background/foreground pixel ratio on foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

SHAPE_AWARE_ALPHA = 10.0
SHAPE_AWARE_SIGMA = 5.0
#: Cap on w_c so a crop with a sliver of foreground cannot dominate a batch.
MAX_CLASS_WEIGHT = 10.0


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """Distance to the object's own border, divided by the object's maximum (float32)."""
    out = np.zeros(labels.shape, np.float32)
    for index, slices in enumerate(ndi.find_objects(labels), start=1):
        if slices is None:
            continue
        # one pixel of margin so objects touching the crop edge still see a border
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in slices)
        mask = labels[padded] == index
        dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            out[padded][mask] = (dist[mask] / peak).astype(np.float32)
    return out


def shape_aware_weights(
    labels: np.ndarray, alpha: float = SHAPE_AWARE_ALPHA, sigma: float = SHAPE_AWARE_SIGMA
) -> np.ndarray:
    """The seed's pixel weights ``w_c + alpha·exp(-D²/2σ²)`` (float32)."""
    foreground = labels > 0
    n_fg = int(foreground.sum())
    boundary = find_boundaries(labels, mode="inner")
    if not boundary.any():
        return np.ones(labels.shape, np.float32)
    dist = ndi.distance_transform_edt(~boundary)
    weights = alpha * np.exp(-(dist**2) / (2.0 * sigma**2))
    class_weight = min((labels.size - n_fg) / max(n_fg, 1), MAX_CLASS_WEIGHT)
    weights += np.where(foreground, class_weight, 1.0)
    return weights.astype(np.float32)


def make_targets(labels: np.ndarray) -> np.ndarray:
    """Stack (foreground, normalised distance, weight) as a (3, H, W) float32 array."""
    labels = labels.astype(np.int32, copy=False)
    return np.stack(
        [
            (labels > 0).astype(np.float32),
            normalised_distance(labels),
            shape_aware_weights(labels),
        ]
    )


def center_targets(labels: np.ndarray, stride: int = 4) -> dict[str, np.ndarray]:
    """CenterUNet targets (seed 004) at 1/``stride`` resolution, plus the full-res mask.

    For every object, its minimum rotated rectangle (shapely) gives the centre, the long and
    short sides and the angle of the long side. The centre's cell gets a Gaussian peak of 1 in
    ``heatmap`` (σ grows with the object), and ``size`` (cells), ``offset`` (sub-cell x, y)
    and ``angle`` (θ/π in [0, 1)) are set at that cell, flagged in ``mask``.
    """
    from ..postprocess.rotated_boxes import rotated_boxes

    h, w = labels.shape
    gh, gw = h // stride, w // stride
    heatmap = np.zeros((1, gh, gw), np.float32)
    size = np.zeros((2, gh, gw), np.float32)
    offset = np.zeros((2, gh, gw), np.float32)
    angle = np.zeros((1, gh, gw), np.float32)
    mask = np.zeros((1, gh, gw), np.float32)
    yy, xx = np.mgrid[:gh, :gw]
    for _label, cx, cy, bw, bh, deg in rotated_boxes(labels):
        gx, gy = cx / stride, cy / stride
        ix, iy = int(gx), int(gy)
        if not (0 <= ix < gw and 0 <= iy < gh):
            continue
        sigma = max(0.5, float(np.sqrt(bw * bh)) / (6.0 * stride))
        r = int(3 * sigma) + 1
        y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, gh), max(ix - r, 0), min(ix + r + 1, gw)
        g = np.exp(-((yy[y0:y1, x0:x1] - iy) ** 2 + (xx[y0:y1, x0:x1] - ix) ** 2) / (2 * sigma**2))
        np.maximum(heatmap[0, y0:y1, x0:x1], g, out=heatmap[0, y0:y1, x0:x1])
        size[:, iy, ix] = (bw / stride, bh / stride)
        offset[:, iy, ix] = (gx - ix, gy - iy)
        angle[0, iy, ix] = (deg % 180.0) / 180.0
        mask[0, iy, ix] = 1.0
    return {"segmentation": (labels > 0).astype(np.float32)[None], "heatmap": heatmap,
            "size": size, "offset": offset, "angle": angle, "mask": mask}


def detection_targets(labels: np.ndarray, min_area: int = 4) -> dict[str, np.ndarray]:
    """Mask R-CNN targets of one crop: ``boxes`` (N, 4) xyxy, ``labels`` (N,) classes 1..K,
    ``masks`` (N, H, W) uint8. ``labels`` is (H, W) for one class or (K, H, W) per class.

    Slivers below ``min_area`` pixels (objects barely inside the crop) are left out: they
    cannot be told from background and would only teach the network noise.
    """
    per_class = labels[None] if labels.ndim == 2 else labels
    boxes, classes, masks = [], [], []
    for k, lab in enumerate(per_class, start=1):
        for index, slices in enumerate(ndi.find_objects(lab), start=1):
            if slices is None:
                continue
            mask = lab == index
            if mask[slices].sum() < min_area:
                continue
            rows, cols = slices
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
            classes.append(k)
            masks.append(mask)
    h, w = per_class.shape[-2:]
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(classes, np.int64),
        "masks": np.asarray(masks, np.uint8).reshape(-1, h, w),
    }


def targets_for(model: str, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The training targets of ``model`` for one crop's instance labels."""
    if model == "deepcens":
        return detection_targets(labels)
    if model == "centerunet":
        return center_targets(labels)
    return {"unet": make_targets(labels)}
