"""Issue 8: does a model hold up when the nuclei are smaller or larger than in training?

Rescales every validation image by each factor (image bilinear, labels nearest neighbour at
pixel centres), segments it
with no diameter given (automatic estimate) and prints AP@0.5 per factor next to the estimated
and true median diameters.

    python bench/eval_scales.py ../shared/data/dsb2018/val --factors 0.25 0.5 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.nn import functional as F

from napari_deepcens import Predictor
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.io.images import read_image, read_labels, to_plane
from napari_deepcens.io.layout import list_samples
from napari_deepcens.training.dataset import object_diameters


def rescale(plane: np.ndarray, labels: np.ndarray, factor: float, antialias: bool = False):
    """``antialias``: shrink by averaging each block (a lower magnification or binning on
    the microscope) rather than sampling it (bilinear at pixel centres, aliased)."""
    size = (max(round(plane.shape[0] * factor), 16), max(round(plane.shape[1] * factor), 16))
    img = F.interpolate(torch.from_numpy(plane)[None, None], size=size, mode="bilinear",
                        align_corners=False, antialias=antialias and factor < 1)[0, 0].numpy()
    # "nearest-exact" samples each output pixel's centre, the point bilinear (align_corners
    # False) samples too; torch's "nearest" takes the top-left source pixel of each block, which
    # shifts the labels by 1.5 source pixels against the image at x0.25 (0.375 output pixels:
    # a third of the IoU of a 4-px nucleus).
    lab = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size,
                        mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return img, lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--weights")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 3, 4])
    parser.add_argument("--limit", type=int, default=0, help="first N images only")
    parser.add_argument("--no-estimate", action="store_true", help="use images as they are")
    parser.add_argument("--tta", action="store_true", help="average the network over four flips")
    parser.add_argument("--antialias", action="store_true",
                        help="shrink with an area (antialiasing) filter, as optics and binning do")
    parser.add_argument("--json")
    args = parser.parse_args()
    predictor = Predictor.from_name(args.model, weights=args.weights, device="auto", tta=args.tta)
    samples = list_samples(args.data)[: args.limit or None]
    items = [(to_plane(read_image(s.image)), read_labels(s.labels)) for s in samples]
    rows = {}
    print(f"{'factor':>6} {'AP@0.5':>7} {'DSB':>6} {'true d':>7} {'est d':>7} {'est/true':>8} {'s':>5}")
    for factor in args.factors:
        matches, ratios, est_all, true_all = [], [], [], []
        t0 = time.perf_counter()
        for plane, labels in items:
            img, lab = rescale(plane, labels, factor, args.antialias) if factor != 1 else (plane, labels)
            true_d = float(np.median(object_diameters(lab))) if lab.max() else float("nan")
            raw = predictor.predict(img, normalised=True, estimate=not args.no_estimate)
            matches.append(match_image(lab, predictor.postprocess(raw)))
            if raw.diameter:
                ratios.append(raw.diameter / true_d)
                est_all.append(raw.diameter)
            true_all.append(true_d)
        s = summarize(matches)
        ratio = float(np.median(ratios)) if ratios else float("nan")
        rows[factor] = {**s, "true_d": float(np.nanmedian(true_all)),
                        "est_d": float(np.median(est_all)) if est_all else None,
                        "est_over_true": ratio, "seconds": time.perf_counter() - t0}
        print(f"{factor:>6g} {s['AP@0.5']:>7.3f} {s['DSB']:>6.3f} {np.nanmedian(true_all):>7.1f} "
              f"{rows[factor]['est_d'] or float('nan'):>7.1f} {ratio:>8.2f} "
              f"{time.perf_counter() - t0:>5.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
