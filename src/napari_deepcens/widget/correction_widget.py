"""Correct predicted labels by hand, then export them as training data.

On top of napari's own brush, eraser and fill: delete or merge objects, fill holes, drop small
objects, renumber, and redraw the rotated boxes from the edited labels. Every edit goes through
``Labels.data_setitem`` so napari's undo (Ctrl+Z) covers it, and every edited layer is
autosaved (:mod:`.autosave`); earlier versions, of this session or of one that crashed, can be
restored as new layers. With the mouse over the labels:

* ``Shift+D`` deletes the object under the cursor,
* ``Shift+M`` merges the object under the cursor into the selected label.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    LineEdit,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info

from ..errors import DeepCeNSError
from ..io.autosave import AutosaveEntry
from ..io.images import pair_stains
from ..postprocess import edit
from ..postprocess.link import LINK_GAP
from ..postprocess.rotated_boxes import rotated_boxes
from ..wording import count_of
from .autosave import autosaver_for
from .keys import CLASS_KEY, EDITED_KEY, PROVENANCE_KEY, SOURCE_KEY
from .layers import displayed_plane, napari_corners_of, stack_axes
from .status import status_label
from .workers import stop_on_close

#: Shapes layers of rotated boxes made by Recompute: the id of the labels layer they show.
BOXES_OF_KEY = "deepcens_boxes_of"

#: Correct tabs made so far, oldest first (weak: a closed tab goes when Qt deletes it).
_OPEN: list[weakref.ref] = []


def _open_tab_for(layer) -> CorrectionWidget | None:
    """The newest Correct tab still on screen whose viewer holds ``layer``."""
    for ref in reversed(_OPEN):
        widget = ref()
        if widget is None:
            continue
        try:
            widget.native.objectName()  # a closed dock's Qt widgets are deleted: this raises
        except RuntimeError:
            continue
        if layer in widget._viewer.layers:
            return widget
    return None


def _key_action(method: str):
    """A key binding that runs ``method`` of the Correct tab open when the key is pressed."""
    def run(layer) -> None:
        widget = _open_tab_for(layer)
        if widget is not None:
            getattr(widget, method)(layer)
    run.__name__ = method  # napari lists bindings by name
    return run

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)



def apply_edit(layer, new: np.ndarray) -> int:
    """Write the pixels where ``new`` differs into ``layer`` as one undoable step."""
    where, values = edit.changed_pixels(np.asarray(layer.data), new)
    if values.size:
        layer.data_setitem(where, values)
    return int(values.size)


def label_under_cursor(layer, viewer) -> int:
    """The label value under the mouse (0 outside the image)."""
    position = np.asarray(viewer.cursor.position)[-layer.ndim:]
    coords = np.round(layer.world_to_data(position)).astype(int)[-layer.data.ndim:]
    shape = np.asarray(layer.data.shape)
    if coords.size != shape.size or (coords < 0).any() or (coords >= shape).any():
        return 0
    return int(layer.data[tuple(coords)])  # a stack: the plane on screen


@dataclass(frozen=True)
class _Failed:
    """A failure carried back from a worker: a returned exception would be raised again by
    the worker, and napari would show a traceback instead of our message."""

    error: DeepCeNSError


def _failed(exc: Exception, what: str) -> _Failed:
    if isinstance(exc, DeepCeNSError):
        return _Failed(exc)
    log.error("%s failed", what, exc_info=exc)  # the traceback goes to the log
    return _Failed(DeepCeNSError(f"{what} failed ({type(exc).__name__}): {exc}"))


@thread_worker
def _boxes_worker(data: np.ndarray):
    """:func:`boxes_layer_data` off the GUI thread; a failure comes back as the result."""
    try:
        return boxes_layer_data(data)
    except Exception as exc:
        return _failed(exc, "rotated boxes")


@thread_worker
def _link_worker(data: np.ndarray, axis: int, gap: int, tracks: bool):
    """Pieces counted, planes linked and numbered 1..N, and (time-lapses) the tracks table,
    off the GUI thread; a user error comes back as the result."""
    from ..postprocess.link import link_planes
    from ..postprocess.tracks import track_table

    try:
        before = sum(len(np.unique(data[i])) - 1 for i in np.ndindex(*data.shape[:-2]))
        linked = edit.relabel_sequential(link_planes(data, axis=axis, max_gap=gap))
        return before, linked, (track_table(linked, axis=0) if tracks else None)
    except Exception as exc:
        return _failed(exc, "linking")


def boxes_layer_data(labels: np.ndarray) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Rotated boxes as napari rectangles ((row, col) corners, after the plane index for a
    stack of labels) plus their features."""
    planes = list(np.ndindex(*labels.shape[:-2]))
    rows, prefix = [], []
    for index in planes:  # [()] for one 2-D image
        found = rotated_boxes(labels[index])
        rows += found
        prefix += [index] * len(found)
    table = np.asarray([r[1:] for r in rows], np.float64).reshape(-1, 5)
    lead = np.asarray(prefix, np.float64).reshape(len(rows), labels.ndim - 2)
    corners = np.concatenate([np.repeat(lead[:, None, :], 4, axis=1), napari_corners_of(table)],
                             axis=2)  # all at once: 18000 boxes of a stack in milliseconds
    shapes = list(corners)
    features = {
        "label": np.array([r[0] for r in rows], int),
        "width": np.array([r[3] for r in rows]),
        "height": np.array([r[4] for r in rows]),
        "angle": np.array([r[5] for r in rows]),
    }
    return shapes, features


def _stack_axis_names(layer) -> str:
    """The first letters of the stack axes napari names for ``layer`` (``"TZ"``, or ``"00"``
    for unnamed axes): linking, gap closing and size filtering read them."""
    return "".join(str(a).upper()[:1] for a in getattr(layer, "axis_labels", ())[:-2])


class CorrectionWidget(Container):
    """Edit helpers and export to a training dataset."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        import napari

        self._viewer = viewer
        self._own_boxes: weakref.WeakSet = weakref.WeakSet()  # box layers this tab made
        _OPEN.append(weakref.ref(self))
        self._labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self._image = create_widget(annotation=napari.layers.Image, label="image")
        self._delete = PushButton(text="Delete selected label")
        self._fill = PushButton(text="Fill holes")
        self._min_size = SpinBox(label="smaller than (px)", value=20, min=1, max=100_000)
        self._remove = PushButton(text="Remove small objects")
        self._relabel = PushButton(text="Relabel 1..N")
        self._boxes = PushButton(text="Recompute rotated boxes")
        self._link = PushButton(text="Link planes (3-D objects / tracks)",
                                tooltip="a stack's labels: each object takes the label of the "
                                "object it overlaps most in the previous plane (IoU ≥ 0.1), "
                                "so a nucleus keeps one label across z or time (undoable); "
                                "along the axis napari names z, else t, else the first")
        self._gap = SpinBox(label="bridge gaps of (frames)", value=LINK_GAP, min=0, max=10,
                            tooltip="time-lapses: a nucleus missed in up to this many frames "
                                    "keeps its label when it is found again (0: off; never "
                                    "along z, where a gap may separate two nuclei)")
        self._dataset = FileEdit(label="dataset folder", mode="d", value=None, nullable=True)
        self._name = LineEdit(label="sample name", value="",
                              tooltip="empty: the image layer's name")
        self._modality = ComboBox(label="modality", value="fluorescence",
                                  choices=["fluorescence", "brightfield", "histology", "other"])
        self._export = PushButton(text="Export image + labels")
        self._autosaver = autosaver_for(viewer)
        self._autosave = CheckBox(
            text="autosave edits", value=True,
            tooltip=f"every edited labels layer is saved to {self._autosaver.store.root} "
                    "(at most every 10 s while you edit, and when the layer is deleted); "
                    "the last 10 versions of each layer, and one per 10 minutes before those, are "
                    "kept for 14 days")
        self._versions = ComboBox(label="autosaved", choices=self._version_choices,
                                  tooltip="autosaved versions of edited labels, newest first")
        combo = self._versions.native  # long entries must not widen the dock
        combo.setSizeAdjustPolicy(combo.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(16)
        self._restore = PushButton(text="Restore as a new layer")
        self._status = status_label(value="Shift+D delete, Shift+M merge (under cursor)")
        self.extend([self._labels_layer, self._image, self._delete, self._fill, self._min_size,
                     self._remove, self._relabel, self._boxes, self._gap, self._link,
                     self._dataset, self._name, self._modality, self._export, self._autosave, self._versions,
                     self._restore, self._status])
        self._delete.changed.connect(self.delete_selected)
        self._fill.changed.connect(lambda: self._apply(edit.fill_holes, "holes filled"))
        self._remove.changed.connect(self.remove_small)
        self._relabel.changed.connect(lambda: self._apply(edit.relabel_sequential, "relabelled"))
        self._boxes.changed.connect(self.update_boxes)
        self._link.changed.connect(self.link_planes)
        self._export.changed.connect(self.export)
        self._labels_layer.changed.connect(self._bind_keys)
        self._bind_keys(self._labels_layer.value)
        self._labels_layer.changed.connect(self._follow_source)
        self._follow_source(self._labels_layer.value)
        self._image.changed.connect(self._guess_modality)
        self._guess_modality(self._image.value)
        self._autosave.changed.connect(self._set_autosave)
        self._restore.changed.connect(self.restore)
        self._autosaver.saved.connect(self._autosaved)
        self._autosaver.store.prune()
        earlier = [e for e in self._autosaver.store.entries()
                   if e.session != self._autosaver.store.session]
        if earlier:
            versions = "version" if len(earlier) == 1 else "versions"
            self._report(f"{len(earlier)} autosaved {versions} from earlier sessions: "
                         "pick one under 'autosaved' to restore it")

    def _source_image(self, labels):
        """The open image layer ``labels`` were segmented from (``None``: made by hand, or
        their image is closed)."""
        source = labels.metadata.get(SOURCE_KEY) if labels is not None else None
        if source is None:
            return None
        return next((ly for ly in self._viewer.layers if id(ly) == source
                     and ly.__class__.__name__ == "Image"), None)

    def _follow_source(self, labels) -> None:
        """Choosing segmented labels chooses the image they came from, so an export pairs
        them with their own image, not whichever image the picker showed first."""
        image = self._source_image(labels)
        if image is not None and self._image.value is not image:
            self._image.reset_choices()
            self._image.value = image

    # ------------------------------------------------------------------ editing
    def _layer(self, layer=None):
        layer = layer if layer is not None else self._labels_layer.value
        if layer is None:
            raise DeepCeNSError("no labels layer: run a segmentation or open labels first")
        if layer.multiscale or not isinstance(layer.data, np.ndarray):
            raise DeepCeNSError(
                f"{layer.name!r} is read lazily from disk (a large image's result): these tools "
                "edit labels held in memory; napari's brush and eraser still work on it")
        return layer

    def _edit(self, operation, done: str, layer=None) -> bool:
        """Apply ``operation`` (labels -> new labels) to the chosen layer as one undoable step;
        whatever goes wrong becomes a message, and the layer is left as it was (False)."""
        try:
            layer = self._layer(layer)
            n = apply_edit(layer, operation(np.asarray(layer.data)))
        except DeepCeNSError as exc:
            self._fail(exc)
            return False
        except Exception as exc:
            log.exception("edit failed")
            self._fail(DeepCeNSError(f"{done.split(':')[0]} failed ({type(exc).__name__}): {exc}"))
            return False
        self._report(done.format(n=n))
        return True

    def _report(self, message: str) -> None:
        self._status.value = message

    def _apply(self, operation, done: str) -> None:
        self._edit(operation, done + ": {n} pixels changed")

    def remove_small(self) -> None:
        """Objects under the size threshold go; in a stack, measured plane by plane (a
        time-lapse's frames), except in a z-stack, whose linked objects are 3-D."""
        per_plane = "Z" not in _stack_axis_names(self._labels_layer.value)
        self._apply(lambda lab: edit.remove_small(lab, int(self._min_size.value), per_plane),
                    "small objects removed")

    def delete_selected(self) -> None:
        layer = self._labels_layer.value
        label = int(layer.selected_label) if layer is not None else 0
        self._set_label(label, 0, f"deleted label {label}" + " ({n} pixels)")

    def delete_under_cursor(self, layer) -> None:
        label = label_under_cursor(layer, self._viewer)
        if label:
            self._set_label(label, 0, f"deleted label {label}", layer)

    def merge_under_cursor(self, layer) -> None:
        other, keep = label_under_cursor(layer, self._viewer), int(layer.selected_label)
        if other and keep and other != keep:
            self._set_label(other, keep, f"merged label {other} into {keep}", layer)

    def _set_label(self, old: int, new: int, done: str, layer=None) -> bool:
        """Give object ``old``'s pixels the label ``new`` (0: delete it) as one undoable
        step, writing only those pixels: a copy of the whole layer to diff (as the other
        tools do) took 1.3 s on a 60-frame stack for one nucleus."""
        try:
            layer = self._layer(layer)
            where = np.nonzero(np.asarray(layer.data) == old) if old else ()
            if old and where[0].size:
                layer.data_setitem(where, new)
        except DeepCeNSError as exc:
            self._fail(exc)
            return False
        self._report(done.format(n=where[0].size if old else 0))
        return True

    def _bind_keys(self, layer) -> None:
        """Shift+D deletes, Shift+M merges the object under the cursor. The keys reach
        whichever Correct tab is open when pressed: bound to this one, they outlived it
        when its dock was closed and opened again (an error instead of the edit)."""
        if layer is None or getattr(layer, "_deepcens_keys", False):
            return
        layer.bind_key("Shift-D", _key_action("delete_under_cursor"), overwrite=True)
        layer.bind_key("Shift-M", _key_action("merge_under_cursor"), overwrite=True)
        layer._deepcens_keys = True

    def link_planes(self) -> None:
        """One label per object across the planes of a stack (undoable, as every edit).

        The linking runs in a thread worker (a 60-frame 1024² time-lapse took 11–14 s on the
        GUI thread); its result is applied only if the labels were not edited meanwhile."""
        from ..inference.stack import link_axis

        if self._link_worker is not None:
            return
        try:
            layer = self._layer()
            data = np.asarray(layer.data)
            if data.ndim < 3:
                self._report(f"{layer.name!r} is one plane: nothing to link")
                return
            names = _stack_axis_names(layer)
            axis = link_axis(names) if len(names) == data.ndim - 2 else 0
            along = names[axis] if axis < len(names) else ""
            gap = int(self._gap.value) if along != "Z" else 0  # z: two nuclei, not a miss
        except DeepCeNSError as exc:
            self._fail(exc)
            return
        # what the worker links; the result applies only to labels still exactly so (an
        # undo, a slider move of the Segment tab or a brush stroke raise no event to count)
        snapshot = data.copy()
        tracks = axis == 0 and along != "Z"  # a time-lapse: each nucleus's track
        worker = _link_worker(snapshot, axis, gap, tracks)

        def done(result) -> None:
            if isinstance(result, _Failed):
                self._fail(result.error)
            elif layer not in self._viewer.layers:
                self._report(f"{layer.name!r} was closed while its planes were linked: not linked")
            elif getattr(layer, "_block_history", False) or not np.array_equal(
                    np.asarray(layer.data), snapshot):
                self._fail(DeepCeNSError(f"{layer.name!r} was edited while its planes were linked:"
                                         " nothing changed; press Link planes again"))
            else:
                self._apply_link(layer, data, along, gap, *result)

        self._start_tool(worker, done, "_link_worker", self._link,
                         f"linking the planes of {layer.name!r}…")

    _link_worker = None

    def _apply_link(self, layer, data: np.ndarray, along: str, gap: int, before: int,
                    linked: np.ndarray, table) -> None:
        after = int(linked.max(initial=0))
        if after > np.iinfo(data.dtype).max:
            self._fail(DeepCeNSError(f"{layer.name!r} holds {data.dtype} labels, too small for "
                                     f"{after} objects"))
            return
        unnamed = "" if along in ("T", "Z") or not gap else (
            f"; the stack axis has no name, so it was taken as time and gaps of {gap} bridged: "
            "for a z-stack set 'bridge gaps' to 0, Ctrl+Z and link again")
        if not self._edit(lambda lab: linked.astype(lab.dtype, copy=False),
                          f"planes linked: {before} pieces → {count_of(after, 'object')} ({{n}} pixels "
                          f"changed){unnamed}", layer):
            return
        if table is not None:
            self._show_tracks(layer, table)

    def _show_tracks(self, layer, table: np.ndarray) -> None:
        """A Tracks layer of the linked nuclei's centroids (``track_table`` rows, replaced on
        every link): a tail that jumps between nuclei shows where linking went wrong."""
        from ..postprocess.tracks import count_tracks

        name = f"{layer.name} tracks"
        if name in self._viewer.layers:  # derived data: replaced whole
            self._viewer.layers.remove(name)
        ids = table[:, 0].astype(np.int64)
        moving = table[np.bincount(ids)[ids] > 1]  # napari draws tracks of two points and up
        if not len(moving):
            return
        self._viewer.add_tracks(moving[:, :-1], name=name, tail_length=10, tail_width=2,
                                scale=layer.scale, translate=layer.translate,
                                features={"area": moving[:, -1]})
        self._report(f"{self._status.value}; {count_tracks(moving)} tracks over 2+ planes")

    def update_boxes(self) -> None:
        """Create or refresh the Shapes layer of rotated boxes from the current labels.

        The boxes are measured in a thread worker (8000 objects took 2 s, a stack's 18000
        5 s, on the GUI thread), on the labels as they were when pressed. Only a layer this
        tab made for these labels is replaced; one whose boxes the user moved, drew or
        deleted is kept beside the new one as "(edited)"."""
        if self._boxes_worker is not None:
            return
        try:
            layer = self._layer()
            data = np.array(layer.data, copy=True)  # what was pressed on, whatever comes next
        except DeepCeNSError as exc:
            self._fail(exc)
            return
        worker = _boxes_worker(data)
        self._start_tool(worker, lambda result, layer=layer, shape=data.shape:
                         self._show_boxes(layer, result, shape), "_boxes_worker", self._boxes,
                         f"measuring the rotated boxes of {layer.name!r}…")

    def _start_tool(self, worker, returned, slot: str, button, message: str) -> None:
        """Run a tool's thread worker: its button is off and ``slot`` holds the worker until
        it ends; ``returned`` gets its result."""
        def finished() -> None:
            setattr(self, slot, None)
            button.enabled = True

        worker.returned.connect(returned)
        worker.finished.connect(finished)
        stop_on_close(self.native, worker)
        setattr(self, slot, worker)
        button.enabled = False
        self._report(message)
        worker.start()

    _boxes_worker = None

    def _show_boxes(self, layer, result, shape: tuple[int, ...]) -> None:
        if isinstance(result, _Failed):
            self._fail(result.error)
            return
        if layer not in self._viewer.layers:
            self._report(f"{layer.name!r} was closed: no boxes")
            return
        if tuple(np.shape(layer.data)) != tuple(shape):
            self._fail(DeepCeNSError(f"{layer.name!r} changed size while its boxes were measured:"
                                     " press Recompute rotated boxes again"))
            return
        shapes, features = result
        name = f"{layer.name} boxes"
        old = next((ly for ly in self._viewer.layers if ly in self._own_boxes
                    and ly.metadata.get(BOXES_OF_KEY) == id(layer)), None)
        try:
            new = self._viewer.add_shapes(
                shapes or None, ndim=layer.ndim, shape_type="rectangle", name=name,
                features=features, edge_color="yellow", face_color="transparent", edge_width=1,
                scale=layer.scale, translate=layer.translate,
                metadata={BOXES_OF_KEY: id(layer), EDITED_KEY: False})
        except Exception as exc:  # the boxes there were stay
            log.exception("rotated boxes failed")
            self._fail(DeepCeNSError(f"rotated boxes failed ({type(exc).__name__}): {exc}"))
            return
        self._own_boxes.add(new)
        new.events.data.connect(lambda _e, ly=new: ly.metadata.__setitem__(EDITED_KEY, True))
        if old is not None:
            self._own_boxes.discard(old)
            if old.metadata.get(EDITED_KEY):
                old.name = f"{name} (edited)"
                show_info(f"your box edits were kept in the layer {old.name!r}")
            else:
                self._viewer.layers.remove(old)
            new.name = name  # napari numbered it while the old layer held the name
        self._report(f"{len(shapes)} rotated boxes")

    # ------------------------------------------------------------------ export
    def _guess_modality(self, image_layer) -> None:
        """Preset the export's modality from the image (colour: histology; dark objects on a
        bright background: brightfield; else fluorescence); the user can change it."""
        from ..io.images import guess_modality

        if image_layer is None:
            return
        try:
            data = image_layer.data[-1] if image_layer.multiscale else image_layer.data
            for n in stack_axes(image_layer):  # a stack: its middle plane
                data = data[n // 2]
            step = max(1, max(data.shape[:2]) // 512)  # lazy data: read a sample only
            self._modality.value = guess_modality(np.asarray(data[::step, ::step]))
        except Exception as exc:  # an odd layer keeps the current choice
            log.debug("no modality guess for %s: %s", image_layer.name, exc)

    def export(self) -> Path | None:
        """Export the chosen image and labels to the dataset folder as a new sample."""
        from ..io.dataset_export import export_sample

        try:
            layer = self._layer()
            image_layer = self._image.value
            if image_layer is None:
                raise DeepCeNSError("no image layer to export with the labels")
            source = self._source_image(layer)
            if source is not None and source is not image_layer:
                raise DeepCeNSError(f"{layer.name!r} were segmented from {source.name!r}, not "
                                    f"{image_layer.name!r}: choose {source.name!r} as the image "
                                    "(a sample pairs labels with their own image)")
            dataset = self._dataset.value
            if dataset is None or str(dataset) in ("", "."):
                raise DeepCeNSError("choose a dataset folder to export into")
            data = image_layer.data[0] if image_layer.multiscale else image_layer.data
            name = self._name.value.strip() or image_layer.name
            plane = displayed_plane(image_layer, self._viewer) if stack_axes(image_layer) else ()
            image = np.asarray(data[plane])  # a stack: only the plane on screen is read
            if plane:
                name = f"{name}_plane{'-'.join(str(i) for i in plane)}"
            provenance = dict(layer.metadata.get(PROVENANCE_KEY, {}))
            if provenance.get("cytoplasm"):  # a two-stain model: the sample keeps both stains
                image = self._with_cytoplasm(image, provenance["cytoplasm"], plane)
            source = getattr(getattr(image_layer, "source", None), "path", None)
            provenance.setdefault("source", str(source) if source else image_layer.name)
            classes = self._class_layers(layer)
            if len(classes) > 1:  # the record describes the sample, not one of its layers
                provenance.pop("class", None)
            arrays = {c: ly.data for c, ly in classes.items()}
            if plane:
                if any(a.shape[: len(plane)] != stack_axes(image_layer) for a in arrays.values()):
                    raise DeepCeNSError("the labels are not a stack of the image's planes: "
                                        "choose the labels segmented from this image")
                arrays = {c: np.asarray(a[plane]) for c, a in arrays.items()}
                provenance["plane"] = list(plane)
                sizes = provenance.pop("plane_diameters", None) or {}
                key = ", ".join(str(i) for i in plane)
                if key in sizes:  # the size this plane ran at
                    provenance["diameter"] = sizes[key]
            else:
                arrays = {c: np.asarray(a) for c, a in arrays.items()}
            folder = export_sample(dataset, image, arrays,
                                   name, provenance=provenance, modality=self._modality.value)
        except DeepCeNSError as exc:
            self._fail(exc)
            return None
        self._report(f"exported {' + '.join(classes)} labels to {folder}")
        show_info(f"exported sample {folder.name} to {folder.parent}")
        return folder

    def _with_cytoplasm(self, nuclear: np.ndarray, name: str, plane: tuple) -> np.ndarray:
        """The sample image of a two-stain segmentation: red the nuclear stain, green the
        cytoplasm layer it ran with, as the model reads it (and as fine-tuning will)."""
        if name not in self._viewer.layers:
            raise DeepCeNSError(f"these labels were segmented with the cytoplasm layer {name!r}, "
                                "which is no longer open: open it again to export both stains")
        cyto = self._viewer.layers[name]
        data = cyto.data[0] if cyto.multiscale else cyto.data
        other = np.asarray(data[plane])
        if other.shape != nuclear.shape:
            raise DeepCeNSError(f"the cytoplasm layer {name!r} {other.shape} no longer matches "
                                f"the image {nuclear.shape}")
        return pair_stains(nuclear, other)

    # ------------------------------------------------------------------ autosave
    def _version_choices(self, _widget=None) -> list[tuple[str, AutosaveEntry]]:
        return [(e.describe(), e) for e in self._autosaver.store.entries()]

    def _set_autosave(self, on: bool) -> None:
        self._autosaver.enabled = bool(on)
        if on:
            self._autosaver.save_dirty()
        self._report("autosave on" if on else "autosave off: edits live in memory only")

    def _autosaved(self, entry: AutosaveEntry) -> None:
        try:
            self._show_autosaved(entry)
        except RuntimeError:  # the viewer closed (its layers are saved as it goes): no widget
            log.debug("autosaved %s after its widget closed", entry.path)

    def _show_autosaved(self, entry: AutosaveEntry) -> None:
        choices = self._versions.choices
        on_newest = not choices or self._versions.value == choices[0]
        self._refresh_versions(select_newest=on_newest)  # follow the newest unless one was chosen
        self._report(f"autosaved {entry.layer!r} at {entry.when.split(' ')[1]}")

    def reset_choices(self, *args) -> None:
        super().reset_choices(*args)
        self._refresh_versions(select_newest=False)

    def _refresh_versions(self, select_newest: bool = True) -> None:
        """Re-list the autosaved versions, newest first."""
        current = self._versions.value
        self._versions.choices = []   # magicgui appends new items after old ones: rebuild
        self._versions.reset_choices()
        choices = self._versions.choices
        if choices:
            keep = not select_newest and current in choices
            self._versions.value = current if keep else choices[0]

    def restore(self) -> object | None:
        """Add the chosen autosaved version as a new Labels layer (nothing is replaced)."""
        entry = self._versions.value
        if entry is None:
            self._fail(DeepCeNSError("no autosaved version chosen"))
            return None
        try:
            data = self._autosaver.store.load(entry)
        except Exception as exc:
            self._fail(DeepCeNSError(f"could not read the autosaved file {entry.path}: {exc}"))
            return None
        meta = entry.meta
        axes = meta.get("axis_labels")
        axes = tuple(axes) if isinstance(axes, list) and len(axes) == data.ndim else None
        layer = self._viewer.add_labels(
            data, name=f"{entry.layer} (autosaved {entry.when})",
            scale=meta.get("scale") or None, translate=meta.get("translate") or None,
            **({"axis_labels": axes} if axes else {}),
            metadata={EDITED_KEY: False, PROVENANCE_KEY: dict(meta.get("provenance") or {}),
                      CLASS_KEY: (meta.get("provenance") or {}).get("class")})
        self._report(f"restored {layer.name!r} ({count_of(entry.n_objects, 'object')})")
        return layer

    def _class_layers(self, layer) -> dict:
        """The labels to export, by class: a multi-class model's layer brings the other
        classes of the same image along (one sample, ``labels_<class>`` each), so cells are
        never saved as nuclei; any other layer is one class, nuclei."""
        cls = layer.metadata.get(CLASS_KEY)
        source = layer.metadata.get(SOURCE_KEY)
        if cls is None or source is None:  # e.g. a kept or restored copy of one class
            return {cls or "nucleus": layer}
        found = {ly.metadata[CLASS_KEY]: ly for ly in self._viewer.layers
                 if ly.__class__.__name__ == "Labels" and ly.metadata.get(SOURCE_KEY) == source
                 and ly.metadata.get(CLASS_KEY) is not None}
        found[cls] = layer  # the chosen layer, even if a sibling was renamed or copied
        for other in found.values():
            self._layer(other)  # in memory, like the chosen one
        return dict(sorted(found.items()))

    def _fail(self, exc: Exception) -> None:
        self._status.value = str(exc)
        show_error(str(exc))
