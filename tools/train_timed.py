"""Train for a fixed wall-clock time (a lent GPU is held for minutes, not epochs).

The step count is set from the speed of a short probe run on the same data, loader and device,
so the one-cycle schedule anneals just before the time is up. The weights are written without
validation first (so a failure later loses nothing); then, when ``--val`` is given, the whole
pipeline is validated at the training scale, the best thresholds are stored in the weights and
the metrics printed as one JSON line. One grey input channel, as the bundled DSB2018 models
(multi-class colour DeepCeNS models: ``deepcens train``).

    python tools/train_timed.py DATA -o OUT.safetensors --model unet --minutes 5 --workers 4 \
        [--init W | --grow-from W] [--val VAL] [--batch-size 16] [--crop 256] [--lr 1e-3] [--base-channels 12]
        [--scale-min 0.5 --scale-max 2.0 --lowres-probability 0.2]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(args: argparse.Namespace) -> None:
    from napari_deepcens.commands import load_training_data
    from napari_deepcens.inference.device import resolve_device
    from napari_deepcens.models.weights import load_weights, save_weights
    from napari_deepcens.training.augment import AugmentConfig
    from napari_deepcens.training.loop import TrainConfig, grow, train_iter, validate

    deadline = time.monotonic() + 60 * args.minutes
    # fixed crop shapes: let cuDNN pick its kernels once (the detector's RoI counts vary)
    torch.backends.cudnn.benchmark = args.model != "deepcens"
    channels = 1
    train_items = load_training_data(args.data, channels)
    val_items = load_training_data(args.val, channels) if args.val else []
    if args.model == "deepcens":
        model_config = {"backbone": args.backbone}
        if args.full_width:
            model_config["channels"] = None
    else:
        model_config = {"base_channels": args.base_channels, "depth": args.depth}
    if args.grow_from is not None:
        # a deeper backbone that starts as the trained smaller one (training.loop.grow)
        model, info = grow(*load_weights(args.grow_from), model_config)
        print(json.dumps({"grown_from": str(args.grow_from), "config": info.config}), flush=True)
        args.init = args.output.with_name(args.output.stem + "_grown.safetensors")
        save_weights(args.init, model, info, half=False)
    augment = AugmentConfig(crop=args.crop, scale_min=args.scale_min, scale_max=args.scale_max,
                            lowres_probability=args.lowres_probability,
                            lowres_factor=(args.lowres_min, args.lowres_max),
                            lowres_point_fraction=args.lowres_point,
                            lowres_sharpen=args.lowres_sharpen)
    base = TrainConfig(epochs=1, steps_per_epoch=args.probe_steps, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed, workers=args.workers, augment=augment)

    # probe: the same loop, loader and device; its steps after the first few are timed
    with tempfile.TemporaryDirectory() as tmp:
        stamps = []
        probe = train_iter(train_items, Path(tmp) / "probe.safetensors", args.model,
                           model_config, base, init=args.init, device=args.device, resume=False)
        for progress in probe:
            stamps.append(time.monotonic())
            if progress.step >= args.probe_steps:
                break
        probe.close()  # stops its loader's worker processes
    warm = args.probe_steps // 3
    step_s = (stamps[args.probe_steps - 1] - stamps[warm]) / (args.probe_steps - 1 - warm)
    left = deadline - time.monotonic() - 20  # loader and model start-up of the real run
    steps = max(int(0.9 * left / step_s), args.probe_steps)  # 10 % for contention changes
    print(json.dumps({"probe_step_s": round(step_s, 4), "steps": steps, "model": args.model}),
          flush=True)

    config = TrainConfig(epochs=args.epochs, steps_per_epoch=max(steps // args.epochs, 1),
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         workers=args.workers, augment=augment)
    t0 = time.monotonic()
    for progress in train_iter(train_items, args.output, args.model, model_config, config,
                               init=args.init, device=args.device, resume=False):
        if progress.step % 200 == 0:
            print(f"step {progress.step}/{progress.total_steps} loss {progress.loss:.4f} "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
        if progress.best_path is not None:
            print(f"epoch {progress.epoch} saved {progress.best_path}", flush=True)
    print(json.dumps({"trained_s": round(time.monotonic() - t0, 1), "steps": config.epochs
                      * config.steps_per_epoch}), flush=True)

    if val_items:
        model, info = load_weights(args.output)
        metrics, params = validate(model, info, val_items, resolve_device(args.device))
        info.thresholds = params.to_dict()
        info.metrics = {**info.metrics, "val": metrics}
        save_weights(args.output, model, info)
        print(json.dumps({"val": metrics, "thresholds": params.to_dict()}), flush=True)


def main() -> int:
    from napari_deepcens.training.augment import AugmentConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--val", type=Path, nargs="*", default=[])
    parser.add_argument("--init", type=Path)
    parser.add_argument("--grow-from", type=Path, help="start a larger model from these weights")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--scale-min", type=float, default=AugmentConfig.scale_min,
                        help="smallest zoom of the scale augmentation")
    parser.add_argument("--scale-max", type=float, default=AugmentConfig.scale_max)
    parser.add_argument("--lowres-probability", type=float,
                        default=AugmentConfig.lowres_probability,
                        help="share of crops blurred as if upsampled from a coarser image")
    parser.add_argument("--lowres-min", type=float, default=AugmentConfig.lowres_factor[0])
    parser.add_argument("--lowres-max", type=float, default=AugmentConfig.lowres_factor[1])
    parser.add_argument("--lowres-point", type=float, default=0.0,
                        help="share of low-resolution crops shrunk by point sampling, not by area")
    parser.add_argument("--lowres-sharpen", action="store_true",
                        help="unsharp-mask low-resolution crops as the predictor does (sharpen_enlarged)")
    parser.add_argument("--base-channels", type=int, default=12)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--backbone", default="resnest14d")
    parser.add_argument("--full-width", action="store_true", help="DeepCeNS: standard ResNeSt widths")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
