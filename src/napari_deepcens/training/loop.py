"""The training loop: a generator of progress records, resumable from checkpoints.

The CLI drains it behind tqdm; the widget runs it in a thread worker and stops it on Cancel
(the generator is simply not resumed; the last checkpoint and the best weights so far stay on
disk). Each epoch ends with a validation of the whole pipeline (network + watershed) when
validation images are given, and the weights with the best validation DSB score are kept:
the model is chosen on ``val``, never on ``train``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import DeepCeNSError
from ..evaluation.metrics import match_image, summarize
from ..inference.device import resolve_device
from ..inference.predictor import SNAP, Predictor, params_at_scale
from ..models.registry import build_model
from ..models.weights import WeightsInfo, load_weights, save_weights
from ..postprocess.object_score import ObjectScorer
from ..postprocess.params import PostprocessParams
from .augment import AugmentConfig
from .dataset import (
    AnnotatedImage,
    RandomCrops,
    collate_detection,
    median_diameter,
    rescale_items,
)
from .losses import LOSSES
from .triton_guard import block_triton_in_gui_process

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Recipe of one training run (stored in the weights for reproducibility)."""

    epochs: int = 40
    steps_per_epoch: int = 250
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    #: Processes preparing crops beside the training one (0: in the training process). A GPU
    #: needs several to be kept busy; on CPU they only compete with the network for cores.
    workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainProgress:
    """One step's report: where we are and how the loss goes."""

    epoch: int
    step: int
    total_steps: int
    loss: float
    val: dict[str, float] | None = None
    best_path: Path | None = None


#: Thresholds tried on validation after every epoch (cheap: the maps are computed once).
SEARCH = {
    "unet": [PostprocessParams(fg_threshold=fg, seed_threshold=seed)
             for fg in (0.5, 0.6, 0.7) for seed in (0.1, 0.15, 0.2, 0.3)],
    "centerunet": [PostprocessParams(fg_threshold=fg, score_threshold=score, min_size=size)
                   for fg in (0.5, 0.6, 0.65) for score in (0.3, 0.4) for size in (10, 20, 30)],
    "deepcens": [PostprocessParams(fg_threshold=fg, score_threshold=score, min_size=10)
                 for fg in (0.4, 0.5) for score in (0.3, 0.4, 0.5, 0.6, 0.7)],
}


#: Score thresholds tried with the other U-Net knobs when its weights carry an object scorer.
UNET_SCORES = (0.0, 0.3, 0.4, 0.5)  # 0: scoring off, for a fine-tune it no longer fits
#: Outline thresholds tried with the other knobs when the weights outline a class on a stain.
OUTLINES = (0.0, 0.2, 0.3, 0.4)  # 0: the network's own outlines


def search_space(predictor: Predictor) -> list[PostprocessParams]:
    """The threshold sets :func:`validate` tries for ``predictor``'s model. A minimum size
    the search does not vary is the one the weights store (a user's 200 px was reset to 10)."""
    base = SEARCH[predictor.model_name]
    if len({p.min_size for p in base}) == 1:
        stored = PostprocessParams.from_dict(predictor.info.thresholds).min_size
        base = [replace(p, min_size=stored) for p in base]
    if predictor.model_name == "unet" and predictor.object_scorer is not None:
        return [replace(p, score_threshold=s) for p in base for s in UNET_SCORES]
    if predictor.info.stain_outlines:
        return [replace(p, outline_threshold=o) for p in base for o in OUTLINES]
    return base


def _matches(item: AnnotatedImage, seg) -> list:
    """Matches of every class of ``item`` against the same class of a segmentation."""
    predicted = {name: part.labels for name, part in seg.by_class().items()}
    return [match_image(labels, predicted[name]) for name, labels in item.class_labels().items()
            if name in predicted]


def _score(predictor: Predictor, items: list[AnnotatedImage], raws: list,
           params: PostprocessParams) -> dict[str, float]:
    matches = [m for item, raw in zip(items, raws, strict=True)
               for m in _matches(item, predictor.instances(raw, params_at_scale(
                   params, raw.scale, detection=predictor.kind == "detection")))]
    if not matches:  # nothing to compare: say so instead of scoring nothing
        names = sorted({name for item in items for name in item.classes})
        raise DeepCeNSError(f"the validation images hold {', '.join(names)}, which the "
                            f"{predictor.model_name} model does not find "
                            f"({', '.join(predictor.class_names)})")
    return summarize(matches)


def validate(model: torch.nn.Module, info: WeightsInfo, items: list[AnnotatedImage],
             device: torch.device, estimate: bool = False,
             confirm: int = 1) -> tuple[dict[str, float], PostprocessParams]:
    """Whole-pipeline metrics on ``items`` with the thresholds that score best on them
    (best DSB score over :data:`SEARCH`; the network runs once per image). With several
    classes, each image's classes are matched class by class and pooled.

    ``estimate``: each image runs at its estimated object size, as users run it
    (``deepcens tune``); during training, images run as they are. The estimate itself runs
    the network with the stored thresholds, so new thresholds can move it: the ``confirm``
    best candidates are then run again end to end with their own thresholds stored, and the
    best of those is returned with the metrics a user will get.
    """
    model.eval()
    predictor = Predictor(model, info, device=device)
    raws = [predictor.predict(item.plane, estimate=estimate, normalised=True) for item in items]
    ranked = sorted(((_score(predictor, items, raws, params), params) for params in search_space(predictor)),
                    key=lambda pair: -pair[0]["DSB"])
    best = ranked[0]
    if estimate:
        best = None
        for first_pass, params in ranked[:max(confirm, 1)]:
            if params == PostprocessParams.from_dict(info.thresholds):
                summary = first_pass  # estimated with these very thresholds already
            else:
                trial = Predictor(model, replace(info, thresholds=params.to_dict()), device=device)
                summary = _score(trial, items, [trial.predict(item.plane, normalised=True)
                                                for item in items], params)
            log.info("end to end with %s: AP@0.5 %.3f DSB %.3f", params.to_dict(), summary["AP@0.5"],
                     summary["DSB"])
            if best is None or summary["DSB"] > best[0]["DSB"]:
                best = (summary, params)
    model.train().to(memory_format=torch.contiguous_format)
    assert best is not None
    return best[0], best[1]


def detection_data_config(items: list[AnnotatedImage]) -> dict:
    """What a new DeepCeNS takes from its data: class names, input channels and the
    per-channel mean and standard deviation used to normalise its input (as in the paper)."""
    planes = [item.plane if item.plane.ndim == 3 else item.plane[None] for item in items]
    channels = planes[0].shape[0]
    if any(p.shape[0] != channels for p in planes):
        raise DeepCeNSError("training images mix grey and colour inputs")
    sample = np.concatenate([p.reshape(channels, -1)[:, ::97] for p in planes], axis=1)
    std = np.maximum(sample.std(axis=1), 1e-3)
    return {"classes": tuple(items[0].classes), "in_channels": int(channels),
            "pixel_mean": tuple(float(v) for v in sample.mean(axis=1)),
            "pixel_std": tuple(float(v) for v in std)}


def _check_classes(model: torch.nn.Module, items: list[AnnotatedImage]) -> None:
    """Data and model must agree on the classes (fine-tuning a nucleus model on cell data)."""
    names = tuple(model.config.classes)
    for item in items:
        if tuple(item.classes) != names:
            raise DeepCeNSError(f"{item.id}: classes {', '.join(item.classes)} do not match the "
                                f"model's {', '.join(names)}")


#: Class names of whole-cell outlines (what the export names a cell layer exported alone):
#: the dense networks learn nuclei, and are never trained on these as if they were nuclei.
CELL_CLASSES = frozenset({"cell", "cells", "cytoplasm", "whole cell"})


def as_nuclei(model_name: str, items: list[AnnotatedImage] | None) -> list[AnnotatedImage] | None:
    """Data for a network that learns one class, nuclei: a one-category COCO file's
    (1, H, W) labels become (H, W), and its category (``nuclei``, ``DAPI``, …) is read as
    the nuclei the model outputs, so validation compares like with like. Data with several
    classes (cells + nuclei), or with cell outlines only, is refused with what to do."""
    if items is None:
        return None
    out = []
    for item in items:
        if len(item.classes) > 1:
            raise DeepCeNSError(f"{item.id} has the classes {', '.join(item.classes)}; the "
                                f"{model_name} model learns one: train a DeepCeNS (--model "
                                "deepcens, or cells to fine-tune the cells + nuclei model) on "
                                "it, or use data with one class")
        if item.classes[0].strip().lower() in CELL_CLASSES:
            raise DeepCeNSError(f"{item.id} holds {item.classes[0]} outlines; the {model_name} "
                                "model learns nuclei: train a DeepCeNS on cells (--model "
                                "deepcens, or cells with their nuclei), or export nuclei")
        if item.labels.ndim == 3:
            item = replace(item, labels=item.labels[0])
        out.append(replace(item, classes=("nucleus",)))
    return out


def transfer_matching(source: torch.nn.Module, target: torch.nn.Module) -> int:
    """Copy every tensor whose name and shape match; returns how many were copied."""
    src = source.state_dict()
    state = target.state_dict()
    matched = {k: v for k, v in src.items() if k in state and state[k].shape == v.shape}
    state.update(matched)
    target.load_state_dict(state)
    return len(matched)


def grow(source: torch.nn.Module, info: WeightsInfo,
         overrides: dict) -> tuple[torch.nn.Module, WeightsInfo]:
    """A larger network of the same kind (e.g. a deeper ResNeSt) started from trained weights.

    Every tensor whose name and shape match is copied. timm zero-initialises the last norm of
    each residual block, so the blocks the larger backbone adds start as identities and the
    grown network computes what the trained one did: training continues from there instead of
    from scratch.
    """
    model = build_model(info.model, {**info.config, **overrides})
    transfer_matching(source, model)
    return model, replace(info, config=model.config.to_dict())


def to_model_scale(init_info: WeightsInfo, train_items: list[AnnotatedImage],
                   val_items: list[AnnotatedImage] | None) -> tuple[list, list | None]:
    """Fine-tuning data zoomed so its objects have the size the model was trained at.

    The model's recorded median diameter is what the diameter knob and the size estimate
    mean; recording the fine-tuning data's own median instead would silently change the
    zoom of every later run (a few corrected images of large nuclei made the bundled U-Net
    run its val images at 2.6× the wrong size). Within ``SNAP`` (×1.25) the data is used as
    it is, as images are at inference.
    """
    target, found = init_info.median_diameter, median_diameter(train_items)
    if target <= 0 or found <= 0 or abs(math.log(target / found)) < math.log(SNAP):
        return train_items, val_items
    factor = target / found
    if not 0.25 <= factor <= 4.0:  # beyond that, zoom reinvents or destroys the objects
        log.warning("fine-tuning objects of %.1f px for a model trained at %.1f px: zoom "
                    "limited to ×%.2f", found, target, min(max(factor, 0.25), 4.0))
        factor = min(max(factor, 0.25), 4.0)
    log.info("fine-tuning data zoomed ×%.2f: objects of %.1f px to the model's %.1f px",
             factor, found, target)
    return rescale_items(train_items, factor), rescale_items(val_items, factor) if val_items else val_items


_RESUME_HINT = "delete it, pass --no-resume, or choose another output file"


def run_signature(model_name: str, model_config: dict | None, config: TrainConfig,
                  items: list[AnnotatedImage] | None = None, init: str | Path | None = None,
                  val_items: list[AnnotatedImage] | None = None) -> dict:
    """What a checkpoint must share with a run to be resumed by it: the recipe, the
    training and validation images (ids and sizes: with validation, the best epoch is chosen
    by its score, without, the last is kept) and the weights it started from."""
    data = hashlib.sha1(json.dumps(sorted((i.id, list(i.plane.shape)) for i in items or [])
                                   ).encode()).hexdigest()[:16]
    val = (hashlib.sha1(json.dumps(sorted((i.id, list(i.plane.shape)) for i in val_items)
                                   ).encode()).hexdigest()[:16] if val_items else None)
    return {"model": model_name, "config": dict(model_config or {}), "epochs": config.epochs,
            "steps_per_epoch": config.steps_per_epoch, "batch_size": config.batch_size,
            "lr": config.lr, "data": data, "init": Path(init).name if init else None,
            "val": val, "crop": config.augment.crop, "seed": config.seed}


def _load_checkpoint(path: Path, signature: dict, device) -> dict:
    """A checkpoint this run can continue from, or a clear error."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise DeepCeNSError(f"cannot read the checkpoint {path} ({exc}): {_RESUME_HINT}") from exc
    theirs = state.get("signature") if isinstance(state, dict) else None
    if theirs is not None:
        differ = [k for k in signature if json.dumps(theirs.get(k), sort_keys=True, default=str)
                  != json.dumps(signature[k], sort_keys=True, default=str)]
        if differ:
            raise DeepCeNSError(f"{path} is the checkpoint of another training run (different "
                                f"{', '.join(differ)}): {_RESUME_HINT}")
    return state


def train_iter(
    train_items: list[AnnotatedImage],
    output: str | Path,
    model_name: str = "unet",
    model_config: dict | None = None,
    config: TrainConfig | None = None,
    val_items: list[AnnotatedImage] | None = None,
    init: str | Path | None = None,
    device: str = "auto",
    resume: bool = True,
) -> Iterator[TrainProgress]:
    """Train and write the best weights to ``output``; yields a :class:`TrainProgress` per step.

    ``init``: weights to fine-tune from (their architecture is kept); weights of another model
    initialise every tensor they share with this one (the U-Net body). A checkpoint
    ``<output>.ckpt`` is written every epoch; with ``resume`` an interrupted run continues
    from it.
    """
    block_triton_in_gui_process()
    config = config or TrainConfig()
    if model_name != "deepcens":  # the dense networks learn one class
        train_items, val_items = as_nuclei(model_name, train_items), as_nuclei(model_name, val_items)
    output = Path(output)
    ckpt_path = output.with_name(output.name + ".ckpt")
    dev = resolve_device(device)
    torch.manual_seed(config.seed)
    scale_d = working_d = 0.0
    sharpen = False
    scorer: dict = {}
    outlines: dict[str, int] = {}
    if init is not None:
        source, init_info = load_weights(init)
        if init_info.model == model_name:  # fine-tuning: keep the architecture
            model, model_config, thresholds = source, init_info.config, init_info.thresholds
            scorer = init_info.object_scorer  # features the fine-tuned net's maps alike
            if scorer:
                ObjectScorer.from_dict(scorer)  # a broken one is refused now, not after an epoch
                log.info("keeping the object scorer of %s; validation may turn it off (score 0) "
                         "if it no longer fits; refit it with `deepcens tune --fit-scorer`", init)
            train_items, val_items = to_model_scale(init_info, train_items, val_items)
            scale_d = init_info.median_diameter  # the knob keeps its meaning
            working_d = init_info.working_diameter  # and the zoom the network prefers
            sharpen = init_info.sharpen_enlarged
            outlines = dict(init_info.stain_outlines)  # cells keep following their stain
        else:  # e.g. a CenterUNet whose U-Net body starts from trained U-Net weights
            body = {k: v for k, v in init_info.config.items() if k in ("base_channels", "depth",
                                                                      "max_channels")}
            model = build_model(model_name, {**(model_config or {}), **body})
            model_config = model.config.to_dict()
            thresholds = PostprocessParams().to_dict()
            copied = transfer_matching(source, model)
            log.info("initialised %d tensors of %s from %s", copied, model_name, init)
    else:
        if model_name == "deepcens":
            model_config = {**(model_config or {}), **detection_data_config(train_items)}
        model = build_model(model_name, model_config)
        model_config = model.config.to_dict()
        thresholds = PostprocessParams().to_dict()
    detection = getattr(model, "kind", "dense") == "detection"
    if detection:
        _check_classes(model, train_items + list(val_items or []))
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total, pct_start=0.05
    )
    start_epoch, best_score = 0, -math.inf
    signature = run_signature(model_name, model_config, config, train_items, init, val_items)
    if resume and ckpt_path.is_file():
        state = _load_checkpoint(ckpt_path, signature, dev)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DeepCeNSError(f"{ckpt_path} is the checkpoint of another training run "
                                f"({type(exc).__name__}): {_RESUME_HINT}") from exc
        start_epoch, best_score = state["epoch"], state["best_score"]
        thresholds = state.get("thresholds", thresholds)
        if not output.exists():
            raise DeepCeNSError(f"{ckpt_path} is left from a run whose weights {output.name} are "
                                f"gone: {_RESUME_HINT}")
        if start_epoch >= config.epochs:
            raise DeepCeNSError(f"{ckpt_path} says this run already finished its {config.epochs} "
                                f"epochs (weights in {output}): nothing to do; choose a new "
                                "output file to train again")
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    info = WeightsInfo(
        model=model_name,
        config=model_config,
        median_diameter=scale_d or median_diameter(train_items),
        thresholds=thresholds,
        object_scorer=scorer,
        working_diameter=working_d,
        sharpen_enlarged=sharpen,
        stain_outlines=outlines,
        training={**config.to_dict(), "train_images": len(train_items),
                  "init": str(init) if init else None},
    )
    if detection and config.batch_size < 2:
        # ResNeSt's split attention batch-normalises pooled (1×1) features: it needs 2 images
        log.info("batch size raised from %d to 2 for %s", config.batch_size, model_name)
        config = replace(config, batch_size=2)
    loss_fn = LOSSES.get(model_name)
    crops = RandomCrops(train_items, config.augment, seed=config.seed + start_epoch, model=model_name)
    loader = iter(DataLoader(crops, batch_size=config.batch_size, num_workers=config.workers,
                             persistent_workers=config.workers > 0,
                             collate_fn=collate_detection if detection else None))
    step = start_epoch * config.steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        t0, losses = time.perf_counter(), []
        for _ in range(config.steps_per_epoch):
            images, targets = next(loader)
            if detection:  # the detector computes its own losses from the targets
                parts = model(images.to(dev), [{k: v.to(dev) for k, v in t.items()} for t in targets])
                loss = sum(parts.values())
            else:
                outputs = model(images.to(dev))
                loss, _parts = loss_fn(outputs, {k: v.to(dev) for k, v in targets.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if detection:  # early RPN/cascade losses spike on a network trained from scratch
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            yield TrainProgress(epoch + 1, step, total, float(np.mean(losses[-50:])))
        val = None
        best_path = None
        if val_items:
            val, params = validate(model, info, val_items, dev)
            score = val["DSB"]
        else:
            params, score = PostprocessParams.from_dict(info.thresholds), float(epoch)
        if score > best_score:
            best_score = score
            info.thresholds = params.to_dict()
            info.metrics = {"val": val, "epoch": epoch + 1} if val else {"epoch": epoch + 1}
            save_weights(output, model, info)
            best_path = output
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                    "best_score": best_score, "thresholds": info.thresholds,
                    "signature": signature}, ckpt_path)
        log.info("epoch %d: loss %.4f, val %s, %.0f s", epoch + 1, np.mean(losses), val,
                 time.perf_counter() - t0)
        yield TrainProgress(epoch + 1, step, total, float(np.mean(losses)), val, best_path)
