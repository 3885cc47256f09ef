"""The dock widget: pick an image and a model, Run, then tune thresholds live.

Qt and magicgui only: every computation is the public API of :mod:`napari_deepcens.inference`
(the same calls the CLI makes), run in napari thread workers so the viewer never freezes.
The network runs once per image; the sliders re-run only the watershed on the cached maps.

Nothing the user made is lost: when a Labels layer the widget wrote has since been edited by
hand, a new run or a slider move first keeps the edited version as a layer of its own.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..errors import DeepCeNSError
from ..inference.denoise import CHOICES
from ..io.images import nuclei_in_blue, pair_stains
from ..io.paths import results_root
from ..models.registry import PRESETS, get_preset
from ..wording import count_of, counts_of
from .autosave import autosaver_for
from .history import forget_planes, history_max
from .keys import CLASS_KEY, EDITED_KEY, MULTI_KEY, PROVENANCE_KEY, SOURCE_KEY
from .layers import (
    box_of_label,
    displayed_plane,
    made_here,
    mark_made,
    napari_corners_of,
    object_in_box,
    stack_axes,
)
from .status import status_label
from .workers import relay_warnings, show_warnings, stop_on_close

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..inference.predictor import Predictor, RawOutput

log = logging.getLogger(__name__)



def _predictor_key(model: str, weights: Path | None, device: str) -> tuple:
    return model, str(weights) if weights else None, device


@dataclass(frozen=True)
class _Failed:
    """A user error carried back from a worker (a returned exception would be re-raised)."""

    error: DeepCeNSError


@thread_worker
def _segment_worker(load, image: np.ndarray, diameter: float | None, estimate: bool, params,
                    tta: bool = False, name: str = "", denoise: bool | None = None):
    """Load the model (first time only), predict tile by tile, post-process.

    User errors come back as the result (shown as one clear notification); only bugs raise,
    and napari reports those with their traceback. Library warnings about the image ``name``
    (NaN pixels, a grey image for a colour model) become warning notifications.
    """
    try:
        with relay_warnings(f"{name}: " if name else ""):
            predictor = load()
            raw = yield from predictor.predict_iter(image, diameter=diameter, estimate=estimate,
                                                    tta=tta, denoise=denoise)
            params = params or predictor.default_params(raw.scale)
            seg = predictor.instances(raw, params)
            import pandas  # noqa: F401  napari's first Labels layer imports it: here, off the GUI thread
            return predictor, raw, params, seg
    except DeepCeNSError as exc:
        return _Failed(exc)


def _common_start(a: str, b: str) -> int:
    """How many leading characters two names share (``field2 DAPI``, ``field2 tubulin``: 7)."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


#: Layer names that say "cytoplasm stain", to pair a nuclear layer when several could be it.
CYTO_NAMES = ("cyto", "cell", "actin", "tubulin", "phalloidin", "membrane", "wga")

#: Quiet time after a run before the predictors' runtime memory is given back.
RELEASE_AFTER_MS = 60_000

#: Images above this many pixels (and multiscale or Dask-backed layers) are segmented chunk by
#: chunk on Dask (scale/): in one piece their cached maps alone would take ~40 bytes a pixel.
CHUNKED_ABOVE = 16_000_000
#: Chunk side of the chunked path (plus a halo of context around each chunk).
CHUNK = 1024
#: Stacks: at most this many pixels segmented in one run here (4 bytes of labels a pixel).
STACK_LABELS_ABOVE = 500_000_000


@thread_worker
def _chunked_worker(load, spec, image, output, scheduler: str | None, diameter, estimate, params, cancel):
    """The chunked path (scale/chunked.py) on a local cluster or ``scheduler``; yields per chunk
    task. Cancel sets ``cancel``: the run stops at the next finished task and writes nothing."""
    from ..scale.chunked import segment_chunked_iter
    from ..scale.cluster import dask_client

    try:
        predictor = load()
        with relay_warnings(), dask_client(scheduler) as client:
            result = yield from segment_chunked_iter(
                client, image, output, spec, predictor=predictor, chunk=CHUNK, diameter=diameter,
                estimate=estimate,
                params=params, table=output.with_name(output.name.replace(".zarr", "_objects.csv")),
                cancel=cancel)
        return result
    except DeepCeNSError as exc:
        return _Failed(exc)


@thread_worker
def _stack_worker(load, data, planes, rgb: bool, diameter, estimate: bool, params, tta: bool,
                  denoise, keep_maps: bool, name: str = ""):
    """A stack's planes one after the other (inference/stack.py); yields (tiles done, total),
    so Cancel stops it between tiles."""
    from ..inference.stack import segment_stack_iter

    try:
        with relay_warnings(f"{name}: " if name else ""):
            predictor = load()
            result = yield from segment_stack_iter(
                predictor, data, planes=planes, rgb=rgb, diameter=diameter, estimate=estimate,
                params=params, tta=tta, denoise=denoise, keep_maps=keep_maps)
            return predictor, result
    except DeepCeNSError as exc:
        return _Failed(exc)


@thread_worker
def _restack_worker(predictor, result, params):
    """Live thresholds on a stack: every plane whose maps were kept, re-thresholded."""
    from ..inference.stack import restack

    try:
        return (yield from restack(predictor, result, params))
    except DeepCeNSError as exc:
        return _Failed(exc)


@thread_worker
def _postprocess_worker(predictor, raw, params):
    try:
        return predictor.instances(raw, params)
    except DeepCeNSError as exc:
        return _Failed(exc)


def _box_rows(boxes: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box table rows (label numbers offset per plane), each row's plane index, its class."""
    from ..postprocess.centers import Detections

    rows, prefix, classes = [], [], []
    width = 0
    for name, found in boxes.items():
        if found is None:
            continue
        items = [((), found, 0)] if isinstance(found, Detections) else found
        for index, dets, offset in items:
            width = len(index)
            table = dets.table()
            if not len(table):
                continue
            table = table.copy()
            table[:, 0] += offset
            rows.append(table)
            prefix.append(np.tile(np.asarray(index, np.float64), (len(table), 1)).reshape(len(table), -1))
            classes.append(np.full(len(table), name, dtype=object))
    if not rows:
        return np.zeros((0, 7)), np.zeros((0, width)), np.zeros(0, dtype=object)
    return np.concatenate(rows), np.concatenate(prefix), np.concatenate(classes)


def _digest(plane: np.ndarray) -> bytes:
    """A fingerprint of a labels plane, to tell the user's edits from what the widget wrote."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(plane).tobytes(), digest_size=16).digest()


def layer_plane(layer: napari.layers.Image) -> np.ndarray:
    """The pixels of an image layer as one in-memory array (level 0 of a pyramid)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return np.asarray(data)


def _fresh_output(folder: Path, stem: str) -> Path:
    """``folder/stem.zarr``, or ``stem-2.zarr``, … when a run of the same second wrote it or
    is writing it (its temporary store ``.stem.zarr.tmp-…``): results are never overwritten."""
    n, name = 1, f"{stem}.zarr"
    while (folder / name).exists() or any(folder.glob(f".{name}.tmp-*")):
        n += 1
        name = f"{stem}-{n}.zarr"
    return folder / name


class SegmentWidget(Container):
    """Segment nuclei in an image layer into a Labels layer, with live thresholds."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        import napari

        self._viewer = viewer
        self._image = create_widget(annotation=napari.layers.Image, label="image")
        self._model = ComboBox(label="model", choices=[(p.label, n) for n, p in PRESETS.items()],
                               value="unet")
        self._cyto = create_widget(annotation=napari.layers.Image | None, label="cytoplasm",
                                   options={"tooltip": "two-stain models: the layer of the "
                                            "cytoplasm stain (the image above is the nuclear "
                                            "stain); not needed for an RGB image with red "
                                            "nuclei and green cytoplasm"})
        self._weights = FileEdit(label="weights", mode="r", filter="*.safetensors", value=None,
                                 nullable=True, tooltip="empty: the weights bundled with the plugin")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto",
                                tooltip="auto: the GPU when torch sees one, else the CPU")
        self._auto_diameter = CheckBox(text="estimate object size", value=True,
                                       tooltip="measure the nuclei's size on the image; untick "
                                       "to type the diameter yourself")
        self._diameter = FloatSpinBox(label="diameter (px)", value=0.0, min=0.0, max=2000.0,
                                      step=1.0, enabled=False,
                                      tooltip="typical nucleus diameter in pixels (shows the "
                                      "estimate while 'estimate object size' is ticked)")
        self._tta = CheckBox(text="flip averaging (4× slower)", value=False,
                             tooltip="run the network on four mirrored copies of the image and "
                             "average them: better outlines (most for DeepCeNS), four times "
                             "the time")
        self._denoise = ComboBox(label="denoise",
                                 choices=[("auto (noisy images)", "auto"), ("always", "yes"),
                                          ("never", "no")], value="auto",
                                 tooltip="non-local means before segmenting; auto: only images "
                                 "noisier than any the models were trained on (little light)")
        self._planes = ComboBox(label="planes", choices=[("this plane", "current"),
                                                         ("all planes", "all")], value="current",
                                tooltip="a time-lapse or z-stack: segment the plane on screen, "
                                "or every plane (one object size for all)")
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self._status = status_label(value="pick an image and press Run")
        self._fg = FloatSlider(label="foreground", value=0.5, min=0.05, max=0.95, step=0.01,
                               tooltip="probability above which a pixel is nucleus")
        self._seed = FloatSlider(label="seed", value=0.1, min=0.01, max=0.9, step=0.01,
                                 tooltip="lower splits touching nuclei more eagerly, "
                                 "higher merges them")
        self._score = FloatSlider(label="score", value=0.3, min=0.0, max=0.99, step=0.01,
                                  tooltip="objects scoring below this are dropped (how likely "
                                  "each is a nucleus an annotator would draw); 0 keeps all")
        self._min_size = SpinBox(label="min size (px)", value=10, min=0, max=100_000,
                                 tooltip="objects smaller than this are dropped")
        self._outline = FloatSlider(label="cell edge", value=0.0, min=0.0, max=1.0, step=0.01,
                                    visible=False,
                                    tooltip="where a cell's outline is drawn on the cytoplasm "
                                    "stain: lower reaches into its dim rim, higher keeps its "
                                    "bright body; 0 keeps the network's outline")
        self.extend([self._image, self._model, self._cyto, self._weights, self._device,
                     self._auto_diameter, self._diameter, self._tta, self._denoise,
                     self._planes, self._run, self._cancel, self._progress, self._status,
                     self._fg, self._seed, self._score, self._outline, self._min_size])
        self._scheduler = LineEdit(label="scheduler", value="",
                                   tooltip="large images: a dask.distributed scheduler address "
                                   "(tcp://host:8786); empty: a local cluster on this machine")
        self.insert(self.index(self._run), self._scheduler)
        self._image.changed.connect(self._update_scheduler)
        self._update_scheduler()
        self._image.changed.connect(self._update_planes)
        self._update_planes()
        self._chunk_cancel = None

        self._predictors: dict[tuple, Predictor] = {}
        # the network runtime's memory (ONNX Runtime's arena, ~0.35 GB) is what makes the
        # next run fast; kept while the user works, given back after a quiet minute
        self._release_timer = QTimer(self.native)
        self._release_timer.setSingleShot(True)
        self._release_timer.setInterval(RELEASE_AFTER_MS)
        self._release_timer.timeout.connect(self._release_memory)
        self._raw: dict[int, tuple[Predictor, RawOutput]] = {}  # image layer id -> cached maps
        self._worker = None
        self._post_worker = None
        self._post_pending = False
        self._user_knobs = False  # until the user moves a knob, each model's tuned values apply
        self._started = 0.0
        self._writing_boxes = False
        self._stack_boxes: dict[int, dict] = {}  # image layer id -> class -> plane -> boxes
        self._plane_sizes: dict[int, dict] = {}  # image layer id -> plane -> diameter it ran at
        self._written: dict[int, dict] = {}  # labels layer id -> plane -> digest of what we wrote
        self._cyto_of: dict[int, str] = {}  # image layer id -> cytoplasm layer it ran with
        self._auto_cyto = lambda: None  # the cytoplasm layer the widget chose itself (weak)
        self._estimates: dict[int, float] = {}  # image layer id -> object size estimated on it

        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        for knob in (self._fg, self._seed, self._score, self._outline, self._min_size):
            knob.changed.connect(self._on_knob)
        self._model.changed.connect(self._on_model_change)
        self._image.changed.connect(self._update_stains)
        self._image.changed.connect(self._show_image_state)
        self._auto_diameter.changed.connect(self._on_auto_diameter)
        self._weights.changed.connect(self._update_score_knob)
        self._weights.changed.connect(self._update_stains)
        self._update_score_knob()
        self._update_stains()
        viewer.layers.events.removed.connect(self._forget_layer)
        viewer.layers.events.inserted.connect(self._update_stains)  # a second channel opened
        # hand edits of the labels this tab writes are autosaved (one saver per viewer)
        self._autosaver = autosaver_for(viewer)
        self._auto_diameter.changed.connect(lambda auto: setattr(self._diameter, "enabled", not auto))

    # ------------------------------------------------------------------ helpers
    def _params(self):
        from ..postprocess.params import PostprocessParams

        return PostprocessParams(fg_threshold=float(self._fg.value),
                                 seed_threshold=float(self._seed.value),
                                 score_threshold=float(self._score.value),
                                 outline_threshold=float(self._outline.value),
                                 min_size=int(self._min_size.value))

    def _set_knobs(self, params) -> None:
        """Show a model's tuned thresholds without triggering a post-processing per knob."""
        for knob, value in ((self._fg, params.fg_threshold), (self._seed, params.seed_threshold),
                            (self._score, params.score_threshold), (self._min_size, params.min_size),
                            (self._outline, params.outline_threshold)):
            with knob.changed.blocked():
                knob.value = value

    def chosen_weights(self) -> Path | None:
        """The weights file in the field, or ``None`` for the bundled weights."""
        weights = self._weights.value
        if weights is None or str(weights) in ("", ".") or Path(weights).is_dir():
            return None
        return Path(weights)

    def _loader(self):
        model, weights, device = self._model.value, self.chosen_weights(), self._device.value
        key = _predictor_key(model, weights, device)

        def load():
            if key not in self._predictors:
                from ..inference.predictor import Predictor

                self._predictors[key] = Predictor.from_name(model, weights=weights, device=device)
            return self._predictors[key]

        return load, key

    def _busy(self, busy: bool) -> None:
        self._run.enabled = not busy
        self._cancel.enabled = busy

    def _error(self, exc: Exception) -> None:
        if isinstance(exc, DeepCeNSError):
            message = str(exc)
        else:
            log.exception("unexpected error", exc_info=exc)
            message = f"unexpected error ({type(exc).__name__}): {exc}"
        self._status.value = message
        show_error(message)

    # ------------------------------------------------------------------ run / cancel
    def run(self) -> None:
        """Start segmenting the chosen image layer in a thread worker."""
        layer = self._image.value
        if layer is None:
            self._error(DeepCeNSError("no image layer: open an image or a sample first"))
            return
        if self._worker is not None:
            return
        try:
            leading = stack_axes(layer)
        except Exception:
            leading = ()
        if leading:
            self._run_stack(layer, leading)
            return
        if self._is_large(layer):
            self._run_chunked(layer)
            return
        try:
            image = layer_plane(layer)
        except Exception as exc:
            self._error(DeepCeNSError(f"cannot read layer {layer.name!r}: {exc}"))
            return
        try:
            image, _rgb, cyto = self._stains(layer, image)
        except DeepCeNSError as exc:
            self._error(exc)
            return
        load, _key = self._loader()
        diameter = None if self._auto_diameter.value else (float(self._diameter.value) or None)
        estimate = bool(self._auto_diameter.value)
        self._progress.value, self._progress.max = 0, 1
        self._status.value = f"segmenting {layer.name}…"
        self._started = time.perf_counter()
        params = self._params() if self._user_knobs else None
        worker = _segment_worker(load, image, diameter, estimate, params, bool(self._tta.value),
                                 layer.name, CHOICES[self._denoise.value])
        self._start(worker, lambda result, layer=layer, c=cyto: self._on_segmented(layer, result, c))

    def _start(self, worker, returned, finished=None) -> None:
        """Wire a segmentation worker to the progress bar, the status line and Cancel, and
        start it; ``returned`` gets its result."""
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(returned)
        worker.aborted.connect(lambda: setattr(self._status, "value", "cancelled: nothing changed"))
        # Cancel after the last tile: the worker ends with neither a result nor "aborted"
        worker.finished.connect(self._cancelled_late)
        worker.finished.connect(finished or self._on_finished)
        self._worker = worker
        stop_on_close(self.native, worker)
        show_warnings(worker)
        self._busy(True)
        worker.start()

    def cancel(self) -> None:
        """Ask the running segmentation to stop at the next tile."""
        if self._chunk_cancel is not None:  # chunked: stop at the next task, clean up
            self._status.value = "cancelling…"
            self._chunk_cancel.set()
        elif self._worker is not None:
            self._status.value = "cancelling…"
            self._worker.quit()

    def _show_image_state(self, *_args) -> None:
        """What the status line and the diameter field say belongs to the image chosen now:
        switched to another image, they kept the last image's result and estimate."""
        if self._worker is not None:
            return  # a run's own status
        layer = self._image.value
        if self._auto_diameter.value:
            estimate = self._estimates.get(id(layer)) if layer is not None else None
            self._diameter.value = round(float(estimate), 1) if estimate else 0.0
        if layer is not None and id(layer) not in self._raw and self.labels_layer(layer) is None:
            self._status.value = f"press Run to segment {layer.name!r}"

    def _on_auto_diameter(self, auto: bool) -> None:
        """Ticked: the field shows the image's estimate; unticked again: the diameter the user
        had typed comes back."""
        if auto:
            self._typed_diameter = float(self._diameter.value)
            self._show_image_state()
        elif self._typed_diameter:
            self._diameter.value = self._typed_diameter

    _typed_diameter = 0.0

    def _cancelled_late(self) -> None:
        if self._status.value == "cancelling…":
            self._status.value = "cancelled: nothing changed"
            self._progress.value = 0

    def _on_progress(self, progress: tuple[int, int]) -> None:
        done, total = progress
        self._progress.max = max(total, 1)
        self._progress.value = done

    def _on_finished(self) -> None:
        self._worker = None
        self._busy(False)
        self._release_timer.start()

    def _release_memory(self) -> None:
        """Give back what the cached predictors' runtimes keep between runs, unless a run
        is under way (it will restart the timer when it ends)."""
        if self._worker is None:
            for predictor in self._predictors.values():
                predictor.release_memory()

    def _on_segmented(self, layer, result, cyto: str | None = None) -> None:
        if isinstance(result, _Failed):
            self._error(result.error)
            return
        if layer not in self._viewer.layers:  # removed while it ran: keep nothing of it
            self._status.value = f"{layer.name!r} was removed during the run: result discarded"
            return
        predictor, raw, params, seg = result
        self._raw[id(layer)] = (predictor, raw)
        self._ran_with(layer, cyto)
        self._set_knobs(params)
        self._show_segmentation(layer, seg)
        if raw.estimated and raw.diameter:
            self._diameter.value = round(raw.diameter, 1)
            self._estimates[id(layer)] = raw.diameter
        seconds = time.perf_counter() - self._started
        size = f", diameter {raw.diameter:.1f} px{' (estimated)' if raw.estimated else ''}" if (
            raw.diameter) else ""
        if raw.size_unrecognised:
            size = ", object size not recognised: run as it is (set the diameter if needed)"
        flips = ", 4 flips averaged" if raw.meta.get("tta") else ""
        sharp = ", edges sharpened before enlarging" if raw.meta.get("sharpened") else ""
        noisy = ", denoised first" if raw.meta.get("denoised") else ""
        self._status.value = f"{self._count(seg)} in {seconds:.1f} s{flips}{size}{sharp}{noisy}"

    def _update_score_knob(self) -> None:
        """Show the score knob where it does something: detection models, and U-Net weights
        that carry an object scorer; and the cell-edge knob for weights that outline cells on
        a stain (read from the file's metadata, not the network)."""
        from ..models.registry import bundled_weights
        from ..models.weights import read_info

        try:
            info = read_info(self.chosen_weights() or bundled_weights(self._model.value))
        except (DeepCeNSError, TypeError, ValueError):
            info = None  # a bad file: Run says what is wrong with it
        self._score.visible = (info is None or get_preset(self._model.value).model != "unet"
                               or bool(info.object_scorer))
        self._outline.visible = info is not None and bool(info.stain_outlines)

    def _stain_count(self) -> int:
        """Input channels of the chosen weights (read from the file's header, not loaded)."""
        from ..models.registry import bundled_weights
        from ..models.weights import read_info

        try:
            info = read_info(self.chosen_weights() or bundled_weights(self._model.value))
            return int(info.config.get("in_channels", 1))
        except (DeepCeNSError, TypeError, ValueError):
            return 1  # a bad file: Run says what is wrong with it

    def _update_stains(self, *_args) -> None:
        """The cytoplasm picker matters for two-stain models only: show it for those, with
        the cytoplasm layer already chosen where the open layers say which it is."""
        two = self._stain_count() > 1
        self._cyto.visible = two
        if two:
            self._pick_cytoplasm()

    def _pick_cytoplasm(self) -> None:
        """Choose the cytoplasm layer when the user has not: the one other grey layer of the
        image's size or, among several, the one that shares most of the image's name
        (``field2 DAPI`` → ``field2 tubulin``), or, where no name shares a start with it, the
        one whose name says cytoplasm (``DAPI`` → ``Tubulin 488``). Why: a two-channel file
        opens as two layers, and a user who picks the cells model should not have to find a
        second drop-down before Run. A choice of the user's stays while it fits; the widget's
        own is made again when the image changes; an ambiguous one (a tie, as ``field1 DAPI``
        beside ``field2 DAPI`` and ``field2 tubulin``) is left to the user."""
        layer, current = self._image.value, self._cyto.value
        if layer is None or getattr(layer, "rgb", False):
            return

        def side(lay) -> tuple:
            return tuple((lay.data[0] if lay.multiscale else lay.data).shape)

        fits_now = (current is not None and current is not layer and not current.rgb
                    and side(current) == side(layer))
        if fits_now and current is not self._auto_cyto():
            return  # the user's choice
        import napari

        fits = [lay for lay in self._viewer.layers
                if isinstance(lay, napari.layers.Image) and lay is not layer and not lay.rgb
                and side(lay) == side(layer)]
        shared = [_common_start(lay.name, layer.name) for lay in fits]
        best = [lay for lay, n in zip(fits, shared, strict=True) if n == max(shared, default=0)]
        if len(fits) > 1 and max(shared, default=0) == 0:  # no name like the image's
            best = [lay for lay in fits if any(w in lay.name.lower() for w in CYTO_NAMES)]
        chosen = best[0] if len(best) == 1 else None
        self._cyto.reset_choices()
        if chosen is not current:
            with self._cyto.changed.blocked():
                self._cyto.value = chosen
        self._auto_cyto = weakref.ref(chosen) if chosen is not None else lambda: None

    def _ran_with(self, layer, cyto: str | None) -> None:
        """Remember the cytoplasm layer a result was segmented with (provenance; export)."""
        if cyto is None:
            self._cyto_of.pop(id(layer), None)
        else:
            self._cyto_of[id(layer)] = cyto

    def _stains(self, layer, data):
        """What a two-stain model is given for ``layer``: (data, rgb, name of the cytoplasm
        layer or ``None``). An RGB layer goes as
        it is (red nuclei, green cytoplasm); a grey one is paired with the cytoplasm layer
        (red nuclear, green cytoplasm, blue empty, as the model was trained). One-stain
        models get the layer unchanged."""
        rgb = bool(getattr(layer, "rgb", False))
        stains = self._stain_count()  # reads the weights file's header
        if stains > 1 and rgb and nuclei_in_blue(data):
            raise DeepCeNSError(
                f"{layer.name!r} has an empty red channel beside a blue one: nuclei in blue and "
                "cytoplasm in green? This model reads red as the nuclear stain: split the "
                "image (right-click the layer, Split RGB), then choose the blue layer as image "
                "and the green one as cytoplasm")
        if stains == 1 or rgb:
            return data, rgb, None
        cyto = self._cyto.value
        if cyto is None or cyto is layer:
            raise DeepCeNSError(
                f"{PRESETS[self._model.value].label} needs two stains: choose the cytoplasm "
                f"stain's layer in 'cytoplasm' ({layer.name!r} is taken as the nuclear stain), "
                "or open an RGB image with red nuclei and green cytoplasm")
        other = cyto.data[0] if cyto.multiscale else cyto.data
        if cyto.rgb or other.shape != data.shape:
            raise DeepCeNSError(f"the cytoplasm layer {cyto.name!r} {tuple(other.shape)} does "
                                f"not match {layer.name!r} {tuple(data.shape)}: both stains "
                                "must be grey images of the same size")
        if data.ndim > 2:  # a stack: paired lazily, plane by plane as the worker reads them
            import dask.array as da

            data, other = da.asarray(data), da.asarray(other)
        else:  # one plane, read now
            other = np.asarray(other)
        return pair_stains(data, other), True, cyto.name

    def _forget_layer(self, event) -> None:
        """Drop the cached maps of a removed image layer (they can be hundreds of MB)."""
        self._raw.pop(id(event.value), None)
        self._stack_boxes.pop(id(event.value), None)
        self._plane_sizes.pop(id(event.value), None)
        self._cyto_of.pop(id(event.value), None)
        self._written.pop(id(event.value), None)
        self._estimates.pop(id(event.value), None)
        for layer in self._viewer.layers:  # a new layer may get the same id(): unlink
            if layer.metadata.get(SOURCE_KEY) == id(event.value):
                layer.metadata[SOURCE_KEY] = None

    def _on_model_change(self) -> None:
        self._weights.value = None
        self._user_knobs = False
        layer = self._image.value
        if layer is not None and id(layer) in self._raw:
            self._status.value = (f"model changed: press Run to segment with "
                                  f"{PRESETS[self._model.value].label}")
        architecture = get_preset(self._model.value).model
        self._seed.visible = architecture == "unet"
        self._update_score_knob()
        self._update_stains()
        self._fg.label = "mask" if architecture == "deepcens" else "foreground"

    # ------------------------------------------------------------------ live thresholds
    def _on_knob(self) -> None:
        self._user_knobs = True
        layer = self._image.value
        if layer is None:
            return
        if id(layer) not in self._raw:
            labels = self.labels_layer(layer)
            if labels is not None and "deepcens_zarr" in labels.metadata:
                self._status.value = ("large image: no maps are kept, so the thresholds apply "
                                      "at the next Run")
            elif self._worker is None:  # during a run, its own status stands
                self._status.value = f"press Run to segment {layer.name!r}; the thresholds apply then"
            return
        if self._raw[id(layer)][0] is not self._predictors.get(self._loader()[1]):
            # the maps came from other weights (another model, preset or file) than chosen now
            self._status.value = (f"the thresholds belong to {PRESETS[self._model.value].label}: "
                                  "press Run to segment with it first")
            return
        if self._post_worker is not None:  # coalesce fast slider moves
            self._post_pending = True
            return
        predictor, raw = self._raw[id(layer)]
        try:
            params = self._params()
        except ValueError as exc:
            self._error(DeepCeNSError(str(exc)))
            return
        if hasattr(raw, "raws"):  # a stack: the planes whose maps were kept
            if not raw.raws:
                self._status.value = ("too many planes to keep their maps: the thresholds apply "
                                      "at the next Run")
                return
            worker = _restack_worker(predictor, raw, params)
            worker.returned.connect(
                lambda done, layer=layer, stack=raw: self._on_restacked(layer, stack, done))
        else:
            worker = _postprocess_worker(predictor, raw, params)
            worker.returned.connect(
                lambda labels, layer=layer, raw=raw: self._on_postprocessed(layer, labels, raw))
        worker.finished.connect(self._on_post_finished)
        self._post_worker = worker
        stop_on_close(self.native, worker)
        worker.start()

    def _on_postprocessed(self, layer, seg, raw=None) -> None:
        if isinstance(seg, _Failed):
            self._error(seg.error)
        elif raw is not None and self._raw.get(id(layer), (None, None))[1] is not raw:
            return  # a Run replaced those maps meanwhile: this result is stale
        else:
            self._show_segmentation(layer, seg)
            self._status.value = self._count(seg)

    def _on_restacked(self, layer, stack, done) -> None:
        """Apply a slider move's re-thresholded planes, where their maps are still the cached
        ones (a Run during the move replaces them; its planes are newer)."""
        if isinstance(done, _Failed):
            self._error(done.error)
            return
        if layer not in self._viewer.layers or self._raw.get(id(layer), (None, None))[1] is not stack:
            return
        fresh = {index: seg for index, (raw, seg) in done.items() if stack.raws.get(index) is raw}
        stack.planes.update(fresh)
        self._show_stack(layer, fresh)
        rest = len(stack.planes) - len(stack.raws)
        later = f" ({rest} without kept maps: at their next Run)" if rest else ""
        self._status.value = f"{len(stack.planes)} planes: {self._stack_count(stack)}{later}"

    def _on_post_finished(self) -> None:
        self._post_worker = None
        if self._post_pending:
            self._post_pending = False
            self._on_knob()

    # ------------------------------------------------------------------ output layers
    @staticmethod
    def _count(seg) -> str:
        parts = seg.by_class()
        if len(parts) == 1:
            return count_of(int(seg.labels.max()), "object")
        return counts_of({name: int(p.labels.max()) for name, p in parts.items()})

    def _show_segmentation(self, image_layer, seg) -> None:
        """One Labels layer per class (just "<image> labels" for one-class models) and one
        Shapes layer with every class's rotated boxes."""
        parts = seg.by_class()
        multi = len(parts) > 1
        for name, part in parts.items():
            self._show_labels(image_layer, part.labels, name if multi else None)
        if seg.boxes is not None:
            self._show_boxes(image_layer, {name: part.boxes for name, part in parts.items()}, multi)
        else:
            self._drop_boxes(image_layer)
        self._record_provenance(image_layer)

    def _drop_boxes(self, image_layer) -> None:
        """A model without boxes replaced one with: the old boxes would name other objects
        now. Boxes edited by hand are kept as a layer of their own first."""
        layer = self.boxes_layer(image_layer)
        if layer is not None:
            self._keep_edited_boxes(layer)
            self._viewer.layers.remove(layer)

    def _keep_edited_boxes(self, layer) -> None:
        """Boxes moved or deleted by hand are kept, as they are, as a layer of their own."""
        if layer.metadata.get(EDITED_KEY):
            kept = self._viewer.add_shapes(
                layer.data, shape_type=layer.shape_type, name=f"{layer.name} (edited)",
                features=layer.features, edge_color="yellow", face_color="transparent",
                edge_width=1.5, scale=layer.scale, translate=layer.translate,
                axis_labels=layer.axis_labels)
            show_info(f"your box edits were kept in the layer {kept.name!r}")

    def labels_layer(self, image_layer, cls: str | None = None) -> napari.layers.Labels | None:
        """The Labels layer this widget wrote for ``image_layer`` (and class ``cls`` of a
        multi-class model), if it is still there."""
        for layer in self._viewer.layers:
            if (layer.metadata.get(SOURCE_KEY) == id(image_layer) and layer.__class__.__name__ == "Labels"
                    and layer.metadata.get(CLASS_KEY) == cls and made_here(layer)):
                return layer
        return None

    def _show_labels(self, image_layer, labels: np.ndarray, cls: str | None = None) -> None:
        layer = self.labels_layer(image_layer, cls)
        name = f"{image_layer.name} {cls} labels" if cls else f"{image_layer.name} labels"
        if layer is None:
            layer = self._viewer.add_labels(
                labels, name=name, scale=image_layer.scale[-labels.ndim:],
                translate=image_layer.translate[-labels.ndim:],
                # the image's axis names (t, z…): linking and tracks read them
                axis_labels=tuple(image_layer.axis_labels)[-labels.ndim:],
                metadata={SOURCE_KEY: id(image_layer), EDITED_KEY: False, CLASS_KEY: cls},
            )
            mark_made(layer)
            layer.events.paint.connect(lambda _e, layer=layer: self._mark_edited(layer))
            return
        if layer.metadata.get(EDITED_KEY):
            self._keep_copy(layer)
        layer.data = labels
        if hasattr(layer, "_reset_history"):  # Ctrl+Z must not paint old pixels into new labels
            layer._reset_history()
        layer.metadata[EDITED_KEY] = False

    def boxes_layer(self, image_layer) -> napari.layers.Shapes | None:
        """The Shapes layer of rotated boxes this widget wrote for ``image_layer``."""
        for layer in self._viewer.layers:
            if (layer.metadata.get(SOURCE_KEY) == id(image_layer) and layer.__class__.__name__ == "Shapes"
                    and made_here(layer)):
                return layer
        return None

    def _show_boxes(self, image_layer, boxes: dict, multi: bool = False) -> None:
        """Rotated boxes as rectangles coloured by score, updated in place on slider moves
        (twice as fast as a new layer, and the user's layer settings stay). ``boxes``: class
        name → :class:`Detections`, or for a stack a list of (plane index, Detections, label
        offset); the ``label`` feature is the object's label in its class's Labels layer."""
        rows, prefix, classes = _box_rows(boxes)
        ndim = 2 + prefix.shape[1]
        corners = np.concatenate([np.repeat(prefix[:, None, :], 4, axis=1),
                                  napari_corners_of(rows[:, 2:7])], axis=2)
        shapes = list(corners)  # napari wants (…, row, col) per box
        features = {"label": rows[:, 0].astype(int), "class": classes, "score": rows[:, 1],
                    "width": rows[:, 4], "height": rows[:, 5], "angle": rows[:, 6]}
        layer = self.boxes_layer(image_layer)
        if layer is not None:
            self._keep_edited_boxes(layer)
            self._writing_boxes = True
            try:
                layer.selected_data = set()
                if shapes and set(layer.shape_type) != {"rectangle"}:
                    # napari gives shapes added to an empty (or mixed) layer the polygon
                    # type: rebuilt as rectangles, they still edit as boxes
                    layer.data = []
                    layer.add(shapes, shape_type="rectangle")
                else:
                    layer.data = shapes
                layer.features = features
                if shapes:
                    layer.edge_color = "score"
            finally:
                self._writing_boxes = False
            layer.metadata[EDITED_KEY] = False
            layer.metadata[MULTI_KEY] = multi
            self._link_labels_to_boxes(image_layer, boxes, multi)
            return
        layer = self._viewer.add_shapes(
            shapes or None, ndim=ndim, shape_type="rectangle", name=f"{image_layer.name} boxes",
            features=features, edge_color="score" if len(shapes) else "yellow",
            edge_colormap="plasma", face_color="transparent", edge_width=1.5,
            scale=image_layer.scale[-ndim:], translate=image_layer.translate[-ndim:],
            axis_labels=tuple(image_layer.axis_labels)[-ndim:],
            metadata={SOURCE_KEY: id(image_layer), EDITED_KEY: False, MULTI_KEY: multi},
        )
        mark_made(layer)
        layer.events.highlight.connect(lambda _e, img=image_layer: self._box_selected(img))
        layer.events.data.connect(lambda _e, layer=layer: self._boxes_changed(layer))
        self._link_labels_to_boxes(image_layer, boxes, multi)

    def _link_labels_to_boxes(self, image_layer, boxes: dict, multi: bool) -> None:
        """Selecting a label selects its box, in every labels layer of the image, new ones
        too (a labels layer deleted and made again by a run)."""
        for cls in (list(boxes) if multi else [None]):
            labels = self.labels_layer(image_layer, cls)
            if labels is not None and not labels.metadata.get("deepcens_linked"):
                labels.events.selected_label.connect(
                    lambda _e, img=image_layer, cls=cls: self._label_selected(img, cls))
                labels.metadata["deepcens_linked"] = True

    def _box_selected(self, image_layer) -> None:
        """Selecting one box selects its object in its class's Labels layer: the object that
        fills the box now, whatever the labels went through since the box was drawn
        (renumbered, merged, linked across planes, undone); a box left empty selects nothing."""
        boxes = self.boxes_layer(image_layer)
        chosen = sorted(boxes.selected_data) if boxes is not None else []
        if len(chosen) != 1:
            return
        cls = boxes.features["class"].iloc[chosen[0]] if boxes.metadata.get(MULTI_KEY) else None
        labels = self.labels_layer(image_layer, cls)
        if labels is not None:
            value = object_in_box(labels.data, np.asarray(boxes.data[chosen[0]]),
                                  int(boxes.features["label"].iloc[chosen[0]]))
            if value and labels.selected_label != value:
                labels.selected_label = value

    def _label_selected(self, image_layer, cls: str | None = None) -> None:
        """Selecting a label selects its box: the one its label names if that box holds it,
        else a box on the plane on screen that overlaps the object and holds it."""
        boxes, labels = self.boxes_layer(image_layer), self.labels_layer(image_layer, cls)
        if boxes is None or labels is None or not len(boxes.data):
            return
        value = int(labels.selected_label)
        mine = np.ones(len(boxes.data), bool)
        if cls is not None and boxes.metadata.get(MULTI_KEY):
            mine = boxes.features["class"].to_numpy() == cls
        named = np.flatnonzero(mine & (boxes.features["label"].to_numpy() == value))
        every = boxes.data if len(named) else []  # one read: napari rebuilds it on each
        found = [int(i) for i in named
                 if object_in_box(labels.data, np.asarray(every[i]), value) == value]
        if not found and value:
            found = box_of_label(labels, self._viewer, boxes, mine, value)
        wanted = {found[0]} if found else set()
        if set(boxes.selected_data) != wanted:
            boxes.selected_data = wanted

    def _record_provenance(self, image_layer) -> None:
        """What made the labels, for the export's provenance record."""
        if id(image_layer) not in self._raw:
            return
        predictor, raw = self._raw[id(image_layer)]
        source = getattr(getattr(image_layer, "source", None), "path", None)
        for layer in self._viewer.layers:
            if (layer.metadata.get(SOURCE_KEY) == id(image_layer) and layer.__class__.__name__ == "Labels"
                    and made_here(layer)):
                layer.metadata[PROVENANCE_KEY] = self._provenance(predictor, raw, source, image_layer,
                                                                  layer.metadata.get(CLASS_KEY))

    def _provenance(self, predictor, raw, source, image_layer, cls: str | None) -> dict:
        stack = {"plane_diameters": dict(self._plane_sizes.get(id(image_layer), {}))} if hasattr(
            raw, "raws") else {}  # a stack: the size each plane ran at (runs may differ)
        return {**stack,
            "class": cls or (predictor.class_names[0] if len(predictor.class_names) == 1 else None),
            "source": str(source) if source else image_layer.name,
            "model": predictor.model_name,
            "weights": str(predictor.weights_path),
            "weights_sha256": predictor.weights_hash,
            "thresholds": self._params().to_dict(),
            "diameter": raw.diameter,
            "diameter_estimated": raw.estimated,
            "flip_averaged": bool(raw.meta.get("tta", False)),
            "sharpened": bool(raw.meta.get("sharpened", False)),
            "denoised": bool(raw.meta.get("denoised", False)),
            "segmented": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"cytoplasm": self._cyto_of[id(image_layer)]} if id(image_layer) in self._cyto_of
               else {}),
        }

    @staticmethod
    def _mark_edited(layer) -> None:
        layer.metadata[EDITED_KEY] = True

    def _boxes_changed(self, layer) -> None:
        """A box added, moved or deleted by the user (not by this widget) is a hand edit."""
        if not self._writing_boxes:
            layer.metadata[EDITED_KEY] = True

    def _update_scheduler(self, *_args) -> None:
        """The Dask scheduler field matters for large images only: show it for those."""
        layer = self._image.value
        try:
            self._scheduler.visible = (layer is not None and not stack_axes(layer)
                                       and self._is_large(layer))
        except Exception:
            self._scheduler.visible = False

    # ------------------------------------------------------------------ stacks (time, z)
    def _update_planes(self, *_args) -> None:
        """The planes choice matters for stacks only: show it for those."""
        layer = self._image.value
        try:
            self._planes.visible = layer is not None and bool(stack_axes(layer))
        except Exception:
            self._planes.visible = False

    def _run_stack(self, layer, leading: tuple[int, ...]) -> None:
        """Segment the plane on screen, or every plane, of a time-lapse or z-stack; the labels
        go into one Labels layer of the stack's shape (other planes keep theirs)."""
        from ..inference.stack import plane_name

        data = layer.data[0] if layer.multiscale else layer.data
        plane = int(np.prod(data.shape[len(leading): len(leading) + 2]))
        total = int(np.prod(leading))
        if plane > CHUNKED_ABOVE or total * plane > STACK_LABELS_ABOVE:
            self._error(DeepCeNSError(
                f"{layer.name!r} holds {total} planes of {plane / 1e6:.1f} MP: its labels would "
                f"need {total * plane * 4 / 1e9:.1f} GB in memory (at most "
                f"{STACK_LABELS_ABOVE * 4 / 1e9:.0f} GB here, planes of at most "
                f"{CHUNKED_ABOVE / 1e6:.0f} MP): segment it with `deepcens segment` on its file"))
            return
        try:
            data, rgb, cyto = self._stains(layer, data)
        except DeepCeNSError as exc:
            self._error(exc)
            return
        planes = [displayed_plane(layer, self._viewer)] if self._planes.value == "current" else None
        count = 1 if planes else total
        load, key = self._loader()
        diameter = None if self._auto_diameter.value else (float(self._diameter.value) or None)
        estimate = bool(self._auto_diameter.value)
        denoise = CHOICES[self._denoise.value]
        cached = self._raw.get(id(layer))
        reuse = (planes is not None and cached is not None and hasattr(cached[1], "raws")
                 and cached[0] is self._predictors.get(key)
                 and self._cyto_of.get(id(layer)) == cyto)
        if reuse:  # one plane after another: the stack's size and denoising, not the plane's
            earlier = cached[1]
            if estimate and earlier.estimated and earlier.diameter:
                diameter, estimate = earlier.diameter, False
            if denoise is None:
                denoise = earlier.denoised
        params = self._params() if self._user_knobs else None
        self._progress.value, self._progress.max = 0, 1
        where = f"plane {plane_name(planes[0])}" if planes else f"{count} planes"
        self._status.value = f"segmenting {layer.name}, {where}…"
        self._started = time.perf_counter()
        worker = _stack_worker(load, data, planes, rgb, diameter, estimate, params,
                               bool(self._tta.value), denoise, count * plane <= CHUNKED_ABOVE,
                               layer.name)
        estimated_before = reuse and diameter is not None and bool(self._auto_diameter.value)
        self._start(worker, lambda result, layer=layer, e=estimated_before, c=cyto:
                    self._on_stack_segmented(layer, result, e, c))

    def _on_stack_segmented(self, layer, result, estimated_before: bool = False,
                            cyto: str | None = None) -> None:
        from ..inference.stack import plane_name

        if isinstance(result, _Failed):
            self._error(result.error)
            return
        if layer not in self._viewer.layers:
            self._status.value = f"{layer.name!r} was removed during the run: result discarded"
            return
        predictor, new = result
        if estimated_before:  # the size estimated on an earlier plane of this stack
            new.estimated = True
        cached = self._raw.get(id(layer))
        same_model = (cached is not None and cached[0] is predictor and hasattr(cached[1], "raws")
                      and self._cyto_of.get(id(layer)) == cyto)
        old = cached[1] if same_model else None
        if (old is not None and old.leading == new.leading and old.plane_shape == new.plane_shape
                and abs(old.scale - new.scale) < 1e-9 and old.denoised == new.denoised
                and bool(old.meta.get("tta")) == bool(new.meta.get("tta"))):
            merged = old  # earlier planes' maps stay live: they ran the same way
            for index in new.planes:
                merged.raws.pop(index, None)
            merged.planes.update(new.planes)
            merged.raws.update(new.raws)
            merged.blank = [i for i in merged.blank if i not in new.planes] + new.blank
            merged.diameter, merged.estimated = new.diameter, new.estimated
            merged.size_unrecognised, merged.meta = new.size_unrecognised, new.meta or merged.meta
            plane = int(np.prod(new.plane_shape))
            for index in [i for i in merged.raws if i not in new.raws]:  # oldest first
                if len(merged.raws) * plane <= CHUNKED_ABOVE:
                    break
                del merged.raws[index]  # that plane keeps its labels; its maps are let go
        else:  # another model (other planes start empty), or another size: earlier maps go
            merged = new
        if not same_model:
            self._stack_boxes.pop(id(layer), None)
            self._plane_sizes.pop(id(layer), None)
        self._raw[id(layer)] = (predictor, merged)
        self._ran_with(layer, cyto)
        sizes = self._plane_sizes.setdefault(id(layer), {})
        for index, seg in new.planes.items():
            if seg is not None:
                sizes[plane_name(index)] = None if new.diameter is None else round(new.diameter, 2)
        if not self._user_knobs:
            self._set_knobs(predictor.default_params(new.scale))
        self._show_stack(layer, dict(new.planes), fresh=not same_model)
        if new.estimated and new.diameter:
            self._diameter.value = round(new.diameter, 1)
            self._estimates[id(layer)] = new.diameter
        seconds = time.perf_counter() - self._started
        where = (f"plane {plane_name(next(iter(new.planes)))}" if len(new.planes) == 1 else
                 f"{len(new.planes)} planes")
        size = (f", diameter {new.diameter:.1f} px{' (estimated)' if new.estimated else ''}"
                if new.diameter else "")
        if new.size_unrecognised:
            size = ", object size not recognised: run as it is (set the diameter if needed)"
        blank = f", {len(new.blank)} blank" if new.blank else ""
        noisy = ", denoised first" if new.denoised else ""
        kept = "" if new.raws else "; thresholds apply at the next Run (too many planes to keep maps)"
        self._status.value = (f"{where}: {self._stack_count(new)} in {seconds:.1f} s{size}{blank}"
                              f"{noisy}{kept}")

    @staticmethod
    def _stack_count(result) -> str:
        counts = result.counts()
        if len(counts) <= 1:
            return count_of(sum(counts.values()), "object")
        return counts_of(counts)

    def _show_stack(self, image_layer, planes: dict, fresh: bool = False) -> None:
        """Write ``planes`` (index → Segmentation or ``None``) into the stack's Labels layers,
        in place, numbered after the objects of the other planes, and the boxes of every
        plane. A replaced plane the user edited is kept first (the whole layer, as a layer of
        its own). ``fresh``: another model, weights or device: the other planes start empty,
        so one layer never mixes two models."""
        predictor, result = self._raw[id(image_layer)]
        names = result.class_names() or list(predictor.class_names)
        multi = len(names) > 1
        full = result.leading + result.plane_shape
        boxes = self._stack_boxes.setdefault(id(image_layer), {})
        for name in names:
            cls = name if multi else None
            existing = self.labels_layer(image_layer, cls)
            in_place = (not fresh and existing is not None and isinstance(existing.data, np.ndarray)
                        and existing.data.shape == full and existing.data.dtype == np.int32)
            if in_place:
                self._keep_edited_planes(existing, planes)
                # Ctrl+Z must not paint old pixels into the new planes, but still undoes
                # the corrections of every other plane
                forget_planes(existing, planes)
                labels = existing.data
            else:
                labels = np.zeros(full, np.int32)
                boxes.pop(name, None)  # the other planes start empty: so do their boxes
            for index in planes:
                labels[index] = 0
            # new objects are numbered after every label an undo or a redo could bring back
            offset = max(int(labels.max(initial=0)), history_max(existing) if in_place else 0)
            per_class = boxes.setdefault(name, {})
            for index, seg in planes.items():
                part = None if seg is None else seg.by_class().get(name)
                per_class.pop(index, None)
                if part is None:
                    continue
                n = int(part.labels.max(initial=0))
                if n:
                    labels[index] = np.where(part.labels > 0, part.labels + offset, 0)
                if part.boxes is not None:
                    per_class[index] = (part.boxes, offset)
                offset += n
            if in_place:
                existing.refresh()
                layer = existing
            else:
                self._show_labels(image_layer, labels, cls)
                layer = self.labels_layer(image_layer, cls)
                self._written.pop(id(layer), None)
            written = self._written.setdefault(id(layer), {})
            for index in planes:
                written[index] = _digest(layer.data[index])
        if any(boxes.values()):
            self._show_boxes(image_layer, {name: [(i, d, o) for i, (d, o) in sorted(b.items())]
                                           for name, b in boxes.items()}, multi)
        else:
            self._drop_boxes(image_layer)
        self._record_provenance(image_layer)

    def _keep_edited_planes(self, layer, planes) -> None:
        """Before planes of ``layer`` are replaced: if the user painted in any of them (they
        differ from what this widget wrote there), keep the layer as it is as a new layer."""
        if not layer.metadata.get(EDITED_KEY):
            return
        written = self._written.get(id(layer), {})
        if not any(_digest(layer.data[i]) != written[i] if i in written else layer.data[i].any()
                   for i in planes):
            return
        self._keep_copy(layer)

    def _keep_copy(self, layer) -> None:
        """Keep a hand-edited labels layer, as it is now, as a layer of its own."""
        kept = self._viewer.add_labels(
            layer.data.copy(), name=f"{layer.name} (edited)", scale=layer.scale,
            translate=layer.translate, axis_labels=layer.axis_labels,
            metadata={EDITED_KEY: True, CLASS_KEY: layer.metadata.get(CLASS_KEY),
                      PROVENANCE_KEY: dict(layer.metadata.get(PROVENANCE_KEY, {}))})
        show_info(f"your edits were kept in the layer {kept.name!r}")

    # ------------------------------------------------------------------ large images (chunked)
    @staticmethod
    def _is_large(layer) -> bool:
        """Multiscale, Dask-backed or above :data:`CHUNKED_ABOVE` pixels: the chunked path."""
        data = layer.data[0] if layer.multiscale else layer.data
        shape = data.shape[:2] if getattr(layer, "rgb", False) else data.shape[-2:]
        return bool(layer.multiscale or not isinstance(data, np.ndarray)
                    or int(np.prod(shape)) > CHUNKED_ABOVE)

    def _run_chunked(self, layer) -> None:
        """Segment a large layer chunk by chunk on Dask; labels go to an OME-Zarr in the
        results folder (:func:`~napari_deepcens.io.paths.results_root`) and come back as a
        lazily loaded (multiscale) Labels layer."""
        import re
        import threading

        from ..scale.chunked import ModelSpec
        from ..scale.lazy import from_array, is_zarr, open_lazy

        if self._stain_count() > 1 and not getattr(layer, "rgb", False):
            self._error(DeepCeNSError(
                f"{layer.name!r} is too large to pair with a cytoplasm layer here: save the "
                "two stains as one RGB image (red nuclei, green cytoplasm) and open that"))
            return
        try:
            image = None
            path = getattr(getattr(layer, "source", None), "path", None)
            if path and (is_zarr(Path(path)) or Path(path).suffix.lower() in (".tif", ".tiff")):
                # workers read the file themselves, if the layer shows it whole: one channel
                # of a multichannel file (napari split it into layers) is the layer's own data
                try:
                    whole = open_lazy(path)
                    shown = (layer.data[0] if layer.multiscale else layer.data).shape
                    image = whole if tuple(whole.shape) == tuple(shown) else None
                except DeepCeNSError:
                    image = None
            if image is None:
                image = from_array(list(layer.data) if layer.multiscale else layer.data, layer.name)
            if image.pixel_size == (1.0, 1.0):  # the store keeps the pixel size napari shows
                image.pixel_size = tuple(float(v) for v in layer.scale[-2:])
            if image.origin == (0.0, 0.0):  # and where napari shows the image
                image.origin = tuple(float(v) for v in layer.translate[-2:])
        except DeepCeNSError as exc:
            self._error(exc)
            return
        load, (model, weights, device) = self._loader()
        spec = ModelSpec(model, weights, device, tta=bool(self._tta.value),
                         denoise=CHOICES[self._denoise.value])
        folder = results_root()
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer.name)
        output = _fresh_output(folder, f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}")
        diameter = None if self._auto_diameter.value else (float(self._diameter.value) or None)
        params = self._params().to_dict() if self._user_knobs else None
        self._chunk_cancel = threading.Event()
        worker = _chunked_worker(load, spec, image, output, self._scheduler.value.strip() or None,
                                 diameter, bool(self._auto_diameter.value), params, self._chunk_cancel)
        self._progress.value, self._progress.max = 0, 1
        self._status.value = f"segmenting {layer.name} chunk by chunk…"
        self._started = time.perf_counter()
        self._start(worker, lambda result, layer=layer: self._on_chunked(layer, result),
                    self._on_chunked_finished)

    def _on_chunked_finished(self) -> None:
        self._chunk_cancel = None
        self._on_finished()

    def _on_chunked(self, layer, result) -> None:
        """Show the written labels as lazily loaded Labels layers (one per class)."""
        from ..scale.lazy import read_ome_labels

        if isinstance(result, _Failed):
            self._error(result.error)
            return
        if layer not in self._viewer.layers:
            self._status.value = (f"{layer.name!r} was removed during the run; its labels are in "
                                  f"{result.output}")
            return
        pyramids = read_ome_labels(result.output)
        for cls, levels in pyramids.items():
            name = f"{layer.name} {cls} labels" if len(pyramids) > 1 else f"{layer.name} labels"
            mark_made(self._viewer.add_labels(
                levels if len(levels) > 1 else levels[0], multiscale=len(levels) > 1, name=name,
                scale=layer.scale[-2:], translate=layer.translate[-2:],
                metadata={SOURCE_KEY: id(layer), EDITED_KEY: False,
                          CLASS_KEY: cls if len(pyramids) > 1 else None,
                          "deepcens_zarr": str(result.output), "deepcens_table": str(result.table)}))
        seconds = time.perf_counter() - self._started
        counts = (count_of(sum(result.counts.values()), "object") if len(result.counts) == 1 else
                  counts_of(result.counts))
        if self._auto_diameter.value and result.diameter:
            self._diameter.value = round(float(result.diameter), 1)
            self._estimates[id(layer)] = float(result.diameter)
        noisy = ", denoised first" if result.denoised else ""
        self._status.value = (f"{counts} in {seconds:.1f} s, chunked ({result.chunk} px chunks, "
                              f"{result.halo} px halo){noisy}; labels in {result.output}")

    # ------------------------------------------------------------------ for scripts/tests
    @property
    def status(self) -> str:
        return str(self._status.value)

    def set_options(self, **values: Any) -> None:
        """Set widgets by name (image, model, weights, device, auto_diameter, diameter, tta,
        denoise ("auto", "yes", "no"), fg, seed, score, outline, min_size)."""
        for name, value in values.items():
            getattr(self, f"_{name}").value = value
