"""Time-lapses: the stack path (one object size for all frames) against frame by frame.

Each grey val image becomes a synthetic time-lapse of ``--frames`` frames: the field drifts
(3 px right, 2 px down a frame) and bleaches (×0.9 a frame) on a camera offset, as uint16.
Both ways are scored per frame against the drifted annotation (AP@0.5, DSB), timed, and the
spread of the object size chosen over the frames is printed (the stack path chooses once).
With the frames linked (``--link``, postprocess/link.py), it also prints how often a nucleus
found in two consecutive frames (IoU ≥ 0.5 with its annotation in both) keeps its label, and
how often a label jumps to another nucleus; and, for gap closing (``--link-gap``), how often a
nucleus whose label is missing from one frame has it again in the next (``--drop`` deletes
that share of the predicted objects at random first, to make such misses).

    .venv/bin/python bench/bench_stack.py ../shared/data/dsb2018/val --movies 10 --frames 6
    .venv/bin/python bench/bench_stack.py ../shared/data/dsb2018/val --link --drop 0.1 --link-gap 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def movie(image: np.ndarray, labels: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    grey = (image[..., 0] if image.ndim == 3 else image).astype(np.float32)
    stack, truth = [], []
    for t in range(frames):
        shift = (2 * t, 3 * t)
        stack.append(np.roll(grey, shift, axis=(0, 1)) * 40 * 0.9**t + 100)
        truth.append(np.roll(labels, shift, axis=(0, 1)))
    return np.stack(stack).astype(np.uint16), np.stack(truth)


def matched(truth: np.ndarray, pred: np.ndarray) -> dict[int, int]:
    """Annotation label → predicted label, for pairs with IoU ≥ 0.5 (one to one)."""
    both = (truth > 0) & (pred > 0)
    a, b = truth[both].astype(np.int64), pred[both].astype(np.int64)
    width = int(b.max(initial=0)) + 1
    pairs, inter = np.unique(a * width + b, return_counts=True)
    ta, pb = pairs // width, pairs % width
    area_t, area_p = np.bincount(truth.ravel()), np.bincount(pred.ravel())
    iou = inter / (area_t[ta] + area_p[pb] - inter)
    return {int(t): int(p) for t, p, v in zip(ta, pb, iou, strict=True) if v >= 0.5}


def identities(truth: np.ndarray, linked: np.ndarray) -> tuple[int, ...]:
    """(nuclei found in two consecutive frames, of those keeping their label, labels that
    move to another nucleus from one frame to the next; nuclei found in frames t and t+2
    whose label is missing from t+1, of those with the same label in t+2, labels that come
    back on another nucleus after such a gap)."""
    pairs = kept = jumps = gaps = bridged = gap_jumps = 0
    found = [matched(truth[t], linked[t]) for t in range(len(truth))]
    for t in range(len(truth) - 1):
        now, nxt = found[t], found[t + 1]
        owner = {p: g for g, p in nxt.items()}
        for g, p in now.items():
            if g in nxt:
                pairs += 1
                kept += nxt[g] == p
            jumps += p in owner and owner[p] != g
            if t + 2 < len(truth) and g not in nxt and p not in owner:
                later = {q: h for h, q in found[t + 2].items()}
                if g in found[t + 2]:
                    gaps += 1
                    bridged += found[t + 2][g] == p
                gap_jumps += p in later and later[p] != g
    return pairs, kept, jumps, gaps, bridged, gap_jumps


def main() -> None:
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.inference.stack import segment_stack
    from napari_deepcens.io.images import read_image, read_labels
    from napari_deepcens.io.layout import list_samples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("val", type=Path)
    ap.add_argument("--model", default="unet")
    ap.add_argument("--movies", type=int, default=10)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--link", action="store_true", help="also link the frames and score identities")
    ap.add_argument("--link-gap", type=int, default=None, help="gap closing (default: the CLI's)")
    ap.add_argument("--drop", type=float, default=0.0,
                    help="share of predicted objects deleted at random before linking")
    args = ap.parse_args()

    predictor = Predictor.from_name(args.model, device="cpu")
    samples = [s for s in list_samples(args.val) if s.modality == "fluorescence"][: args.movies]
    both = {"stack": [], "frames": []}
    seconds = {"stack": 0.0, "frames": 0.0}
    spread = []
    tracks = np.zeros(6, np.int64)
    rng = np.random.default_rng(0)
    for s in samples:
        stack, truth = movie(read_image(s.image), read_labels(s.labels), args.frames)
        t0 = time.perf_counter()
        result = segment_stack(predictor, stack)
        seconds["stack"] += time.perf_counter() - t0
        labels = result.stacked()["nucleus"][0]
        if args.link:
            from napari_deepcens.postprocess.link import LINK_GAP, link_planes

            pieces = labels.copy()
            if args.drop:  # misses, made on purpose
                ids = np.unique(pieces)[1:]
                pieces[np.isin(pieces, ids[rng.random(ids.size) < args.drop])] = 0
            gap = LINK_GAP if args.link_gap is None else args.link_gap  # time-lapses: as the CLI
            tracks += identities(truth, link_planes(pieces, max_gap=gap))
        both["stack"] += [match_image(truth[t], labels[t]) for t in range(args.frames)]
        t0 = time.perf_counter()
        sizes = []
        for t in range(args.frames):
            raw = predictor.predict(stack[t])
            sizes.append(raw.diameter or 0.0)
            both["frames"].append(match_image(truth[t], predictor.instances(raw).labels))
        seconds["frames"] += time.perf_counter() - t0
        spread.append(max(sizes) / max(min(sizes), 1e-6))
        print(f"{s.id[:8]} {stack.shape}: stack diameter {result.diameter or 0:.1f} px, "
              f"frame by frame {min(sizes):.1f}–{max(sizes):.1f} px", flush=True)
    frames = len(samples) * args.frames
    for way in ("stack", "frames"):
        m = summarize(both[way])
        print(f"{way:6s}: AP@0.5 {m['AP@0.5']:.3f}  DSB {m['DSB']:.3f}  "
              f"{seconds[way] / frames:.2f} s/frame  ({frames} frames)")
    print(f"frame-by-frame size spread (max/min per movie): median {np.median(spread):.3f}, "
          f"max {max(spread):.3f}")
    if args.link:
        pairs, kept, jumps, gaps, bridged, gap_jumps = (int(v) for v in tracks)
        print(f"linked: {kept} of {pairs} nuclei found in consecutive frames keep their label "
              f"({kept / max(pairs, 1):.1%}); {jumps} labels jump to another nucleus")
        print(f"across a missing frame: {bridged} of {gaps} keep their label "
              f"({bridged / max(gaps, 1):.1%}); {gap_jumps} labels come back on another nucleus")


if __name__ == "__main__":
    main()
