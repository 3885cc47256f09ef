"""Check the CUDA path against the CPU one: every bundled model segments the bundled sample
images on both devices; the GPU labels are matched against the CPU labels (AP@0.5 should be
near 1: fp16 on the GPU against bf16/fp32 on the CPU moves a few borderline objects only).

    python tools/cuda_check.py
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main(device: str = "cuda") -> None:
    import numpy as np

    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.sample_data import brightfield, cells, fluorescence, histology

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}", flush=True)
    images = {"fluorescence": fluorescence()[0][0], "histology": histology()[0][0],
              "brightfield": brightfield()[0][0]}
    from napari_deepcens.models.registry import bundled_weights

    for model in ("unet", "centerunet", "deepcens"):
        if not bundled_weights(model).is_file():  # left behind to fit a device's upload limit
            print(json.dumps({"model": model, "skipped": "weights not in this copy"}), flush=True)
            continue
        cpu = Predictor.from_name(model, device="cpu")
        gpu = Predictor.from_name(model, device=device)
        matches, rows = [], []
        for name, image in images.items():
            a = cpu.segment(image)
            gpu.segment(image)  # warm-up (cuDNN picks kernels per shape)
            sync()
            t0 = time.perf_counter()
            b = gpu.segment(image)
            sync()
            dt = time.perf_counter() - t0
            m = match_image(a, b)
            matches.append(m)
            rows.append({"image": name, "shape": list(image.shape), "cpu_objects": int(a.max()),
                         "gpu_objects": int(b.max()), "gpu_s": round(dt, 3),
                         "AP@0.5_gpu_vs_cpu": round(summarize([m])["AP@0.5"], 3)})
        print(json.dumps({"model": model, "images": rows,
                          "pooled_AP@0.5": round(summarize(matches)["AP@0.5"], 3)}), flush=True)
    # cells + nuclei: two stains, cell outlines moved onto the cytoplasm stain (session 18)
    if not bundled_weights("cells").is_file():
        print(json.dumps({"model": "cells", "skipped": "weights not in this copy"}), flush=True)
        return
    layers = cells()
    nuclear, cyto = layers[0][0], layers[1][0]
    field = np.stack([nuclear, cyto, np.zeros_like(nuclear)], axis=-1)  # as the widget hands it over
    found = {}
    for dev in ("cpu", device):
        predictor = Predictor.from_name("cells", device=dev)
        predictor.predict(field)  # warm-up
        sync()
        t0 = time.perf_counter()
        raw = predictor.predict(field)
        sync()
        dt = time.perf_counter() - t0
        found[dev] = (predictor.instances(raw).by_class(), round(dt, 3))
    row = {"model": "cells", "shape": list(field.shape), "gpu_s": found[device][1],
           "cpu_s": found["cpu"][1]}
    for name, part in found["cpu"][0].items():
        gpu_part = found[device][0][name]
        agreement = summarize([match_image(part.labels, gpu_part.labels)])["AP@0.5"]
        row[name] = {"cpu_objects": int(part.labels.max()),
                     "gpu_objects": int(gpu_part.labels.max()),
                     "AP@0.5_gpu_vs_cpu": round(agreement, 3)}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2])
