"""``deepcens``: segment, train and evaluate from the command line.

The CLI calls the same API as the napari widget. User mistakes (a missing file, a weights file
for another model) end with one clear ``error:`` line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DeepCeNSError

log = logging.getLogger("napari_deepcens")


def _number(kind, low: float | None = None, multiple: int | None = None, what: str = "a number"):
    """An argparse type: ``kind`` (int/float), finite, ≥ ``low``, a multiple of ``multiple``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{text} is too small: expected {what}")
        if multiple and value % multiple:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    return parse


_POSITIVE = _number(int, 1, what="a whole number ≥ 1")
_COUNT = _number(int, 0, what="a whole number ≥ 0")
#: Nuclei narrower than this are not segmentable: the image would be enlarged over 14× to
#: the network's working size, for minutes, and come back as specks.
_DIAMETER = _number(float, 1.5, what="a diameter in pixels, 1.5 or more: the width of one "
                                     "nucleus (leave --diameter out to estimate it)")
_TILE = _number(int, 128, 16, what="a tile size in pixels: a multiple of 16, at least 128")
_CHUNK = _number(int, 64, 32, what="a chunk size in pixels: a multiple of 32, at least 64")
_CROP = _number(int, 64, 32, what="a crop size in pixels: a multiple of 32, at least 64")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images into instance label TIFFs (large images "
                       "and OME-Zarr: chunked, into OME-Zarr labels + an object table)")
    p.add_argument("images", nargs="+", type=Path,
                   help="image files (TIFF, PNG, JPEG), OME-Zarr stores, folders or glob patterns; "
                        "a time-lapse or z-stack TIFF is segmented plane by plane into one "
                        "labels stack")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--link", action="store_true",
                   help="stacks: one label per object across planes (3-D objects along Z, "
                        "else tracks along T): an object takes the label of the one it "
                        "overlaps most in the previous plane (IoU ≥ 0.1), or in the plane "
                        "before if it was missed there (see --link-gap)")
    p.add_argument("--link-gap", type=_COUNT, default=None, metavar="PLANES",
                   help="with --link: planes an object may be missed in and keep its label "
                        "(gap closing; default 1 for tracks along T, 0 along Z or an "
                        "unnamed axis)")
    p.add_argument("--channel", type=_COUNT, default=None,
                   help="multichannel TIFFs (ImageJ hyperstacks): the nuclear stain's channel, "
                        "from 0; also picks one colour of an RGB image")
    p.add_argument("--cyto-channel", type=_COUNT, default=None,
                   help="two-stain models (--model cells): the cytoplasm stain's channel, from "
                        "0, with --channel for the nuclear one (default for RGB images: red "
                        "nuclei, green cytoplasm)")
    p.add_argument("--model", default="unet",
                   help="unet (default), centerunet, deepcens (nuclei), or cells (cells and "
                        "nuclei from a nuclear + a cytoplasm stain)")
    p.add_argument("--weights", type=Path, help="weights file (default: the bundled ones)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--diameter", type=_DIAMETER, default=None,
                   help="typical object diameter in pixels (default: estimated per image; "
                        "images whose objects are not recognised run as they are)")
    p.add_argument("--fg-threshold", type=float, help="foreground probability threshold")
    p.add_argument("--seed-threshold", type=float, help="watershed seed threshold")
    p.add_argument("--score-threshold", type=float,
                   help="objects scoring below this are dropped (detections; U-Net objects "
                        "when its weights carry an object scorer)")
    p.add_argument("--min-size", type=_COUNT, help="smallest object kept, in pixels")
    p.add_argument("--outline-threshold", type=float,
                   help="two-stain models: where a cell's outline is drawn on the cytoplasm "
                        "stain, from the background (0) to the cell's own brightness (1); 0 "
                        "keeps the network's outline")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the network over four flips of the "
                        "image (four times slower; better masks, most for deepcens)")
    p.add_argument("--denoise", choices=("auto", "yes", "no"), default="auto",
                   help="non-local means before segmenting: auto (default) for images noisier "
                        "than any the models were trained on, yes for every image, no for none")
    p.add_argument("--tile", type=_TILE, default=1024, help="tile size in pixels (default 1024)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose output exists (default: skip them)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on an existing dask.distributed cluster (e.g. tcp://host:8786; "
                        "default: a local cluster on this machine)")
    p.add_argument("--workers", type=_COUNT, default=0,
                   help="local cluster: this many worker processes (default: threads in this process)")
    p.add_argument("--chunk", type=_CHUNK, default=1024,
                   help="chunk size of the chunked path (default 1024)")
    p.add_argument("--halo", type=_COUNT, default=None,
                   help="pixels of context around each chunk (default: 4 object diameters, ≥ 128)")
    p.add_argument("--chunked-above", type=float, default=64.0, metavar="MP",
                   help="TIFFs above this many megapixels, and Zarr stores, go chunked (default "
                        "64; PNG/JPEG always run in memory)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model on annotated folders")
    p.add_argument("data", nargs="+", type=Path,
                   help="dataset folders of <id>/image.* + <id>/labels.*, or COCO instance JSON "
                        "files (several classes; DeepCeNS)")
    p.add_argument("-o", "--output", type=Path, required=True, help="weights file to write")
    p.add_argument("--model", default="unet",
                   help="unet (default), centerunet or deepcens; cells fine-tunes the bundled "
                        "cells + nuclei DeepCeNS")
    p.add_argument("--val", type=Path, nargs="*", default=[],
                   help="validation folders: the best epoch on them is kept")
    p.add_argument("--init", type=Path, help="weights to fine-tune from")
    p.add_argument("--epochs", type=_POSITIVE, default=40)
    p.add_argument("--steps-per-epoch", type=_POSITIVE, default=250)
    p.add_argument("--batch-size", type=_POSITIVE, default=8)
    p.add_argument("--lr", type=_number(float, 1e-12, what="a positive learning rate"), default=2e-3)
    p.add_argument("--crop", type=_CROP, default=160, help="training crop size in pixels")
    p.add_argument("--base-channels", type=_POSITIVE, default=12, help="U-Net width (new models)")
    p.add_argument("--depth", type=_number(int, 1, what="a depth from 1 to 6"), default=4,
                   help="U-Net depth (new models)")
    p.add_argument("--backbone", default="resnest14d",
                   help="DeepCeNS backbone, a timm ResNeSt name (new models; default resnest14d)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="DeepCeNS input channels: 1 grey, 3 colour stains (default: 3 for COCO data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=_COUNT, default=0,
                   help="processes preparing training crops (default 0; a GPU wants several)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted labels against ground truth")
    p.add_argument("gt_dir", type=Path, help="dataset folder with <id>/labels.*")
    p.add_argument("pred_dir", type=Path, help="folder of <id>_labels.tif predictions")
    p.add_argument("--json", type=Path, help="also write the metrics as JSON here")


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose post-processing thresholds on validation data")
    p.add_argument("weights", type=Path, help="weights file to tune")
    p.add_argument("val", type=Path, nargs="+", help="validation dataset folders")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="new weights file (the input is never modified)")
    p.add_argument("--device", default="auto")
    p.add_argument("--confirm", type=_COUNT, default=3,
                   help="run the N best threshold sets again end to end, each with its own size "
                        "estimate, and keep the best (default 3; each costs one pass over val)")
    p.add_argument("--fit-scorer", type=Path, nargs="+", metavar="DATA_DIR", default=[],
                   help="U-Net: first fit its object scorer on these annotated folders (the "
                        "training images, not the validation ones), which learns which of the "
                        "network's objects annotators would not draw")
    p.add_argument("--working-diameter", type=float, default=None, metavar="PX",
                   help="diameter (pixels) objects are zoomed to before the network runs, "
                        "within ×0.5–×2 of the training median (0: the median itself); the "
                        "thresholds are then tuned at that size. Default: keep the file's")
    p.add_argument("--sharpen-enlarged", choices=("yes", "no"), default=None,
                   help="whether images enlarged ×2.5 or more (nuclei of a few pixels) are "
                        "unsharp-masked first: measure it on val shrunk by an area filter "
                        "(bench/eval_scales.py --antialias). Default: keep the file's")
    p.add_argument("--stain-outlines", metavar="CLASS:CHANNEL", default=None,
                   help="multi-class DeepCeNS: move the outlines of CLASS onto the stain of input "
                        "channel CHANNEL after the network (e.g. cell:1, the cytoplasm of the "
                        "two-stain model), with its threshold tuned beside the others; none: "
                        "off. Default: keep the file's")
    p.add_argument("--scorer-zooms", type=float, nargs="+", default=None, metavar="ZOOM",
                   help="magnifications, from 0.1 to 4, the --fit-scorer images are shown at "
                        "(default 1 0.5 0.25: small nuclei look different to the scorer too)")


def _add_napari(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("napari", help="open napari with the widget docked and an image loaded")
    p.add_argument("image", nargs="?", type=Path,
                   help="image to open (default: the bundled fluorescence sample)")
    p.add_argument("--no-run", action="store_true", help="do not start segmenting right away")
    p.add_argument("--channel", type=_COUNT, default=None,
                   help="multichannel TIFFs: the nuclear stain's channel, from 0")
    p.add_argument("--cyto-channel", type=_COUNT, default=None,
                   help="the cytoplasm stain's channel: opens it as a second layer and picks "
                        "the cells + nuclei model")
    p.add_argument("--model", default=None,
                   help="unet (default), centerunet, deepcens or cells")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepcens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tune(sub)
    _add_napari(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        if args.command == "segment":
            from .commands import run_segment

            return run_segment(args)
        if args.command == "train":
            from .commands import run_train

            return run_train(args)
        if args.command == "tune":
            from .commands import run_tune

            return run_tune(args)
        if args.command == "napari":
            from .commands import run_napari

            return run_napari(args)
        from .commands import run_evaluate

        return run_evaluate(args)
    except DeepCeNSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder should be
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: give the object diameter so large images can be "
              "shrunk, or use the chunked path (--chunked-above 0 for TIFF)", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line; -v shows the traceback
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            print("error: the GPU ran out of memory: try --device cpu, a smaller --tile, or "
                  "close other programs using the GPU", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (this is a bug in napari-deepcens; "
              "run again with -v for the details and report them)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
