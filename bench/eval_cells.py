"""Cells + nuclei on U2OS fields: accuracy per class with the cells' outlines on the cytoplasm
stain and without (the network's own), and what a slider move costs.

    python bench/eval_cells.py ../shared/data/u2os-cells-nuclei/val [--weights F]

Each field runs once, at its estimated nucleus size, as users run it; the post-processing is
then repeated on the cached detections with the outline threshold at 0 and at the tuned value.
Prints AP@0.5 / AP@0.75 / DSB per class (mean over fields) and seconds per field for the
network and for one re-post-processing (a slider move).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_deepcens import Predictor
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.io.images import read_image, read_labels
from napari_deepcens.io.layout import list_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of <id>/image.* + labels_<class>.*")
    parser.add_argument("--weights", default=None, help="weights file (default: the bundled ones)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_name("cells", weights=args.weights, device="cpu")
    tuned = predictor.default_params()
    edges = sorted({0.0, tuned.outline_threshold})
    matches: dict[tuple[float, str], list] = {}
    network = post = 0.0
    samples = list_samples(args.data)
    for sample in samples:
        image = read_image(sample.image)
        started = time.perf_counter()
        raw = predictor.predict(image)
        network += time.perf_counter() - started
        for edge in edges:
            started = time.perf_counter()
            parts = predictor.instances(raw, {"outline_threshold": edge}).by_class()
            if edge == tuned.outline_threshold:
                post += time.perf_counter() - started
            for name, path in sample.classes.items():
                matches.setdefault((edge, name), []).append(match_image(read_labels(path),
                                                                        parts[name].labels))
    print(f"{len(samples)} fields, outline threshold tuned {tuned.outline_threshold:g}")
    print("class    outline  AP@0.5  AP@0.75  DSB")
    for (edge, name), found in sorted(matches.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = summarize(found)
        print(f"{name:8s} {edge:7.2f}  {s['AP@0.5']:.3f}   {s['AP@0.75']:.3f}    {s['DSB']:.3f}")
    mp = np.mean([np.prod(read_image(s.image).shape[:2]) for s in samples]) / 1e6
    print(f"per field ({mp:.2f} MP): network + size estimate {network / len(samples):.2f} s, "
          f"post-processing (a slider move) {post / len(samples):.2f} s")


if __name__ == "__main__":
    main()
