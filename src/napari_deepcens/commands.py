"""What each ``deepcens`` sub-command does, given its parsed arguments.

Kept apart from :mod:`napari_deepcens.cli` so that ``deepcens --help`` answers without
importing torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

from .errors import DeepCeNSError
from .wording import count_of, counts_of

log = logging.getLogger(__name__)


def output_stem(path: Path) -> str:
    """Name of an image's outputs: its stem, or its folder's name for dataset-layout files
    (``<id>/image.png`` → ``<id>``), so a dataset's images do not all become ``image``."""
    stem = path.parent.name if path.stem == "image" and path.parent.name else path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem  # x.ome.zarr, x.ome.tif


def _output_paths(outdir: Path, stem: str, names: tuple[str, ...], chunked: bool,
                  boxes: bool = False) -> list[Path]:
    """What segmenting one image writes (labels last); all of them existing means it is done."""
    if chunked:
        return [outdir / f"{stem}_objects.csv", outdir / f"{stem}.zarr"]
    prefixes = [f"{stem}_{n}" if len(names) > 1 else stem for n in names]
    return ([outdir / f"{p}_boxes.csv" for p in prefixes] if boxes else []) + [
        outdir / f"{p}_labels.tif" for p in prefixes]


def run_segment(args: argparse.Namespace) -> int:
    from .inference.predictor import Predictor
    from .models.registry import MODELS
    from .postprocess.params import PostprocessParams
    from .scale.fanout import expand_inputs, needs_chunks

    if getattr(args, "link_gap", None) is not None and not getattr(args, "link", False):
        raise DeepCeNSError("--link-gap sets the gap closing of --link: add --link")
    images = expand_inputs(args.images, outputs=args.output)
    stems = [output_stem(p) for p in images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise DeepCeNSError(f"several inputs would write the same output name: {duplicates}")
    predictor = Predictor.from_name(args.model, weights=args.weights, device=args.device)
    if getattr(args, "cyto_channel", None) is not None and predictor.in_channels == 1:
        raise DeepCeNSError("--cyto-channel is for two-stain models (--model cells); this model "
                            "reads one stain: choose it with --channel")
    overrides = {k: v for k, v in {"fg_threshold": args.fg_threshold,
                                   "seed_threshold": args.seed_threshold,
                                   "score_threshold": args.score_threshold,
                                   "min_size": args.min_size,
                                   "outline_threshold": getattr(args, "outline_threshold", None),
                                   }.items() if v is not None}
    if "outline_threshold" in overrides and not predictor.info.stain_outlines:
        raise DeepCeNSError("--outline-threshold is for models that outline cells on a stain "
                            "(--model cells); this one draws its outlines from the network alone")
    try:
        PostprocessParams(**{**predictor.default_params().to_dict(), **overrides})
    except ValueError as exc:
        raise DeepCeNSError(str(exc)) from exc
    if args.output.exists() and not args.output.is_dir():
        raise DeepCeNSError(f"output {args.output} is a file: -o takes a folder")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeepCeNSError(f"cannot create the output folder {args.output}: "
                            f"{exc.strerror or exc}") from exc
    if not os.access(args.output, os.W_OK):  # say so before segmenting anything
        raise DeepCeNSError(f"cannot write to the output folder {args.output} (read-only)")
    above = int(getattr(args, "chunked_above", 64.0) * 1e6)
    failures: list[tuple[Path, str]] = []
    small, large = [], []
    for path, stem in zip(images, stems, strict=True):
        chunked = needs_chunks(path, above)
        targets = _output_paths(args.output, stem, predictor.class_names, chunked,
                                MODELS[predictor.model_name].boxes)
        source = path.resolve()
        if any(t.resolve() == source or source.is_relative_to(t.resolve())
               or t.resolve().is_relative_to(source) for t in targets):
            failures.append((path, f"its output {targets[-1].name} in {args.output} would replace "
                                   "the image itself: choose another output folder (-o)"))
            continue
        present = [t for t in targets if t.exists()]
        if present and not args.overwrite:
            if len(present) == len(targets):
                tqdm.write(f"skip {path.name}: {targets[-1].name} exists (--overwrite to redo)")
            else:  # half of an interrupted run, or of a run with another model: never mixed
                missing = [t.name for t in targets if not t.exists()]
                failures.append((path, f"{present[0].name} exists but {', '.join(missing)} does "
                                       "not (an interrupted run, or one with another model): "
                                       "--overwrite to redo this image"))
            continue
        (large if chunked else small).append((path, stem))
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", 0)
    if small and not (scheduler or workers > 1 or large):
        _segment_here(args, predictor, overrides, small, failures)
    elif small or large:
        _segment_on_dask(args, predictor, overrides, small, large, failures)
    if failures:
        print(f"{len(failures)} of {len(images)} images failed:", file=sys.stderr)
        for path, why in failures:
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


def with_progress_bar(gen, desc: str, unit: str):
    """Drain a (done, total) progress generator behind a tqdm bar; return its value."""
    with tqdm(desc=desc, unit=unit, leave=False) as bar:
        while True:
            try:
                done, total = next(gen)
            except StopIteration as stop:
                return stop.value
            bar.total, bar.n = total, done
            bar.refresh()


def denoise_choice(args) -> bool | None:
    """``--denoise``: auto → ``None`` (noisy images only), yes → ``True``, no → ``False``."""
    from .inference.denoise import CHOICES

    return CHOICES[getattr(args, "denoise", "auto")]


def _segment_here(args, predictor, overrides: dict, jobs: list, failures: list) -> None:
    """Small images one after the other in this process, with a progress bar per image."""
    from .io.export import write_segmentation
    from .io.images import check_stains, read_stack
    from .postprocess.params import PostprocessParams

    for path, stem in jobs:
        try:
            stack = read_stack(path, getattr(args, "channel", None),
                               getattr(args, "cyto_channel", None))
            check_stains(stack, predictor.in_channels, path.name)
            if stack.leading:
                _segment_stack_here(args, predictor, overrides, path, stem, stack)
                continue
            image = stack.data
            gen = predictor.predict_iter(image, diameter=args.diameter, tile=args.tile,
                                         tta=getattr(args, "tta", False),
                                         denoise=denoise_choice(args))
            raw = with_progress_bar(gen, path.name, "tile")
            params = PostprocessParams(**{**predictor.default_params(raw.scale).to_dict(), **overrides})
            seg = predictor.instances(raw, params)
            written = write_segmentation(args.output, stem, seg, overwrite=args.overwrite)
            counts = counts_of({n: int(p.labels.max()) for n, p in seg.by_class().items()})
            size = (f"diameter {raw.diameter:.1f} px{' estimated' if raw.estimated else ''}"
                    if raw.diameter else "object size not recognised: image as it is"
                    if raw.size_unrecognised else "image as it is")
            if raw.meta.get("denoised"):
                size += ", denoised"
            name = path.name if stem == path.stem else f"{stem} ({path.name})"
            tqdm.write(f"{name}: {counts} ({size}) -> {written[-1].parent}")
            if args.diameter and not seg.labels.any():
                tqdm.write(f"  nothing found at a diameter of {args.diameter:g} px: is that the "
                           "objects' size? (leave --diameter out to estimate it)")
        except DeepCeNSError as exc:
            failures.append((path, str(exc)))
            tqdm.write(f"error: {path.name}: {exc}", file=sys.stderr)
        except MemoryError:
            why = ("out of memory: a stack this large needs its planes as separate files, or "
                   "crop it" if path.suffix.lower() in (".tif", ".tiff") else "out of memory")
            failures.append((path, why))
            tqdm.write(f"error: {path.name}: {why}", file=sys.stderr)
        except Exception as exc:  # a bug on one image must not stop the others
            log.debug("unexpected error on %s", path, exc_info=True)
            failures.append((path, f"unexpected {type(exc).__name__}: {exc} (a bug: rerun with "
                                   "-v for details)"))
            tqdm.write(f"error: {path.name}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)


def _segment_stack_here(args, predictor, overrides: dict, path: Path, stem: str, stack) -> None:
    """A time-lapse or z-stack, plane by plane (inference/stack.py), into one labels stack."""
    from .inference.stack import segment_stack_iter
    from .io.export import write_stack_segmentation

    gen = segment_stack_iter(predictor, stack.data, rgb=stack.rgb, diameter=args.diameter,
                             params=dict(overrides) or None, tta=getattr(args, "tta", False),
                             denoise=denoise_choice(args), tile=args.tile)
    planes = math.prod(stack.data.shape[: len(stack.leading)])
    result = with_progress_bar(gen, f"{path.name} ({planes} planes)", "tile")
    link = getattr(args, "link", False)
    objects: dict[str, int] = {}
    written = write_stack_segmentation(args.output, stem, result, stack.axes,
                                       overwrite=args.overwrite, link=link, objects=objects,
                                       link_gap=getattr(args, "link_gap", None))
    counts = counts_of(result.counts())
    if link:  # the pieces of all planes, and the objects they form
        counts = ", ".join(f"{result.counts()[c]} {c} pieces linked into {count_of(n, 'object')}"
                           for c, n in objects.items())
    size = (f"diameter {result.diameter:.1f} px{' estimated' if result.estimated else ''}"
            if result.diameter else "object size not recognised: planes as they are"
            if result.size_unrecognised else "planes as they are")
    if result.denoised:
        size += ", denoised"
    n_blank = len(result.blank)
    blank = f", {n_blank} blank plane{'s' if n_blank > 1 else ''} left empty" if n_blank else ""
    name = path.name if stem == path.stem else f"{stem} ({path.name})"
    linked = ""
    tqdm.write(f"{name}: {planes} planes (axes {stack.axes}): {counts} ({size}{blank}{linked}) "
               f"-> {written[-1].parent}")
    if args.diameter and not any(result.counts().values()):
        tqdm.write(f"  nothing found at a diameter of {args.diameter:g} px: is that the "
                   "objects' size? (leave --diameter out to estimate it)")


def _segment_on_dask(args, predictor, overrides: dict, small: list, large: list, failures: list) -> None:
    """Small files fanned out one task each, then large ones chunked, on one Dask client."""
    from .scale.chunked import ModelSpec, segment_chunked_iter
    from .scale.cluster import dask_client
    from .scale.fanout import FileJob, run_files
    from .scale.lazy import open_lazy, select_channel

    spec = ModelSpec(args.model, str(args.weights) if args.weights else None, args.device,
                     tta=getattr(args, "tta", False), denoise=denoise_choice(args))
    spec.share(predictor)
    with dask_client(args.scheduler, args.workers) as client:
        if small:
            jobs = [FileJob(str(p), stem, str(args.output), args.diameter, args.tile,
                            tuple(overrides.items()), args.overwrite, getattr(args, "channel", None),
                            getattr(args, "link", False), getattr(args, "cyto_channel", None),
                            getattr(args, "link_gap", None))
                    for p, stem in small]
            with tqdm(total=len(jobs), desc="images", unit="image", leave=False) as bar:
                for path, ok, message in run_files(client, spec, jobs):
                    bar.update()
                    if ok:
                        tqdm.write(message)
                    else:
                        failures.append((Path(path), message))
                        tqdm.write(f"error: {Path(path).name}: {message}", file=sys.stderr)
        for path, stem in large:
            try:
                if getattr(args, "cyto_channel", None) is not None:
                    raise DeepCeNSError("--cyto-channel works on images that fit in memory; "
                                        "save the nuclear and cytoplasm stains as an RGB "
                                        "(red, green) image to segment a file this large")
                image = open_lazy(path)
                if getattr(args, "channel", None) is not None:  # the nuclear stain alone
                    image = select_channel(image, args.channel)
                if predictor.in_channels > 1 and not image.rgb:
                    raise DeepCeNSError(f"{path.name} is one stain: this model needs a nuclear "
                                        "and a cytoplasm stain (red and green of an RGB image)")
                image.name = stem
                gen = segment_chunked_iter(
                    client, image, args.output / f"{stem}.zarr", spec, predictor=predictor,
                    chunk=args.chunk, halo=args.halo, diameter=args.diameter,
                    params=overrides,
                    table=args.output / f"{stem}_objects.csv", overwrite=args.overwrite)
                result = with_progress_bar(gen, path.name, "task")
                counts = counts_of(result.counts)
                tqdm.write(f"{path.name}: {counts} in {result.seconds:.0f} s ({image.shape[0]}×"
                           f"{image.shape[1]}, chunks of {result.chunk} + {result.halo} px halo"
                           f"{', denoised' if result.denoised else ''}) -> {result.output}")
            except DeepCeNSError as exc:
                failures.append((path, str(exc)))
                tqdm.write(f"error: {path.name}: {exc}", file=sys.stderr)
            except (OSError, RuntimeError, ValueError) as exc:  # e.g. a corrupt chunk deep in a store
                log.debug("chunked run of %s failed", path, exc_info=exc)
                failures.append((path, f"unexpected error ({type(exc).__name__}): {exc}"))
                tqdm.write(f"error: {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def load_training_data(paths: list[Path], channels: int,
                       classes: tuple[str, ...] | None = None) -> list:
    """Annotated images from dataset folders and COCO instance JSON files. ``classes``: the
    model's, which COCO categories are matched to by name (their ids differ between tools)."""
    from .training.dataset import load_coco, load_folder

    items = []
    for path in paths:
        if path.suffix.lower() == ".json":
            items.extend(load_coco(path, channels=channels, classes=classes))
        else:
            items.extend(load_folder(path, channels=channels))
    return items


def _several_classes(paths: list[Path]) -> bool:
    """Whether training data has several classes (COCO JSON or ``labels_<class>`` folders):
    such data (cells + nuclei) needs the colour channels, which grey conversion would mix."""
    from .io.layout import list_samples

    return any(p.suffix.lower() == ".json" or any(len(s.classes) > 1 for s in list_samples(p))
               for p in paths)


def _colour_data(paths: list[Path]) -> bool:
    """Whether the first training image is colour (several stains): a new multi-class model
    then reads each stain; grey data (phase contrast, one stain) gets a one-channel model."""
    from .io.images import read_image
    from .io.layout import list_samples

    path = paths[0]
    if path.suffix.lower() == ".json":
        try:
            first = path.parent / json.loads(path.read_text())["images"][0]["file_name"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return True  # load_coco says what is wrong with the file
    else:
        first = list_samples(path)[0].image
    image = read_image(first)
    return image.ndim == 3 and image.shape[-1] >= 3


def check_new_file(path: Path, what: str = "output", exists_ok: bool = False) -> None:
    """Fail early, before any work, if ``path`` cannot become a new file (nothing the user
    has is ever overwritten)."""
    if path.is_dir():
        raise DeepCeNSError(f"{what} {path} is a folder: give a file name")
    if path.exists() and not exists_ok:
        raise DeepCeNSError(f"{path} exists: choose a new file name for {what}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DeepCeNSError(f"cannot create {path}: {parent} is a file, not a folder")


def run_train(args: argparse.Namespace) -> int:
    from .models.registry import bundled_weights, get_preset
    from .models.weights import read_info
    from .training.augment import AugmentConfig
    from .training.loop import TrainConfig, train_iter

    check_new_file(args.output, exists_ok=True)  # an existing one only to resume, below
    checkpoint = args.output.with_name(args.output.name + ".ckpt")
    if args.output.exists() and (args.no_resume or not checkpoint.is_file()):
        raise DeepCeNSError(f"{args.output} exists: choose a new file name (weights are never "
                            "overwritten; an interrupted run resumes from its .ckpt beside it)")
    args.output.parent.mkdir(parents=True, exist_ok=True)

    preset = get_preset(args.model)
    if preset.name != preset.model:  # bundled weights of an architecture: fine-tune them
        if args.init is not None and read_info(args.init).model != preset.model:
            raise DeepCeNSError(f"--model {preset.name} fine-tunes a {preset.model} model; "
                                f"{args.init.name} holds a {read_info(args.init).model} model")
        args.model, args.init = preset.model, args.init or bundled_weights(preset.name)
    if args.init is not None:
        init_config = read_info(args.init).config
        channels = int(init_config.get("in_channels", 1)) if read_info(args.init).model == args.model else 1
    else:
        channels = args.channels or (3 if args.model == "deepcens" and _several_classes(args.data)
                                     and _colour_data(args.data) else 1)
    if channels != 1 and args.model != "deepcens":
        raise DeepCeNSError(f"the {args.model} model takes one grey channel; use --model deepcens")
    # fine-tuning a multi-class model: COCO categories are taken by the model's class names
    init_classes = None
    if args.init is not None and read_info(args.init).model == args.model == "deepcens":
        init_classes = tuple(read_info(args.init).config.get("classes") or ()) or None
    train_items = load_training_data(args.data, channels, init_classes)
    val_items = load_training_data(args.val, channels, init_classes)
    if not train_items:
        raise DeepCeNSError("no usable training images in " + ", ".join(map(str, args.data)))
    if args.output.exists() and args.init and args.output.resolve() == args.init.resolve():
        raise DeepCeNSError("--output must differ from --init: weights are never overwritten")
    if len({item.classes for item in train_items + val_items}) > 1:
        raise DeepCeNSError("the training and validation data have different classes")
    config = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         workers=args.workers, augment=AugmentConfig(crop=args.crop))
    if args.model == "deepcens":
        model_config = {"backbone": args.backbone}
    else:
        model_config = {"base_channels": args.base_channels, "depth": args.depth}
    print(f"training {args.model} on {len(train_items)} images"
          + (f", validating on {len(val_items)}" if val_items else ""))
    bar = tqdm(total=config.epochs * config.steps_per_epoch, unit="step")
    for progress in train_iter(train_items, args.output, model_name=args.model,
                               model_config=model_config, config=config, val_items=val_items,
                               init=args.init, device=args.device, resume=not args.no_resume):
        bar.n = progress.step
        bar.set_postfix(epoch=progress.epoch, loss=f"{progress.loss:.4f}", refresh=False)
        bar.refresh()
        if progress.val is not None:
            kept = " (best, saved)" if progress.best_path else ""
            bar.write(f"epoch {progress.epoch}: loss {progress.loss:.4f} val AP@0.5 "
                      f"{progress.val['AP@0.5']:.3f} DSB {progress.val['DSB']:.3f}{kept}")
    bar.close()
    print(f"weights: {args.output}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from .inference.device import resolve_device
    from .models.weights import load_weights, read_info, save_weights
    from .training.dataset import load_folder
    from .training.loop import as_nuclei, validate

    check_new_file(args.output)
    if args.scorer_zooms and not args.fit_scorer:
        raise DeepCeNSError("--scorer-zooms goes with --fit-scorer (the folders to fit on)")
    zooms = tuple(args.scorer_zooms or ())
    if any(not 0.1 <= z <= 4 for z in zooms):
        raise DeepCeNSError(f"--scorer-zooms must lie in [0.1, 4]; got {list(zooms)}")
    if args.stain_outlines is not None:  # a bad value is said before the network is built
        _stain_outlines(args.stain_outlines, read_info(args.weights))
    model, info = load_weights(args.weights)
    if args.working_diameter is not None:
        info.working_diameter = _working_diameter(args.working_diameter, info.median_diameter)
    if args.sharpen_enlarged is not None:
        info.sharpen_enlarged = args.sharpen_enlarged == "yes"
    if args.stain_outlines is not None:
        info.stain_outlines = _stain_outlines(args.stain_outlines, info)
    device = resolve_device(args.device)
    channels = int(info.config.get("in_channels", 1))  # two-stain models read colour
    items = [item for folder in args.val for item in load_folder(folder, channels=channels)]
    if info.model != "deepcens":  # one class, nuclei: cell outlines are refused, not scored
        items = as_nuclei(info.model, items)
    if args.fit_scorer:
        info.object_scorer = _fit_scorer(model, info, args.fit_scorer, device, zooms).to_dict()
    metrics, params = validate(model, info, items, device, estimate=True, confirm=args.confirm)
    info.thresholds = params.to_dict()
    info.metrics = {**info.metrics, "val": metrics, "tuned_on": [str(v) for v in args.val]}
    save_weights(args.output, model, info, overwrite=False)
    print(f"thresholds {params.to_dict()}")
    if info.working_diameter:
        print(f"objects zoomed to {info.working_diameter:g} px (training median "
              f"{info.median_diameter:.1f} px)")
    if info.sharpen_enlarged:
        print("images enlarged ×2.5 or more are unsharp-masked first")
    for name, channel in info.stain_outlines.items():
        print(f"{name} outlines follow the stain of channel {channel} "
              f"(outline threshold {params.outline_threshold:g})")
    print(f"val AP@0.5 {metrics['AP@0.5']:.3f}, DSB {metrics['DSB']:.3f} -> {args.output}")
    return 0


def _stain_outlines(value: str, info) -> dict[str, int]:
    """A checked ``--stain-outlines``: ``none``, or ``CLASS:CHANNEL`` (one class of the model,
    one of its input channels)."""
    from .models.weights import stain_outline_problem

    if value.strip().lower() == "none":
        return {}
    name, _, channel = value.partition(":")
    outlines = {name: int(channel)} if channel.strip().isdecimal() else None
    problem = stain_outline_problem(outlines, info) if outlines is not None else "no channel"
    if problem:
        raise DeepCeNSError(f"--stain-outlines takes CLASS:CHANNEL or none; {value!r}: {problem}")
    return outlines


def _working_diameter(value: float, median: float) -> float:
    """A checked ``--working-diameter``: 0 (the training median) or within ×0.5–×2 of it."""
    if median <= 0:
        raise DeepCeNSError("these weights record no training object size: a working diameter "
                            "has nothing to be measured against")
    if value == 0:
        return 0.0
    if not math.isfinite(value) or not 0.5 * median <= value <= 2.0 * median:
        raise DeepCeNSError(f"--working-diameter must be 0 or lie within ×0.5–×2 of the training "
                            f"median ({0.5 * median:.1f}–{2.0 * median:.1f} px); got {value}")
    return float(value)


def _fit_scorer(model, info, folders: list[Path], device, zooms: tuple[float, ...] = ()):
    """The U-Net's object scorer fitted on ``folders`` (its predictions there, before any
    score filter, against their annotations)."""
    from .inference.predictor import Predictor
    from .training.dataset import load_folder
    from .training.loop import as_nuclei
    from .training.object_scorer import ZOOMS, fit_for

    if info.model != "unet":
        raise DeepCeNSError(f"--fit-scorer is for U-Net weights; these are {info.model!r}")
    items = as_nuclei(info.model, [item for folder in folders for item in load_folder(folder)])
    predictor = Predictor(model, info, device=device)
    zooms = zooms or ZOOMS
    with tqdm(total=len(items) * len(zooms), desc="fitting the object scorer", unit="image") as bar:
        return fit_for(predictor, items, progress=lambda k: bar.update(k - bar.n), zooms=zooms)


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate_folder, format_table
    from .io.export import atomic_write

    if args.json:  # before the scoring work, not after it
        check_new_file(args.json, "--json")
    results = evaluate_folder(args.gt_dir, args.pred_dir)
    print(format_table(results))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return 0


def run_napari(args: argparse.Namespace) -> int:
    import napari

    from .io.images import read_stack, validate_image
    from .scale.fanout import needs_chunks
    from .scale.lazy import check_colour, open_lazy, select_channel
    from .widget.dock import DeepCeNSDock

    if args.image is not None and not args.image.exists():  # say so before napari starts
        raise DeepCeNSError(f"image file not found: {args.image}")
    cyto_channel = getattr(args, "cyto_channel", None)
    model = getattr(args, "model", None) or ("cells" if cyto_channel is not None else None)
    if model is not None:
        from .models.registry import get_preset

        get_preset(model)  # an unknown name is said before napari starts
    pair = None
    if cyto_channel is not None:  # two stains: two layers, as napari shows channels
        from .models.registry import bundled_weights
        from .models.weights import read_info

        if args.image is None:
            raise DeepCeNSError("--cyto-channel needs an image file")
        if int(read_info(bundled_weights(model)).config.get("in_channels", 1)) == 1:
            raise DeepCeNSError(f"--cyto-channel is for two-stain models (--model cells); {model} "
                                "reads one stain: choose it with --channel")
        if needs_chunks(args.image):
            raise DeepCeNSError(f"{args.image.name} is too large to pair two channels here: save "
                                "the nuclear and the cytoplasm stain as one RGB image (red "
                                "nuclei, green cytoplasm) and open that")
        pair = read_stack(args.image, args.channel if args.channel is not None else 0, cyto_channel)
    viewer = napari.Viewer()
    if args.image is None:
        from .sample_data import fluorescence

        data, kwargs, _kind = fluorescence()[0]
    elif pair is not None:  # the nuclear stain as the image, the cytoplasm beside it
        data = pair.data[..., 0]
        kwargs = {"name": args.image.stem}
        if pair.leading:
            kwargs["axis_labels"] = tuple(a.lower() for a in pair.axes.replace("S", ""))
    elif needs_chunks(args.image):  # OME-Zarr, large TIFF: lazily, every pyramid level
        lazy = open_lazy(args.image)
        if getattr(args, "channel", None) is not None and lazy.rgb:
            lazy = select_channel(lazy, args.channel)
        check_colour(lazy)  # separate stains: one must be chosen
        data = lazy.levels if lazy.multiscale else lazy.levels[0]
        kwargs = {"name": args.image.stem, "rgb": lazy.rgb, "multiscale": lazy.multiscale,
                  "scale": lazy.pixel_size,  # the file's pixel size: the labels follow it
                  "translate": lazy.origin}
    else:  # a time-lapse or z-stack opens as one layer whose axes napari names (t, z, …)
        stack = read_stack(args.image, getattr(args, "channel", None))
        data = stack.data if stack.leading else validate_image(stack.data)
        kwargs = {"name": args.image.stem, "rgb": stack.rgb}
        if stack.leading:
            kwargs["axis_labels"] = tuple(a.lower() for a in stack.axes.replace("S", ""))
    layer = viewer.add_image(data, **kwargs)
    dock = DeepCeNSDock(viewer)
    viewer.window.add_dock_widget(dock, name="DeepCeNS", area="right")
    dock.segment.set_options(image=layer)
    if model is not None:
        dock.segment.set_options(model=model)
    if pair is not None:
        other = viewer.add_image(pair.data[..., 1], name=f"{args.image.stem} cytoplasm", colormap="green",
                                 blending="additive", **({"axis_labels": kwargs["axis_labels"]}
                                                         if "axis_labels" in kwargs else {}))
        layer.colormap, layer.blending = "blue", "additive"
        dock.segment.set_options(cyto=other)
    if not args.no_run:
        dock.segment.run()
    napari.run()
    return 0
