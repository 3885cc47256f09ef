"""Speed and memory of the whole segment pipeline on the CPU (issue 2 targets).

Prints:
* seconds per megapixel of ``Predictor.segment`` (network + watershed) on a real image tiled
  up to ~4 MP (no diameter estimate, and with it),
* the live re-post-processing time on a 1024×1024 image (what a slider move costs),
* peak resident memory of a whole 4096×4096 segmentation, measured in a fresh process (and the
  peak GPU memory torch allocated, with ``--device cuda``).

    python bench/bench_speed.py [--threads 2] [--model unet] [--weights FILE] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def mosaic(side: int) -> np.ndarray:
    """A real fluorescence image tiled (mirrored) up to side × side pixels."""
    from napari_deepcens.sample_data import fluorescence

    tile = fluorescence()[0][0]
    reps = (side // tile.shape[0] + 1, side // tile.shape[1] + 1)
    rows = [np.concatenate([tile if (i + j) % 2 == 0 else tile[:, ::-1] for j in range(reps[1])], 1)
            for i in range(reps[0])]
    return np.ascontiguousarray(np.concatenate(rows, 0)[:side, :side])


def peak_memory_child(model: str, side: int, threads: int, weights: str | None, device: str,
                      tta: bool = False) -> None:
    import torch

    from napari_deepcens import Predictor

    torch.set_num_threads(threads)
    image = mosaic(side)
    predictor = Predictor.from_name(model, weights=weights, device=device, tta=tta)
    t0 = time.perf_counter()
    labels = predictor.segment(image, estimate=False)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu_gb = torch.cuda.max_memory_allocated() / 1024**3 if predictor.device.type == "cuda" else 0.0
    print(json.dumps({"side": side, "objects": int(labels.max()), "seconds": seconds,
                      "peak_gb": peak_kb / 1024**2, "gpu_peak_gb": gpu_gb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--weights", default=None, help="weights file (default: the bundled ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-side", type=int, default=4096)
    parser.add_argument("--tta", action="store_true", help="flip averaging (four passes)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.model, args.memory_side, args.threads, args.weights, args.device, args.tta)
        return

    import torch

    from napari_deepcens import Predictor
    from napari_deepcens.postprocess.params import PostprocessParams

    torch.set_num_threads(args.threads)
    predictor = Predictor.from_name(args.model, weights=args.weights, device=args.device, tta=args.tta)
    flips = ", flip averaging" if args.tta else ""
    print(f"{args.model} on {predictor.device}, {args.threads} threads{flips}")
    image = mosaic(2048)
    predictor.segment(image[:1024, :1024], estimate=False)  # warm-up: oneDNN builds kernels per shape
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    mp = image.size / 1e6
    for estimate in (False, True):
        t0 = time.perf_counter()
        labels = predictor.segment(image, estimate=estimate)
        dt = time.perf_counter() - t0
        print(f"segment {image.shape[0]}x{image.shape[1]} ({mp:.1f} MP), estimate={estimate}: "
              f"{dt:.2f} s = {dt / mp:.2f} s/MP, {labels.max()} objects")

    raw = predictor.predict(image[:1024, :1024], estimate=False)
    times = []
    base = predictor.default_params()
    for value in (0.3, 0.4, 0.5, 0.6, 0.7):  # the slider of the model: seed, or detection score
        knob = "seed_threshold" if args.model == "unet" else "score_threshold"
        t0 = time.perf_counter()
        predictor.postprocess(raw, PostprocessParams(**{**base.to_dict(), knob: value}))
        times.append(time.perf_counter() - t0)
    print(f"live re-post-processing 1024x1024: median {np.median(times):.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f})")

    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                          "--model", args.model, "--threads", str(args.threads), "--device", args.device,
                          *(["--weights", args.weights] if args.weights else []),
                          *(["--tta"] if args.tta else []),
                          "--memory-side", str(args.memory_side)],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    gpu = f", GPU peak {res['gpu_peak_gb']:.2f} GB" if res.get("gpu_peak_gb") else ""
    print(f"whole {res['side']}x{res['side']} segmentation: {res['seconds']:.1f} s, "
          f"peak memory {res['peak_gb']:.2f} GB{gpu}, {res['objects']} objects")


if __name__ == "__main__":
    main()
