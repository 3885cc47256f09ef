"""How a model holds up to what other labs' images look like: val, corrupted, as users run it.

Each validation image is normalised (``to_plane``), corrupted, segmented with no diameter given
and scored (AP@0.5, DSB). Random corruptions draw from one generator in the order the
corruptions are named, so the same command gives the same placements and noise; compare runs
with the same names in the same order.

    python bench/eval_corruptions.py ../shared/data/dsb2018/val --model unet \\
        --corruptions clean photons20 photons10 specks debris [--denoise no] [--old-range]

``--denoise no``: never denoise (the pipeline before session 15); ``--old-range``: let saturated
pixels set the normalisation range (likewise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from napari_deepcens import Predictor
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.io.images import read_image, read_labels, to_plane
from napari_deepcens.io.layout import list_samples


def photons(count: float):
    """Poisson noise at ``count`` photons per brightest pixel, +100 offset, read noise 2."""
    def corrupt(x, rng, _labels):
        noisy = 100 + rng.poisson(np.clip(x, 0, None) * count) + rng.normal(0, 2, x.shape)
        return np.clip(noisy, 0, None).astype(np.uint16)
    return corrupt


def discs(n: int, radius, value: float):
    """``n`` discs at ``value`` (6: saturated debris six times the nuclei) placed at random."""
    def corrupt(x, rng, _labels):
        y, (h, w) = x.copy(), x.shape
        yy, xx = np.ogrid[:h, :w]
        r = radius(h, w)
        for _ in range(n):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            y[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
        return y
    return corrupt


def brighter_cells(x, rng, labels):
    """One nucleus in ten five times brighter (mitotic, apoptotic)."""
    ids = np.unique(labels)[1:]
    picked = np.isin(labels, ids[rng.random(ids.size) < 0.1])
    y = x.copy()
    y[picked] *= 5
    return y


def vignette(x, _rng, _labels):
    h, w = x.shape
    yy, xx = np.mgrid[:h, :w]
    return x * (1 - 0.3 * (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2))


CORRUPTIONS = {
    "clean": lambda x, _rng, _labels: x,
    "photons30": photons(30),
    "photons20": photons(20),
    "photons10": photons(10),
    "blur": lambda x, _rng, _labels: ndi.gaussian_filter(x, 2.0),
    "vignette": vignette,
    "ramp": lambda x, _rng, _labels: x + 0.5 * np.mgrid[: x.shape[0], : x.shape[1]][1] / x.shape[1],
    "dim": lambda x, _rng, _labels: np.clip(x, 0, None) ** 2.0,
    "brighter_cells": brighter_cells,
    "debris": discs(3, lambda h, w: max(h, w) // 20, 6.0),
    "specks": discs(40, lambda h, w: 3, 6.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--weights")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS))
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    parser.add_argument("--denoise", choices=("auto", "no"), default="auto")
    parser.add_argument("--old-range", action="store_true",
                        help="saturated pixels set the normalisation range (before session 15)")
    args = parser.parse_args()
    if args.old_range:
        import napari_deepcens.io.images as images

        images.SATURATED_FRACTION = 1.0
    predictor = Predictor.from_name(args.model, weights=args.weights, device="auto")
    samples = list_samples(args.data)[: args.limit or None]
    rng = np.random.default_rng(0)
    denoise = None if args.denoise == "auto" else False
    for name in args.corruptions:
        started, matches = time.perf_counter(), []
        for sample in samples:
            labels = read_labels(sample.labels)
            image = CORRUPTIONS[name](to_plane(read_image(sample.image)), rng, labels)
            matches.append(match_image(labels, predictor.segment(image, denoise=denoise)))
        s = summarize(matches)
        print(f"{name:15s} AP@0.5 {s['AP@0.5']:.3f}  DSB {s['DSB']:.3f}  "
              f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
