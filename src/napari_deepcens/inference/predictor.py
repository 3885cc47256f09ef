"""The predictor: image → raw network maps (cached) → instances (cheap, re-runnable).

``predict_iter`` is one generator that yields progress per tile and returns the raw maps; the
CLI drains it behind a tqdm bar, the widget runs it in a napari thread worker with a progress
bar and Cancel. ``postprocess`` turns cached maps into labels without touching the network,
which is what the live sliders call.

Object size: a network sees nuclei at the sizes it was trained on. When the user gives the
nuclei's ``diameter`` (pixels), the image is rescaled so that they match the size recorded
in the weights (their working diameter, else the median of their training data), and the
maps are brought back to the original grid before post-processing, so labels always align
with the user's image.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import DeepCeNSError
from ..io.images import to_channels, validate_image
from ..models.registry import bundled_weights
from ..models.weights import WeightsInfo, file_sha256, load_weights
from ..postprocess.centers import Detections, decode_centers, seeded_instances
from ..postprocess.masks import class_instances
from ..postprocess.object_score import ObjectScorer, drop_low_scores
from ..postprocess.outlines import smooth_stain
from ..postprocess.params import PostprocessParams
from ..postprocess.watershed import instances_from_maps
from . import denoise as denoising
from . import onnx_cpu
from . import sharpen as sharpening
from .detection import detect_tiled
from .device import resolve_device
from .fusion import fuse_conv_bn
from .onnx_cpu import Exported, OnnxMaps
from .progress import drain, relay
from .tiling import predict_tiled
from .tta import flip_averaged_maps, flip_fused_detections

log = logging.getLogger(__name__)

#: Estimated sizes within this factor of the size the network runs objects at (its working
#: diameter) are used as they are: the network was trained with scale augmentation over a
#: wider range, and resampling costs time.
SNAP = 1.25
#: Above this many pixels (after rescaling) an image is refused: ~16k × 16k. The maps and the
#: watershed need ~40 bytes per pixel, so this stays within a 16 GB workstation.
MAX_PIXELS = 256_000_000
Progress = tuple[int, int]


@dataclass(frozen=True)
class Decision:
    """What an image (or a whole stack, decided on one plane) is segmented with: the fitted
    denoising (``None``: not filtered), the object size and the zoom it gives."""

    denoiser: denoising.Denoiser | None
    diameter: float | None
    estimated: bool
    unrecognised: bool
    scale: float


@dataclass
class RawOutput:
    """Cached network maps, plus how they were made.

    ``maps``: name → float32 array. Full-resolution maps are on the original image grid,
    (H, W) for one channel, (C, H, W) otherwise (U-Net: ``foreground``, ``distance``;
    CenterUNet: ``segmentation``). Coarser maps (CenterUNet's 1/4-resolution heads) stay on
    the grid the network saw, zoomed by ``scale``; ``strides`` says which is which.
    Detection models (DeepCeNS) cache their detections instead: ``boxes`` (N, 4) xyxy in
    pixels of the original grid, ``scores``, ``classes`` (1..K) and ``masks`` (N, M, M).
    """

    maps: dict[str, np.ndarray]
    shape: tuple[int, int]
    strides: dict[str, int] = field(default_factory=dict)
    scale: float = 1.0
    diameter: float | None = None
    estimated: bool = False
    #: The size was to be estimated but no objects were recognised: the image ran as it is.
    size_unrecognised: bool = False
    meta: dict = field(default_factory=dict)
    #: Detection models whose weights outline a class on a stain: class name → that stain as
    #: the network saw it (normalised, original grid), smoothed once for
    #: :mod:`..postprocess.outlines` (float16).
    stains: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Segmentation:
    """Post-processed result: instance labels and, for detection models, their boxes
    (label ``i`` ↔ box ``i - 1``, pixels of the original grid).

    Multi-class models put their main class (nuclei where they have them) in ``labels`` /
    ``boxes`` under ``name`` and the other classes in ``others``.
    """

    labels: np.ndarray
    boxes: Detections | None = None
    name: str = "nucleus"
    #: Dense models with an object scorer: the score of label ``i`` at ``scores[i - 1]``.
    scores: np.ndarray | None = None
    others: dict[str, Segmentation] = field(default_factory=dict)

    def by_class(self) -> dict[str, Segmentation]:
        """Every class: the main one (nuclei where the model has them) first, then the
        others in the model's order."""
        return {self.name: self, **self.others}


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W) or (C, H, W) float32 arrays to ``size``, pixel centres
    aligned (so a round trip does not shift objects)."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    return (out[0] if maps.ndim == 2 else out).numpy()


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Reduced precision for inference where it is fast and harmless, else ``None`` (fp32).

    ``auto``: fp16 on CUDA; bf16 on CPUs with native bf16 (oneDNN; AVX512-BF16/AMX), which
    halves CPU time here while moving probabilities by < 0.02; fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision not in ("auto", "half"):
        raise DeepCeNSError(f"unknown precision {precision!r}: choose auto, half or fp32")
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


#: Smallest object kept at any zoom, in pixels of the user's image (unless the tuned size is
#: smaller still): at ×0.25 the tuned 10 px would become 1 px and keep single-pixel specks
#: (val ×0.25, U-Net: AP@0.5 0.694 → 0.707 with this floor; ×1 unchanged).
MIN_OBJECT_PIXELS = 3


#: Detection models on strongly enlarged images (objects of ~5–8 px, zoomed ×2.5 or more to the
#: training size): the upsampled nuclei are blurred over several network pixels and the mask
#: head draws them too wide, merging neighbours. The mask threshold rises from ×2.5 to ×5 by up
#: to this much (session-7 DeepCeNS, whole val ×0.25: AP@0.5 0.678 → 0.692 over the ×4–×6 ramp
#: of session 5; ×0.5 0.757 → 0.758; raises of 0.4–0.5 starting at ×2–×3 all gave 0.686–0.692).
MASK_RAISE = 0.4
MASK_RAISE_ZOOMS = (2.5, 5.0)

#: ...and their classifier is less sure of blurred nuclei: many true ones score between 0.5 and
#: the tuned 0.7. The score threshold falls from ×1.5 to ×3 by up to this much (DeepCeNS, whole
#: val: ×0.25 0.657 → 0.678, ×0.5 0.752 → 0.757, ×1 0.772 → 0.774; drops of 0.1–0.3 over
#: ramps from ×1.25–×2 to ×2–×4 all gave ×0.25 0.670–0.678).
SCORE_DROP = 0.2
SCORE_DROP_ZOOMS = (1.5, 3.0)


def _ramp(scale: float, zooms: tuple[float, float]) -> float:
    """0 below ``zooms[0]``, 1 above ``zooms[1]``, linear between."""
    lo, hi = zooms
    return min(max((scale - lo) / (hi - lo), 0.0), 1.0)


def params_at_scale(params: PostprocessParams, scale: float,
                    detection: bool = False) -> PostprocessParams:
    """``params`` (``min_size`` in pixels at the training scale) for an image that ran at zoom
    ``scale``: the minimum size converted to the image's pixels and, for ``detection`` models
    on enlarged images, the mask threshold raised (:data:`MASK_RAISE`) and the score threshold
    lowered (:data:`SCORE_DROP`)."""
    if scale == 1.0:
        return params
    floor = min(params.min_size, MIN_OBJECT_PIXELS)
    params = replace(params, min_size=max(floor, 1, round(params.min_size / scale**2)))
    if detection and scale > 1.0:
        raise_by = MASK_RAISE * _ramp(scale, MASK_RAISE_ZOOMS)
        drop_by = SCORE_DROP * _ramp(scale, SCORE_DROP_ZOOMS)
        params = replace(
            params,
            fg_threshold=round(min(params.fg_threshold + raise_by, 0.95), 2),
            score_threshold=round(max(params.score_threshold - drop_by, 0.05), 2),
        )
    return params


def check_diameter(diameter) -> float | None:
    """A usable diameter: ``None`` or 0 (not given), else a finite number of pixels > 0."""
    if diameter is None:
        return None
    try:
        value = float(diameter)
    except (TypeError, ValueError):
        raise DeepCeNSError(f"diameter must be a number of pixels, got {diameter!r}") from None
    if isinstance(diameter, (str, bytes)) or not np.isfinite(value) or value < 0:
        raise DeepCeNSError(f"diameter must be a positive number of pixels, got {diameter!r}")
    return value or None


class Predictor:
    """A loaded network with its training metadata, ready to segment images."""

    def __init__(self, model: torch.nn.Module, info: WeightsInfo, device: str = "auto",
                 weights_path: Path | None = None, precision: str = "auto", tta: bool = False) -> None:
        #: Whether predictions average four flips (:mod:`.tta`) unless a call says otherwise.
        self.tta = tta
        self.device = resolve_device(device)
        self.autocast_dtype = autocast_dtype(self.device, precision)
        self.model = fuse_conv_bn(model.eval()).to(self.device)
        self.kind = getattr(model, "kind", "dense")
        self.in_channels = int(getattr(model.config, "in_channels", 1))
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        #: ONNX Runtime for dense networks on fp32 CPUs (:mod:`.onnx_cpu`): the export, made
        #: at the first tile (``False`` once it proved unusable, so it is tried once only),
        #: and one session per torch thread count; the lock serialises their building.
        self._onnx: Exported | bool | None = None
        self._sessions: dict[int, OnnxMaps | None] = {}
        self._onnx_lock = threading.Lock()
        self.info = info
        self.weights_path = weights_path
        #: Scores each U-Net object (:mod:`..postprocess.object_score`); ``None`` when the
        #: weights carry no scorer (then ``score_threshold`` does nothing for them).
        self.object_scorer = ObjectScorer.from_dict(info.object_scorer) if info.object_scorer else None
        self._weights_hash: str | None = None

    @classmethod
    def from_weights(cls, path: str | Path, model: str | None = None, device: str = "auto",
                     precision: str = "auto", tta: bool = False) -> Predictor:
        """Load a weights file (checked against ``model`` when given)."""
        net, info = load_weights(path, expected_model=model)
        return cls(net, info, device=device, weights_path=Path(path), precision=precision, tta=tta)

    @classmethod
    def from_name(cls, model: str = "unet", weights: str | Path | None = None,
                  device: str = "auto", precision: str = "auto", tta: bool = False) -> Predictor:
        """The bundled weights of ``model``, or ``weights`` when given."""
        return cls.from_weights(weights or bundled_weights(model), model=model, device=device,
                                precision=precision, tta=tta)

    @property
    def model_name(self) -> str:
        return self.info.model

    @property
    def weights_hash(self) -> str | None:
        """sha256 of the weights file, for provenance records."""
        if self._weights_hash is None and self.weights_path is not None:
            self._weights_hash = file_sha256(self.weights_path)
        return self._weights_hash

    def default_params(self, scale: float = 1.0) -> PostprocessParams:
        """Thresholds tuned on validation data and stored with the weights, at zoom ``scale``
        (see :func:`params_at_scale`)."""
        return params_at_scale(PostprocessParams.from_dict(self.info.thresholds), scale,
                               detection=self.kind == "detection")

    def scale_for(self, diameter: float | None) -> float:
        """Zoom that brings objects of ``diameter`` px to the size the network runs them at
        (the weights' working diameter, else their training median)."""
        if diameter is None or diameter <= 0:
            return 1.0
        if self.info.median_diameter <= 0:
            raise DeepCeNSError("these weights record no training object size; leave diameter unset")
        return float(self.info.zoom_diameter / diameter)

    @property
    def strides(self) -> dict[str, int]:
        """Stride of each output map of the network (none for detection models)."""
        return dict(getattr(self.model, "MAP_STRIDES", {}))

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the model segments."""
        return tuple(getattr(self.model.config, "classes", ("nucleus",)))

    def prepare(self, image: np.ndarray, invert: bool | None = None) -> np.ndarray:
        """The network input for ``image``: (H, W) for grey models, (C, H, W) otherwise."""
        image = np.asarray(image)
        if self.in_channels > 1 and (image.ndim == 2 or image.shape[-1] == 1):
            log.warning("%s was trained on %d colour channels (one per stain) and is given a "
                        "grey image: every channel gets the same grey, which it never saw; "
                        "expect poor results",
                        self.weights_path.name if self.weights_path else "this model",
                        self.in_channels)
        return to_channels(image, self.in_channels, invert=invert)

    @torch.inference_mode()
    def _detect_tile(self, tile: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(tile)[None].to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            (dets,) = self.model(x)
        return {"boxes": dets["boxes"].float().cpu().numpy(), "scores": dets["scores"].float().cpu().numpy(),
                "classes": dets["classes"].cpu().numpy(),
                "masks": dets["masks"].cpu().numpy().astype(np.float16)}

    def _onnx_runner(self) -> OnnxMaps | None:
        """ONNX Runtime for this network where it is the faster choice: a dense network on
        the CPU in fp32 (CUDA, and bf16 on CPUs that have it, stay on torch). The session
        follows torch's thread count (Dask threads run with one thread, the widget with all)."""
        if self._onnx is False:
            return None
        threads = torch.get_num_threads()
        if self._onnx is not None and threads in self._sessions:
            return self._sessions[threads]
        with self._onnx_lock:
            if self._onnx is None:
                usable = (self.device.type == "cpu" and self.kind == "dense"
                          and self.autocast_dtype is None and onnx_cpu.wanted())
                self._onnx = (usable and onnx_cpu.export(self.model)) or False
            if self._onnx is False:
                return None
            if threads not in self._sessions:
                self._sessions[threads] = onnx_cpu.session(self._onnx, threads)
            return self._sessions[threads]

    def release_memory(self) -> None:
        """Free what the network runtime keeps between images (ONNX Runtime's arena, see
        :meth:`.onnx_cpu.OnnxMaps.release`; nothing on torch). The widget, which keeps its
        predictors for the session, calls it after a quiet minute; batch runs keep the arena."""
        for runner in list(self._sessions.values()):
            if runner is not None:
                runner.release()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # runtime sessions and locks do not pickle: rebuilt where the predictor lands
        state.update(_onnx=None, _sessions={}, _onnx_lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _onnx_lock=threading.Lock())

    def _predict_tile(self, tile: np.ndarray) -> dict[str, np.ndarray]:
        runner = self._onnx_runner()  # (outside inference mode: the exporter traces)
        return runner(tile) if runner is not None else self._torch_tile(tile)

    @torch.inference_mode()
    def _torch_tile(self, tile: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(tile)[None, None].to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            maps = self.model.maps(x)
        return {name: m.float()[0].cpu().numpy() for name, m in maps.items()}

    def _check_size(self, shape: tuple[int, int], diameter: float | None) -> None:
        """Refuse, before allocating anything, images too large to segment in one piece."""
        scale = self.scale_for(diameter)
        pixels = shape[0] * shape[1] * scale * scale
        if pixels > MAX_PIXELS and scale > 1.0:
            raise DeepCeNSError(
                f"a diameter of {diameter:.3g} px would enlarge the {shape[0]}×{shape[1]} image to "
                f"{pixels / 1e6:.0f} MP, too large to segment in one piece: give a larger diameter"
            )
        if pixels > MAX_PIXELS:
            raise DeepCeNSError(
                f"image of {shape[0]}×{shape[1]} pixels is too large to segment in one piece "
                f"({pixels / 1e6:.0f} MP to process, limit {MAX_PIXELS / 1e6:.0f} MP): crop it, "
                "or give the object diameter so that it can be downscaled"
            )

    def estimate_diameter(self, image: np.ndarray, normalised: bool = False):
        """Typical object diameter in ``image`` (pixels), see :mod:`.diameter`. A noisy
        ``image`` is denoised first, as :meth:`predict_iter` does; a ``normalised`` one is
        taken as it is (the caller has decided)."""
        from .diameter import estimate_diameter

        if normalised:
            return estimate_diameter(self, image)
        return estimate_diameter(self, denoising.Denoiser.fit(self.prepare(image))[1])

    def predict_iter(
        self,
        image: np.ndarray,
        diameter: float | None = None,
        tile: int = 1024,
        overlap: int = 64,
        invert: bool | None = None,
        estimate: bool = True,
        normalised: bool = False,
        tta: bool | None = None,
        sharpen: bool | None = None,
        denoise: bool | None = None,
        decision: Decision | None = None,
    ) -> Generator[Progress, None, RawOutput]:
        """Yield (tiles done, tiles total); return the :class:`RawOutput` maps.

        ``image``: (H, W) or (H, W, 3) of any numeric type (or, with ``normalised``, the
        output of :meth:`prepare`). ``diameter``: typical object diameter in pixels;
        ``None`` estimates it (``estimate=False`` uses the image as it is). ``tta``: average
        the network over four flips (:mod:`.tta`; default: the predictor's ``tta``). The size
        estimate never flips: it only needs object sizes. ``sharpen``: unsharp-mask the image
        before it is enlarged (:mod:`.sharpen`): ``None`` as :meth:`sharpens` says, ``True``
        at any enlargement; never when the image is not enlarged. ``denoise``: non-local means
        before anything else (:mod:`.denoise`): ``None`` when the image is noisier than any the
        networks learnt from, ``True``/``False`` always/never. ``decision``: from
        :meth:`decide_iter` on another plane of the same sample (a stack); ``image`` is then
        normalised and filtered already, and ``diameter``/``estimate``/``denoise`` are unused.
        """
        tta = self.tta if tta is None else bool(tta)
        diameter = check_diameter(diameter)
        if not isinstance(tile, (int, np.integer)) or tile < 16 or tile % 16:
            raise DeepCeNSError(f"tile must be a whole number of pixels, a multiple of 16; "
                                f"got {tile!r}")
        if not normalised:
            image = validate_image(image)  # a clear message for 0-D, 1-D or odd arrays
        self._check_size(np.shape(image)[-2:] if normalised else np.shape(image)[:2], diameter)
        plane = image.astype(np.float32, copy=False) if normalised else self.prepare(image, invert=invert)
        shape = plane.shape[-2:]
        if decision is None:
            plane, decision = yield from self.decide_iter(plane, diameter, estimate, denoise)
        diameter, estimated, unrecognised = decision.diameter, decision.estimated, decision.unrecognised
        denoised, scale = decision.denoiser is not None, decision.scale
        work = plane
        sharpened = self.sharpens(scale) if sharpen is None else bool(sharpen) and scale > 1.0
        if scale != 1.0:
            self._check_size(shape, diameter)  # an estimated diameter may enlarge the image
            size = (max(round(shape[0] * scale), 16), max(round(shape[1] * scale), 16))
            work = resize(sharpening.unsharp(plane) if sharpened else plane, size)
        zoom = (work.shape[-2] / shape[0], work.shape[-1] / shape[1])  # each axis's, as it ran
        if self.kind == "detection":
            dets: dict[str, np.ndarray] = {}
            work = work if work.ndim == 3 else work[None]
            detect = (lambda t: flip_fused_detections(self._detect_tile, t)) if tta else self._detect_tile
            for item in detect_tiled(work, detect, tile=tile, overlap=max(overlap, 128),
                                     multiple=self.model.SIZE_MULTIPLE,
                                     nms_iou=self.model.config.nms_threshold):
                if isinstance(item, dict):
                    dets = item
                else:
                    yield item
            if scale != 1.0:  # each axis by the zoom it got (sizes are rounded to pixels)
                dets["boxes"] = dets["boxes"] / np.array([zoom[1], zoom[0]] * 2, np.float32)
            channels = plane if plane.ndim == 3 else plane[None]
            stains = {name: smooth_stain(channels[k], self.info.zoom_diameter / scale).astype(np.float16)
                      for name, k in self.info.stain_outlines.items()}
            return RawOutput(maps=dets, shape=shape, scale=scale, diameter=diameter,
                             estimated=estimated, size_unrecognised=unrecognised,
                             meta={"model": self.model_name, "kind": "detection", "tta": tta,
                                   "sharpened": sharpened, "denoised": denoised},
                             stains=stains)
        multiple = 2 ** getattr(self.model.config, "depth", 4)
        strides = self.strides
        maps: dict[str, np.ndarray] = {}
        predict = (lambda t: flip_averaged_maps(self._predict_tile, t)) if tta else self._predict_tile
        for item in predict_tiled(work, predict, strides, tile=tile, overlap=overlap,
                                  multiple=multiple):
            if isinstance(item, dict):
                maps = item
            else:
                yield item
        for name, values in maps.items():
            if strides[name] == 1 and scale != 1.0:
                values = resize(values, shape)
            maps[name] = values[0] if values.shape[0] == 1 else values
        return RawOutput(
            maps=maps,
            shape=shape,
            strides=strides,
            scale=scale,
            diameter=diameter,
            estimated=estimated,
            size_unrecognised=unrecognised,
            meta={"model": self.model_name, "tta": tta, "sharpened": sharpened,
                  "zoom": zoom,
                  "denoised": denoised},
        )

    def decide_iter(self, plane: np.ndarray, diameter: float | None = None, estimate: bool = True,
                    denoise: bool | None = None
                    ) -> Generator[Progress, None, tuple[np.ndarray, Decision]]:
        """The choices that depend on the sample, made on a normalised ``plane``: denoise it
        (``None``: only when noisier than the training data; the filter yields between blocks,
        so Cancel need not wait for it), then estimate the object size unless ``diameter`` is
        given (an estimate within :data:`SNAP` of the working size runs at ×1). Returns the
        plane as the network will see it (before any zoom) and the :class:`Decision`."""
        fitted = None
        if denoise is not False:
            fitted, plane = yield from relay(
                denoising.Denoiser.fit_iter(plane, force=denoise is True), lambda _block: (0, 1))
            fitted = fitted if fitted.filters else None
        estimated = unrecognised = False
        if diameter is None and estimate and self.info.median_diameter > 0:
            found = self.estimate_diameter(plane, normalised=True).diameter
            if found is not None:
                diameter, estimated = found, True
            unrecognised = found is None
        scale = self.scale_for(diameter)
        if estimated and abs(np.log(scale)) < np.log(SNAP):
            scale = 1.0
        return plane, Decision(fitted, diameter, estimated, unrecognised, scale)

    def sharpens(self, scale: float) -> bool:
        """Whether an image enlarged ``scale`` times is unsharp-masked first (:mod:`.sharpen`):
        for weights that measured it (``sharpen_enlarged``), from ×2.5."""
        return self.info.sharpen_enlarged and scale >= sharpening.SHARPEN_FROM

    def predict(self, image: np.ndarray, **kwargs) -> RawOutput:
        """:meth:`predict_iter` drained, for scripts."""
        return drain(self.predict_iter(image, **kwargs))

    def instances(self, raw: RawOutput, params: PostprocessParams | dict | None = None) -> Segmentation:
        """Labels (and boxes, for detection models) from cached maps; never runs the network.
        ``params``: :class:`PostprocessParams`, or a dict of the thresholds to change."""
        if isinstance(params, dict):
            unknown = set(params) - set(PostprocessParams.__dataclass_fields__)
            if unknown:
                raise DeepCeNSError(f"unknown thresholds {sorted(unknown)}: choose from "
                                    f"{sorted(PostprocessParams.__dataclass_fields__)}")
            params = PostprocessParams(**{**self.default_params(raw.scale).to_dict(), **params})
        params = params or self.default_params(raw.scale)
        if raw.meta.get("kind") == "detection":
            found = class_instances(raw.maps, raw.shape, self.class_names, params, raw.stains,
                                    diameter=self.info.zoom_diameter / raw.scale)
            names = list(found)
            main = "nucleus" if "nucleus" in found else names[0]
            parts = {n: Segmentation(labels, boxes, n) for n, (labels, boxes) in found.items()}
            primary = parts.pop(main)
            primary.others = parts
            return primary
        if "heatmap" in raw.maps:
            m = raw.maps
            found = decode_centers(m["heatmap"], m["size"], m["offset"], m["angle2"],
                                   params.score_threshold, stride=raw.strides["heatmap"])
            zoom = raw.meta.get("zoom") or (raw.scale, raw.scale)  # each axis's, as it ran
            labels, kept = seeded_instances(m["segmentation"], found.scaled_xy(1 / zoom[1], 1 / zoom[0]),
                                            params)
            return Segmentation(labels, kept)
        fg, dist = raw.maps["foreground"], raw.maps["distance"]
        labels = instances_from_maps(fg, dist, params, object_scale=1.0 / raw.scale)
        if self.object_scorer is None:
            return Segmentation(labels)
        scores = self.object_scorer.score(labels, fg, dist, object_scale=1.0 / raw.scale)
        scores = scores.astype(np.float32)
        if params.score_threshold > 0:
            labels = drop_low_scores(labels, scores, params.score_threshold)
            scores = scores[scores >= params.score_threshold]
        return Segmentation(labels, scores=scores)

    def postprocess(self, raw: RawOutput, params: PostprocessParams | dict | None = None) -> np.ndarray:
        """Instance labels from cached maps: cheap, never runs the network."""
        return self.instances(raw, params).labels

    def segment(self, image: np.ndarray, params: PostprocessParams | dict | None = None,
                **kwargs) -> np.ndarray:
        """Image → (H, W) int32 instance labels in one call."""
        return self.postprocess(self.predict(image, **kwargs), params)
