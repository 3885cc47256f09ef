"""Sweep post-processing thresholds on a validation folder, as ``deepcens segment`` runs them.

``deepcens tune`` (and training) choose thresholds on maps computed at the training scale;
this sweep runs the network once per image exactly as ``segment`` does (automatic size
estimate included), then tries every combination of the knobs on the cached outputs and
ranks them by DSB score. ``--write`` saves a copy of the weights with the best thresholds.

    python bench/sweep_thresholds.py ../shared/data/dsb2018/val --model centerunet \\
        --fg 0.6 0.65 0.7 --score 0.4 0.45 0.5 --min-size 15 20 25 30 [--write OUT]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from napari_deepcens import Predictor
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.models.weights import save_weights
from napari_deepcens.postprocess.params import PostprocessParams
from napari_deepcens.training.dataset import load_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--weights")
    parser.add_argument("--fg", type=float, nargs="+", default=[0.5])
    parser.add_argument("--seed", type=float, nargs="+", default=[0.1])
    parser.add_argument("--score", type=float, nargs="+", default=[0.3])
    parser.add_argument("--min-size", type=int, nargs="+", default=[10])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", help="save the weights with the best thresholds here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_name(args.model, weights=args.weights, device="cpu")
    items = load_folder(args.data, channels=predictor.in_channels)
    raws = [predictor.predict(item.plane, normalised=True) for item in items]
    print(f"stored thresholds: {predictor.default_params()}")
    results = []
    for fg, seed, score, min_size in itertools.product(args.fg, args.seed, args.score, args.min_size):
        params = PostprocessParams(fg_threshold=fg, seed_threshold=seed, score_threshold=score,
                                   min_size=min_size)
        matches = []
        for item, raw in zip(items, raws, strict=True):
            # min_size is at the training scale, as stored in the weights
            scaled = PostprocessParams(**{**params.to_dict(),
                                          "min_size": max(1, round(min_size / raw.scale**2))})
            labels = predictor.instances(raw, scaled).labels
            matches.append(match_image(item.labels, labels))
        s = summarize(matches)
        results.append((s["DSB"], s, params))
    results.sort(key=lambda r: -r[0])
    print(f"{'DSB':>6} {'AP@0.5':>7} {'AP@0.75':>7} {'F1':>6}  thresholds")
    for dsb, s, params in results[:10]:
        print(f"{dsb:>6.4f} {s['AP@0.5']:>7.4f} {s['AP@0.75']:>7.4f} {s['F1']:>6.4f}  {params.to_dict()}")
    if args.write:
        best = results[0]
        info = predictor.info
        info.thresholds = best[2].to_dict()
        info.metrics = {**info.metrics, "val_sweep": best[1], "swept_on": args.data}
        save_weights(args.write, predictor.model, info)
        print(f"wrote {args.write} with {best[2].to_dict()}")


if __name__ == "__main__":
    main()
