"""Watch the viewer's Labels layers and autosave the ones the user edits.

A layer counts as the user's work once it is painted, filled or erased (napari's ``paint``
event, which every correction tool of this plugin also emits), or when it is the copy of
edited labels that the Segment tab keeps before a re-run. Undo and redo (``set_data`` on a
layer already edited) count too. Labels replaced wholesale by a program (a new segmentation)
are the program's, not the user's, and are not saved until edited again.

Saving is debounced (at most one write per layer every ``delay_s`` seconds while editing), the
pixels are copied on the GUI thread and written on a background thread, and a layer removed
from the viewer with unsaved edits is saved at once — a mis-click on *delete layer* loses
nothing either.
"""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
import weakref
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..io.autosave import AutosaveEntry, AutosaveStore
from .keys import EDITED_KEY, PROVENANCE_KEY

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)


class _Relay(QObject):
    """Carries 'saved' from the writer thread to the GUI thread (a queued signal)."""

    saved = Signal(object)
    failed = Signal(object, str)  # (state, message)


@dataclass
class _State:
    layer: object            # the napari Labels layer watched
    edited: bool = False   # the user has touched this layer's pixels
    dirty: bool = False    # changed since the last save
    saved_crc: int | None = None
    writing: Future | None = None  # this layer's write in progress: one at a time, so a
    # large layer painted on fast never queues copy after copy in memory
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # this layer object
    history: tuple[int, int] = (0, 0)  # undo/redo lengths: changed by an undo, not a scroll
    failing: bool = False  # the last write failed (said once, retried)


def _history(layer) -> tuple[int, int]:
    return (len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ())))


def _checksum(data: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).ravel())


class LabelsAutosaver:
    """Autosave edited Labels layers of ``viewer`` into ``store``; ``saved`` signals each write."""

    def __init__(self, viewer: napari.viewer.Viewer, store: AutosaveStore | None = None,
                 delay_s: float = 10.0) -> None:
        self.viewer = viewer
        self.store = store or AutosaveStore()
        self._relay = _Relay()
        #: emitted on the GUI thread with each written :class:`AutosaveEntry`
        self.saved = self._relay.saved
        self._relay.failed.connect(self._on_failed)  # a failed write is retried
        self.enabled = True
        self._states: dict[int, _State] = {}  # id(layer) -> its state
        self._pending: list[Future] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepcens-autosave")
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(delay_s * 1000))
        self._timer.timeout.connect(self._on_timer)
        for layer in viewer.layers:
            self._watch(layer)
        viewer.layers.events.inserted.connect(lambda e: self._watch(e.value))
        viewer.layers.events.removed.connect(lambda e: self._removed(e.value))
        app = QApplication.instance()
        if app is not None:  # a weak link: the application must not keep old viewers alive
            ref = weakref.ref(self)
            app.aboutToQuit.connect(lambda: (saver := ref()) is not None and saver.flush())

    # ------------------------------------------------------------------ events
    def _watch(self, layer) -> None:
        if layer.__class__.__name__ != "Labels" or id(layer) in self._states:
            return
        self._states[id(layer)] = _State(layer)
        layer.events.paint.connect(lambda _e, layer=layer: self._edited(layer))
        layer.events.set_data.connect(lambda _e, layer=layer: self._maybe_undo(layer))
        layer.events.data.connect(lambda _e, layer=layer: self._replaced(layer))
        if layer.metadata.get(EDITED_KEY):   # a kept copy of edited labels: the user's work
            self._edited(layer)

    def _edited(self, layer) -> None:
        state = self._states.get(id(layer))
        if state is None:
            return
        state.edited = state.dirty = True
        state.history = _history(layer)
        if self.enabled and not self._timer.isActive():
            self._timer.start()

    def _maybe_undo(self, layer) -> None:
        """``set_data`` also fires when the view is refreshed or scrolled: only a change of
        the undo/redo history (an undo or a redo) counts as an edit."""
        state = self._states.get(id(layer))
        if state is None or not state.edited:
            return
        history = _history(layer)
        if history != state.history:
            state.history = history
            self._edited(layer)

    def _replaced(self, layer) -> None:
        """New data from a program: not the user's work (edits were kept by the Segment tab)."""
        state = self._states.get(id(layer))
        if state is not None:
            state.edited = state.dirty = False
            state.saved_crc = None

    def _removed(self, layer) -> None:
        if id(layer) in self._states:
            if self.enabled:
                self._save(layer, wait=True)
            self._states.pop(id(layer), None)

    # ------------------------------------------------------------------ saving
    def _save(self, layer, wait: bool = False) -> Future | None:
        state = self._states.get(id(layer))
        if state is None or not state.dirty:
            return None
        if state.writing is not None and not state.writing.done():
            if not wait:  # try again at the next tick, with whatever the layer holds then
                self._timer.start()
                return None
            concurrent.futures.wait([state.writing])
        state.dirty = False
        data = layer.data
        if not isinstance(data, np.ndarray):  # lazy (Dask/Zarr) labels are on disk already
            return None
        copy = np.array(data, copy=True)     # the only work on the GUI thread: a memory copy
        meta = {"scale": [float(s) for s in layer.scale],
                "translate": [float(t) for t in layer.translate],
                # a z-stack and a time-lapse differ only by name, and the tools read it
                "axis_labels": [str(a) for a in layer.axis_labels],
                "provenance": layer.metadata.get(PROVENANCE_KEY, {})}
        future = self._executor.submit(self._write, state, layer.name, copy, meta)
        state.writing = future
        future.add_done_callback(lambda f, state=state: self._done(f, state))
        self._pending.append(future)
        return future

    def _write(self, state: _State, name: str, data: np.ndarray, meta: dict) -> AutosaveEntry | None:
        """On the writer thread: skip a version equal to the last one saved (e.g. undone)."""
        crc = _checksum(data)
        if crc == state.saved_crc:
            return None
        entry = self.store.save(name, data, meta, key=state.key)
        state.saved_crc = crc
        return entry

    def _done(self, future: Future, state: _State) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("autosave failed: %s", exc)
            self._relay.failed.emit(state, f"{exc}")
        elif future.result() is not None:
            state.failing = False  # queued to the GUI thread: it may touch widgets
            self._relay.saved.emit(future.result())

    def _on_failed(self, state: _State, message: str) -> None:
        """On the GUI thread: the edits are still unsaved; try again at the next tick and
        tell the user once (not every 10 s while the disk stays full)."""
        state.dirty = True
        self._states.setdefault(id(state.layer), state)  # a deleted layer's edits too
        if self.enabled:
            self._timer.start()
        if not state.failing:
            state.failing = True
            show_error(f"autosave failed, will retry: {message}")

    def _on_timer(self) -> None:
        self._pending = [f for f in self._pending if not f.done()]  # finished writes: forget
        self.save_dirty()
        for key, state in list(self._states.items()):  # deleted layers, once their edits are safe
            if state.layer not in self.viewer.layers and not state.dirty and (
                    state.writing is None or state.writing.done()):
                self._states.pop(key, None)

    def save_dirty(self) -> list[Future]:
        """Start saving every layer edited since its last save (the timer calls this)."""
        if not self.enabled:
            return []
        futures = [self._save(state.layer) for state in list(self._states.values())]
        return [f for f in futures if f is not None]

    def flush(self) -> list[AutosaveEntry]:
        """Save what is unsaved now and wait for every write (on quit, and in tests)."""
        self._timer.stop()
        if self.enabled:
            for state in list(self._states.values()):
                self._save(state.layer, wait=True)
        written = []
        for future in self._pending:
            try:
                entry = future.result(timeout=120)
            except Exception as exc:  # reported by _done already
                log.debug("autosave write failed: %s", exc)
                continue
            if entry is not None:
                written.append(entry)
        self._pending = []
        self._timer.stop()
        return written


_AUTOSAVERS: weakref.WeakValueDictionary[int, LabelsAutosaver] = weakref.WeakValueDictionary()


def autosaver_for(viewer: napari.viewer.Viewer, **kwargs) -> LabelsAutosaver:
    """The one autosaver of ``viewer`` (two would write every edit twice)."""
    saver = _AUTOSAVERS.get(id(viewer))
    if saver is None or saver.viewer is not viewer:
        saver = _AUTOSAVERS[id(viewer)] = LabelsAutosaver(viewer, **kwargs)
    return saver
