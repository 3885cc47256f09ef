"""ONNX Runtime against torch for a dense network on the CPU: the whole segmentation of the
2048² real mosaic, in fresh processes that alternate between the two runtimes (this shared VM
drifts by ±15 %, so one process per runtime would compare two moments, not two runtimes).

    python bench/bench_runtime.py [--model unet] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def child(model: str, estimate: bool, threads: int, repeats: int) -> None:
    import torch
    from bench_speed import mosaic

    from napari_deepcens import Predictor

    torch.set_num_threads(threads)
    image = mosaic(2048)
    predictor = Predictor.from_name(model, device="cpu")
    predictor.segment(image[:1024, :1024], estimate=False)  # warm-up, and the export
    used = "onnxruntime" if predictor._onnx else "torch"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.segment(image, estimate=estimate)
        times.append((time.perf_counter() - t0) / (image.size / 1e6))
    print(f"{used:>11} {'estimate' if estimate else 'as is':>8}: "
          + " ".join(f"{t:.2f}" for t in times) + " s/MP", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["estimate", "as-is"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.child == "estimate", args.threads, args.repeats)
        return
    print(f"{args.model} on the CPU, {args.threads} threads, 2048² mosaic")
    for _ in range(args.rounds):
        for runtime in ("auto", "torch"):
            for mode in ("estimate", "as-is"):
                env = {**os.environ, "NAPARI_DEEPCENS_RUNTIME": runtime}
                subprocess.run([sys.executable, __file__, "--model", args.model, "--child", mode,
                                "--threads", str(args.threads), "--repeats", str(args.repeats)],
                               env=env, check=True)


if __name__ == "__main__":
    main()
