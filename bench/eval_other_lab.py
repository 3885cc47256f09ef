"""Nuclei from another lab: the bundled models on the U2OS Hoechst channel.

The shipped models are trained on DSB2018 only. The U2OS fields (Aits lab; 1104² px, one
Hoechst channel, nuclei ~44 px across against the ~17-20 px of the training data) were
never seen in training or threshold tuning, so they show how a model holds up on a new
microscope and a new object size, with the size estimated (default) or not (``--no-estimate``).

    python bench/eval_other_lab.py ../shared/data/u2os-cells-nuclei --model centerunet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_deepcens import Predictor
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.io.images import read_image, read_labels
from napari_deepcens.io.layout import list_samples
from napari_deepcens.training.dataset import object_diameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the u2os-cells-nuclei folder")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--weights")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--no-estimate", action="store_true", help="use the images as they are")
    parser.add_argument("--tta", action="store_true", help="average the network over four flips")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    predictor = Predictor.from_name(args.model, weights=args.weights, device="auto", tta=args.tta)
    matches, ratios, t0 = [], [], time.perf_counter()
    for sample in (s for split in args.splits for s in list_samples(args.data / split)):
        image = read_image(sample.image)[..., 0]  # R = Hoechst
        labels = read_labels(sample.classes["nucleus"])
        raw = predictor.predict(image, estimate=not args.no_estimate)
        matches.append(match_image(labels, predictor.postprocess(raw)))
        if raw.diameter:
            ratios.append(raw.diameter / float(np.median(object_diameters(labels))))
    s = summarize(matches)
    seconds = time.perf_counter() - t0
    ratio = float(np.median(ratios)) if ratios else float("nan")
    print(f"{args.model}: {len(matches)} fields, AP@0.5 {s['AP@0.5']:.3f}, AP@0.75 {s['AP@0.75']:.3f}, "
          f"DSB {s['DSB']:.3f}, estimated/true diameter {ratio:.2f} (median), {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({**s, "est_over_true": ratio, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
