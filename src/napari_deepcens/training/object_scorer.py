"""Fitting the U-Net's object scorer (:mod:`..postprocess.object_score`) on annotated images.

The network segments each image as users run it (size estimate on, stored thresholds, no
score filter); every predicted object becomes one example, positive when it matches an
annotated object at IoU > 0.5. Fitted on the training images, the scorer learns which of the
network's own objects annotators would not draw: on the DSB 2018 validation split it lifts
the U-Net's AP@0.5 from 0.766 to 0.79 (docs/models.md, "Object scores").
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import DeepCeNSError
from ..evaluation.metrics import iou_matrix
from ..inference.predictor import Predictor
from ..postprocess.object_score import FEATURES, ObjectScorer, object_features
from ..postprocess.watershed import instances_from_maps
from .dataset import AnnotatedImage, rescale_items

log = logging.getLogger(__name__)

#: Hidden units of the scorer: 8 scored as 16 on val and better than none (0.792 vs 0.789).
HIDDEN = 8
#: Magnifications the training images are also shown at when fitting: fitted at ×1 only, the
#: scorer dropped true 4-px nuclei (val ×0.25 AP@0.5 0.721 → 0.671).
ZOOMS = (1.0, 0.5, 0.25)
#: IoU above which a predicted object counts as an annotated one (the AP@0.5 criterion).
MATCH_IOU = 0.5


def object_examples(predictor: Predictor, items: Iterable[AnnotatedImage],
                    progress: Callable[[int], None] | None = None,
                    zooms: Sequence[float] = (1.0,)) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F), matched (N,) bool) of every object the predictor's watershed finds
    in ``items`` with its stored thresholds (before any score filter), each image shown at
    every one of ``zooms`` (objects of 4 px look different from objects of 20 px, to the
    scorer too)."""
    if predictor.kind != "dense" or "heatmap" in predictor.strides:
        raise DeepCeNSError(f"object scorers are for the U-Net, not {predictor.model_name!r}")
    feats, matched = [], []
    items = list(items)
    if any(item.labels.ndim != 2 for item in items):
        raise DeepCeNSError("object scorers are fitted on one-class (nucleus) folders; "
                            "these hold several classes")
    jobs = [(item, zoom) for item in items for zoom in zooms]
    for k, (original, zoom) in enumerate(jobs):
        item = original if zoom == 1.0 else rescale_items([original], zoom)[0]
        raw = predictor.predict(item.plane, normalised=True)
        fg, dist = raw.maps["foreground"], raw.maps["distance"]
        labels = instances_from_maps(fg, dist, predictor.default_params(raw.scale),
                                     object_scale=1.0 / raw.scale)
        f = object_features(labels, fg, dist, object_scale=1.0 / raw.scale)
        iou = iou_matrix(item.labels, labels)
        best = iou.max(axis=0) if iou.size else np.zeros(len(f))
        feats.append(f)
        matched.append(best > MATCH_IOU)
        if progress is not None:
            progress(k + 1)
    if not feats or not sum(len(f) for f in feats):
        raise DeepCeNSError("the network found no objects in these images: nothing to fit")
    return np.concatenate(feats), np.concatenate(matched)


def fit_object_scorer(features: np.ndarray, matched: np.ndarray, hidden: int = HIDDEN,
                      l2: float = 1e-3, seed: int = 0) -> ObjectScorer:
    """Fit a scorer (standardised features → ``hidden`` tanh units → logit, or logistic
    regression with ``hidden=0``) by full-batch L-BFGS on cross-entropy with an L2 penalty
    on the weights. Deterministic for a given ``seed``."""
    features = np.asarray(features, np.float64)
    matched = np.asarray(matched, bool)
    if features.ndim != 2 or features.shape[1] != len(FEATURES) or len(features) != len(matched):
        raise DeepCeNSError(f"expected ({len(matched)}, {len(FEATURES)}) features, "
                            f"got {features.shape}")
    if matched.all() or not matched.any():
        raise DeepCeNSError("every object matches (or none does): a scorer needs both kinds")
    mean, std = features.mean(0), features.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    x = torch.tensor((features - mean) / std, dtype=torch.float64)
    y = torch.tensor(matched, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    sizes = [x.shape[1], *([hidden] if hidden else []), 1]
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        w = (torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) / n_in**0.5).requires_grad_()
        b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
        params.append((w, b))

    def logits() -> torch.Tensor:
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w.T + b
            if i < len(params) - 1:
                h = torch.tanh(h)
        return h[:, 0]

    optimizer = torch.optim.LBFGS([t for pair in params for t in pair], max_iter=500,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(), y)
        loss = loss + l2 * sum((w**2).sum() for w, _ in params)
        loss.backward()
        return loss

    optimizer.step(closure)
    return ObjectScorer(FEATURES, mean, std,
                        tuple((w.detach().numpy().copy(), b.detach().numpy().copy()) for w, b in params))


def fit_for(predictor: Predictor, items: list[AnnotatedImage],
            progress: Callable[[int], None] | None = None,
            zooms: Sequence[float] = ZOOMS) -> ObjectScorer:
    """The scorer for ``predictor``'s network, fitted on ``items`` seen at ``zooms``."""
    features, matched = object_examples(predictor, items, progress, zooms)
    log.info("object scorer: %d objects, %.1f %% matched", len(matched), 100 * matched.mean())
    return fit_object_scorer(features, matched)
