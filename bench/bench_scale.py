"""Scale-out measurements (docs/scale.md): seams and throughput of the chunked path.

``seams``: an N×N mosaic (default 8192²) of DSB2018 val fluorescence images (256² crops,
flipped/rotated for variety), written to OME-Zarr, segmented chunked (chunks of 1024, a local
cluster of several worker processes) and in one piece; the two label images are matched
object for object (AP@0.9 between them) and both scored against the mosaic's ground truth.

``scale``: an N×N mosaic (default 32768²) segmented chunked on a local cluster of 2 worker
processes (peak RSS of each worker from ``getrusage``), against one process segmenting a
4096² crop in one piece (MP/s each).

    .venv/bin/python bench/bench_scale.py seams --size 8192 --workers 2
    .venv/bin/python bench/bench_scale.py scale --size 32768 --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VAL = Path("/work/shared/data/dsb2018/val")
CELL = 256


def fluorescence_cells(val: Path = VAL) -> list[tuple[np.ndarray, np.ndarray]]:
    """256² (image, labels) crops of the grey, dark-background val images."""
    from napari_deepcens.io.images import read_image, read_labels

    cells = []
    for sample in sorted(p for p in val.iterdir() if p.is_dir()):
        image, labels = read_image(sample / "image.png"), read_labels(sample / "labels.png")
        if image.ndim == 3:
            if not np.array_equal(image[..., 0], image[..., 1]):
                continue
            image = image[..., 0]
        if min(image.shape) < CELL or np.median(image) > 100:
            continue
        cells.append((image[:CELL, :CELL].astype(np.uint8), labels[:CELL, :CELL]))
    return cells


def write_mosaic(path: Path, size: int, cells, with_labels: bool = False, seed: int = 0):
    """The mosaic into an OME-Zarr (row of cells by row of cells), and optionally its labels."""
    import zarr

    from napari_deepcens.scale.zarr_out import create_store, downsample_chunk, downsample_tasks

    create_store(path, (size, size), np.uint8, [], 1024, "mosaic")
    arr = zarr.open_array(str(path), path="0", mode="r+")
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.int32) if with_labels else None
    offset = 0
    for y in range(0, size, CELL):
        row = np.zeros((CELL, size), np.uint8)
        for x in range(0, size, CELL):
            image, labels = cells[rng.integers(len(cells))]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            image, labels = np.rot90(image, k), np.rot90(labels, k)
            if flip:
                image, labels = image[:, ::-1], labels[:, ::-1]
            row[:, x : x + CELL] = image
            if gt is not None:
                from skimage.segmentation import relabel_sequential

                seq = relabel_sequential(labels)[0]
                gt[y : y + CELL, x : x + CELL] = np.where(seq > 0, seq + offset, 0)
                offset += int(seq.max())
        arr[y : y + CELL, :] = row
    for tasks in downsample_tasks((size, size), 1024, [""]):  # the pyramid, as OME-Zarr has
        for group, level, iy, ix in tasks:
            downsample_chunk(path, group, level, iy, ix, 1024)
    return gt


def worker_peaks(client) -> dict[str, float]:
    """Peak resident memory of every worker process, GB (Linux ru_maxrss is in KiB)."""
    return {w: v / 1024**2 for w, v in client.run(
        lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).items()}


def chunked(path: Path, out: Path, workers: int, chunk: int, memory_limit: str, estimate: bool = False):
    from distributed import Client

    from napari_deepcens.scale.chunked import ModelSpec, segment_chunked
    from napari_deepcens.scale.cluster import local_processes
    from napari_deepcens.scale.lazy import open_lazy

    cluster = local_processes(workers, 1, memory_limit)
    client = Client(cluster)
    try:
        client.run(lambda: None)
        started = time.perf_counter()
        result = segment_chunked(client, open_lazy(path), out, ModelSpec("unet", device="cpu"),
                                 chunk=chunk, estimate=estimate, table=out.with_suffix(".csv"))
        seconds = time.perf_counter() - started
        peaks = worker_peaks(client)
    finally:
        client.close()
        cluster.close()
    return result, seconds, peaks


def sparse_match(gt: np.ndarray, pred: np.ndarray):
    """:class:`ImageMatch` of two large label images without the dense (n_gt × n_pred) IoU
    matrix of ``evaluation.metrics`` (25k × 25k objects would need > 15 GB)."""
    from napari_deepcens.evaluation.metrics import ImageMatch

    g, p = gt.ravel(), pred.ravel()
    both = (g > 0) & (p > 0)
    width = np.int64(p.max()) + 1
    keys, overlap = np.unique(g[both].astype(np.int64) * width + p[both], return_counts=True)
    gi, pi = keys // width, keys % width
    area_g, area_p = np.bincount(g), np.bincount(p)
    iou = overlap / (area_g[gi] + area_p[pi] - overlap)
    labels_g = np.flatnonzero(area_g[1:]) + 1
    best = np.zeros(area_g.size)
    np.maximum.at(best, gi, iou)
    union = np.count_nonzero((g > 0) | (p > 0))
    return ImageMatch(best[labels_g], int(np.count_nonzero(area_p[1:])),
                      float(both.sum() / union) if union else 1.0), labels_g


def mismatches(whole: np.ndarray, chunked_labels: np.ndarray, size: int, chunk: int) -> dict:
    """Where the one-piece objects without a chunked match (IoU > 0.9) lie: near a chunk seam,
    near an edge of the one-piece path's own 1024-px tiles (where it blends tiles), or neither."""
    from scipy import ndimage as ndi

    from napari_deepcens.inference.tiling import tile_starts

    match, labels = sparse_match(whole, chunked_labels)
    bad = labels[match.best_gt <= 0.9]
    if bad.size == 0:
        return {"count": 0}
    centres = np.array(ndi.center_of_mass(whole > 0, whole, bad))
    starts = np.array(tile_starts(size, 1024, 64, 16))
    tile_edges = np.unique(np.r_[starts, starts + 1024])
    tile_edges = tile_edges[(tile_edges > 0) & (tile_edges < size)]
    seams = np.arange(chunk, size, chunk)

    def near(lines: np.ndarray, px: int) -> np.ndarray:
        return (np.abs(centres[:, :, None] - lines[None, None, :]) < px).any(axis=(1, 2))

    at_seam, at_tile = near(seams, 48), near(tile_edges, 48)
    return {"count": int(bad.size), "within_48px_of_a_chunk_seam": int(at_seam.sum()),
            "within_48px_of_a_one_piece_tile_edge": int(at_tile.sum()),
            "neither": int((~at_seam & ~at_tile).sum())}


def run_seams(args) -> dict:
    import zarr

    from napari_deepcens.evaluation.metrics import summarize
    from napari_deepcens.inference.predictor import Predictor

    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.tmp))
    try:
        gt = write_mosaic(work / "mosaic.zarr", args.size, fluorescence_cells(), with_labels=True)
        result, seconds, peaks = chunked(work / "mosaic.zarr", work / "out.zarr", args.workers,
                                         args.chunk, args.memory_limit)
        labels_chunked = zarr.open_array(str(result.output), path="labels/nucleus/0", mode="r")[:]
        image = zarr.open_array(str(work / "mosaic.zarr"), path="0", mode="r")[:]
        predictor = Predictor.from_name("unet", device="cpu")
        started = time.perf_counter()
        labels_whole = predictor.segment(image, estimate=False)
        whole_seconds = time.perf_counter() - started
        np.save(work / "whole.npy", labels_whole)
        between = sparse_match(labels_whole, labels_chunked)[0]
        where = mismatches(labels_whole, labels_chunked, args.size, args.chunk)
        return {
            "size": args.size, "chunk": args.chunk, "halo": result.halo, "workers": args.workers,
            "objects_chunked": int(labels_chunked.max()), "objects_whole": int(labels_whole.max()),
            "objects_gt": int(gt.max()),
            "AP@0.9_chunked_vs_whole": between.ap(0.9), "AP@0.5_chunked_vs_whole": between.ap(0.5),
            "gt_chunked": summarize([sparse_match(gt, labels_chunked)[0]]),
            "gt_whole": summarize([sparse_match(gt, labels_whole)[0]]),
            "seconds_chunked": seconds, "seconds_whole": whole_seconds,
            "peak_worker_GB": peaks, "mismatches_at_IoU_0.9": where,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def one_piece(path: str, side: int) -> tuple[float, float]:
    """In a fresh process: segment a side² crop in one piece; (seconds, peak RSS GB)."""
    import zarr

    from napari_deepcens.inference.predictor import Predictor

    crop = zarr.open_array(path, path="0", mode="r")[:side, :side]
    predictor = Predictor.from_name("unet", device="cpu")
    predictor.segment(crop[:1024, :1024], estimate=False)  # warm-up
    started = time.perf_counter()
    predictor.segment(crop, estimate=False)
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_scale(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.tmp))
    try:
        write_mosaic(work / "mosaic.zarr", args.size, fluorescence_cells())
        result, seconds, peaks = chunked(work / "mosaic.zarr", work / "out.zarr", args.workers,
                                         args.chunk, args.memory_limit)
        mp = args.size**2 / 1e6
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            single, single_peak = pool.submit(one_piece, str(work / "mosaic.zarr"), 4096).result()
        return {
            "size": args.size, "chunk": args.chunk, "halo": result.halo, "workers": args.workers,
            "objects": result.counts, "seconds_chunked": seconds, "MP_per_s_chunked": mp / seconds,
            "network_and_postprocess_seconds_summed_over_blocks": result.block_seconds,
            "peak_worker_GB": peaks, "memory_limit": args.memory_limit,
            "single_process_4096_seconds": single, "MP_per_s_single_process": 4096**2 / 1e6 / single,
            "single_process_peak_GB": single_peak,
            "client_peak_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("seams", "scale"))
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB", help="per worker (Dask pauses/kills above it)")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: the system's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.size = args.size or (8192 if args.what == "seams" else 32768)
    result = run_seams(args) if args.what == "seams" else run_scale(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
