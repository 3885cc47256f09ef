"""How likely is each U-Net instance a nucleus an annotator would draw? (object scores)

The watershed turns every foreground blob into an object, and on the validation split most
of its false objects are shapes the network is unsure of: faint specks, slivers left beside a
nucleus, fragments at the image border. Each object is described by a few numbers read off
the cached maps (its size at the training scale, how confident and how central the network
is inside it and along its rim, how much of its rim it shares with neighbours), and a tiny
model fitted on the training images' predictions (:mod:`..training.object_scorer`) turns them
into a probability. Objects scoring below ``score_threshold`` are dropped, like the detection
models' low-scoring detections, so the same slider means the same thing for every model.

Pure numpy/scipy: cheap enough for live sliders (a few passes over the label image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from ..errors import WeightsError
from .watershed import renumbering

#: Per-object features, in the order :func:`object_features` returns them.
FEATURES = (
    "log_area",       # log of the area in pixels at the training scale
    "log_rel_area",   # log of the area over the image's median object area
    "fg_mean",        # mean foreground probability
    "fg_core_min",    # lowest foreground probability inside the object (rim excluded;
                      # the whole object for slivers that are all rim)
    "fg_rim_mean",    # mean foreground probability on the rim
    "dist_max",       # highest normalised distance (1 at a confident nucleus centre)
    "dist_mean",      # mean normalised distance
    "shared_rim",     # fraction of the rim that touches another object
    "extent",         # area over bounding-box area
    "border",         # 1 when the object touches the image border
    "log_count",      # log of the number of objects in the image
    "log_object_scale",  # log of the object size relative to training (−log of the zoom)
)


def _rim(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object pixels with a 4-neighbour of another label (the rim), and those whose
    differing neighbour is another object (shared rim)."""
    rim = np.zeros(labels.shape, bool)
    shared = np.zeros(labels.shape, bool)
    for a, b in (((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                 ((slice(None), slice(1, None)), (slice(None), slice(None, -1)))):
        la, lb = labels[a], labels[b]
        differ = la != lb
        rim[a] |= differ & (la > 0)
        rim[b] |= differ & (lb > 0)
        shared[a] |= differ & (la > 0) & (lb > 0)
        shared[b] |= differ & (la > 0) & (lb > 0)
    return rim, shared


def object_features(labels: np.ndarray, foreground: np.ndarray, distance: np.ndarray,
                    object_scale: float = 1.0) -> np.ndarray:
    """(N, len(FEATURES)) float32 features of objects 1..N of ``labels`` (consecutive).

    ``object_scale``: object size relative to the training size (the inverse of the zoom the
    network ran at), so areas are compared at the scale the model was trained on.
    """
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros((0, len(FEATURES)), np.float32)
    rim, shared = _rim(labels)
    # image border pixels are rim too: the object goes on beyond what we see
    rim[[0, -1], :] |= labels[[0, -1], :] > 0
    rim[:, [0, -1]] |= labels[:, [0, -1]] > 0
    # work on object pixels only, grouped by label (a radix sort for < 65536 objects), so
    # every per-object sum, maximum and minimum is one pass over a short array
    inside = labels.ravel() > 0
    lab = labels.ravel()[inside]
    order = np.argsort(lab.astype(np.uint16) if n < 65536 else lab, kind="stable")
    lab = lab[order]
    fg = foreground.ravel()[inside][order].astype(np.float64)
    dist = distance.ravel()[inside][order].astype(np.float64)
    on_rim = rim.ravel()[inside][order]
    starts = np.searchsorted(lab, np.arange(1, n + 1))

    def total(values: np.ndarray | None = None, where: np.ndarray | None = None) -> np.ndarray:
        w = values if where is None else (np.where(where, 1.0, 0.0) if values is None
                                          else np.where(where, values, 0.0))
        return np.bincount(lab, weights=w, minlength=n + 1)[1:]

    area = total()
    if not area.all():
        raise ValueError("labels must be numbered 1..N without gaps")
    fg_mean = total(fg) / area
    dist_mean = total(dist) / area
    dist_max = np.maximum.reduceat(dist, starts)
    n_rim = total(where=on_rim)
    fg_rim = np.divide(total(fg, on_rim), n_rim, out=fg_mean.copy(), where=n_rim > 0)
    core_min = np.minimum.reduceat(np.where(on_rim, np.inf, fg), starts)
    # objects all rim (slivers ≤ 2 px wide): their lowest probability anywhere
    fg_core = np.where(np.isfinite(core_min), core_min, np.minimum.reduceat(fg, starts))
    n_shared = total(where=shared.ravel()[inside][order])
    border = np.zeros(n + 1, bool)
    for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[side] = True
    boxes = ndi.find_objects(labels, max_label=n)
    box_area = np.array([(s[0].stop - s[0].start) * (s[1].stop - s[1].start) if s else 1
                         for s in boxes], np.float64)
    features = np.stack([
        np.log(area / object_scale**2),
        np.log(area / np.median(area)),
        fg_mean,
        fg_core,
        fg_rim,
        dist_max,
        dist_mean,
        n_shared / np.maximum(n_rim, 1),
        area / box_area,
        border[1:].astype(np.float64),
        np.full(n, np.log(n)),
        np.full(n, np.log(object_scale)),
    ], axis=1)
    return features.astype(np.float32)


@dataclass(frozen=True)
class ObjectScorer:
    """A small network (standardised features → tanh hidden layer → logit) or, with no hidden
    layer, a logistic regression. Stored in the weights file's metadata as plain lists."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight (out, in), bias (out,)) each

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Probability per object (rows of :func:`object_features`)."""
        x = (np.asarray(features, np.float64) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = np.tanh(x)
        return expit(x[:, 0])

    def score(self, labels: np.ndarray, foreground: np.ndarray, distance: np.ndarray,
              object_scale: float = 1.0) -> np.ndarray:
        """Probability of objects 1..N of ``labels``."""
        feats = object_features(labels, foreground, distance, object_scale)
        return self(feats) if len(feats) else np.zeros(0)

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "layers": [[w.tolist(), b.tolist()] for w, b in self.layers]}

    @classmethod
    def from_dict(cls, values: dict) -> ObjectScorer:
        """Rebuild from :meth:`to_dict`; a scorer for other features than this version
        computes is refused (it would score the wrong numbers)."""
        try:
            features = tuple(values["features"])
            layers = tuple((np.asarray(w, np.float64), np.asarray(b, np.float64))
                           for w, b in values["layers"])
            scorer = cls(features, np.asarray(values["mean"], np.float64),
                         np.asarray(values["std"], np.float64), layers)
            width = len(features)
            for w, b in layers:
                if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                    raise ValueError("layer shapes")
                width = w.shape[0]
            if width != 1 or scorer.mean.shape != (len(features),) or scorer.std.shape != (len(features),):
                raise ValueError("shapes")
            arrays = [scorer.mean, scorer.std, *(a for pair in layers for a in pair)]
            if not all(np.isfinite(a).all() for a in arrays) or (scorer.std <= 0).any():
                raise ValueError("numbers that are not finite, or a spread that is not positive")
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"the object scorer in these weights is malformed ({exc})") from exc
        if features != FEATURES:
            raise WeightsError("the object scorer in these weights uses features this version "
                               "does not compute; refit it with `deepcens tune --fit-scorer`")
        return scorer


def drop_low_scores(labels: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Labels without the objects scoring below ``threshold``, renumbered 1..M in order."""
    return renumbering(np.concatenate([[False], np.asarray(scores) >= threshold]))[labels]
