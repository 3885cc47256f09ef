"""Hand corrections are autosaved, versioned, and restorable: a crash loses nothing."""

import os
import time

import numpy as np
import pytest

from napari_deepcens.io.autosave import AutosaveStore

from .conftest import boxes_and_wait, reports

NOW = "20261126-120000-000000-1"


def test_versions_round_trip_rotate_and_survive_damaged_files(tmp_path, fluorescence):
    _image, labels = fluorescence
    store = AutosaveStore(tmp_path, keep=3, session=NOW)
    versions = []
    for i in range(5):                                   # five saves while editing
        edited = labels.copy()
        edited[:10, :10] = 70_000 + i                    # a label beyond uint16
        versions.append(edited)
        store.save("nuclei labels: run 2/3", edited, {"scale": [0.5, 0.5]})
    (tmp_path / NOW / "junk__20260101-000000-000000.tif").write_bytes(b"not a tiff")

    entries = store.entries()
    assert len(entries) == 4        # the 3 newest + 1 of the older ten minutes; junk skipped
    assert [e.saved for e in entries] == sorted((e.saved for e in entries), reverse=True)
    newest = entries[0]
    assert newest.layer == "nuclei labels: run 2/3" and newest.meta["scale"] == [0.5, 0.5]
    assert newest.n_objects == np.unique(versions[-1]).size - 1 >= 50
    back = store.load(newest)
    assert back.dtype == labels.dtype and np.array_equal(back, versions[-1])
    assert np.array_equal(store.load(entries[-1]), versions[1])   # the oldest, versions[0], went
    assert not list(tmp_path.rglob("*.part"))            # written atomically
    assert all(":" not in p.name and "/" not in p.name for p in (tmp_path / NOW).iterdir())


def test_old_sessions_are_pruned_and_nothing_else_ever(tmp_path, fluorescence):
    _image, labels = fluorescence
    old_id, recent_id = "20261001-090000-000000-11", "20261120-090000-000000-12"
    old, recent = AutosaveStore(tmp_path, session=old_id), AutosaveStore(tmp_path, session=recent_id)
    old.save("a", labels)
    recent.save("b", labels)
    mine = tmp_path / "20261001-090000-000000-13"        # named like a session, but a user's
    mine.mkdir()
    (mine / "cells.tif").write_bytes(b"a user's file")
    (tmp_path / "experiment1").mkdir()                    # the root pointed at a data folder
    (tmp_path / "experiment1" / "cells.tif").write_bytes(b"a user's file")
    month_ago = time.time() - 30 * 86400
    for path in [*(tmp_path / old_id).iterdir(), mine / "cells.tif",
                 tmp_path / "experiment1" / "cells.tif"]:
        os.utime(path, (month_ago, month_ago))
    current = AutosaveStore(tmp_path, session=old_id, max_age_days=14)   # in use: kept
    assert current.prune() == 0
    assert AutosaveStore(tmp_path, max_age_days=14).prune() == 1
    assert [e.session for e in AutosaveStore(tmp_path).entries()] == [recent_id]
    assert (mine / "cells.tif").exists() and (tmp_path / "experiment1" / "cells.tif").exists()


def test_two_layers_of_one_name_keep_their_own_versions(tmp_path, fluorescence):
    _image, labels = fluorescence
    store = AutosaveStore(tmp_path, keep=2)
    deleted = labels.copy()
    deleted[:5, :5] = 9
    store.save("Labels", deleted, key="first")            # a deleted layer's last edits
    for _ in range(4):                                    # the next layer napari names "Labels"
        store.save("Labels", labels, key="second")
    kept = [store.load(e) for e in store.entries()]
    assert len(kept) == 1 + 2 + 1 and sum((k[:5, :5] == 9).all() for k in kept) == 1


@pytest.fixture
def correcting(make_napari_viewer, fluorescence, tmp_path, monkeypatch):
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    monkeypatch.setenv("NAPARI_DEEPCENS_AUTOSAVE_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    image, labels = fluorescence
    viewer.add_image(image, name="nuclei")
    layer = viewer.add_labels(labels.copy(), name="nuclei labels")
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, layer, labels


def test_edits_undo_and_tools_are_autosaved_and_a_version_restores(correcting, qtbot):
    viewer, widget, layer, labels = correcting
    saver = widget._autosaver
    assert saver.flush() == []                           # untouched labels are not the user's work

    layer.paint((20, 20), 99)                            # brush
    painted = layer.data.copy()
    (entry,) = saver.flush()
    assert np.array_equal(saver.store.load(entry), painted) and 99 in painted

    layer.undo()                                         # Ctrl+Z is saved too
    (entry,) = saver.flush()
    assert np.array_equal(saver.store.load(entry), labels)

    layer.selected_label = int(labels[128, 128]) or 1    # a plugin tool
    widget.delete_selected()
    (entry,) = saver.flush()
    assert layer.selected_label not in saver.store.load(entry)
    qtbot.waitUntil(lambda: "autosaved 'nuclei labels'" in widget._status.value, timeout=5000)

    layer.data = np.zeros_like(labels)                   # replaced by a program: not saved
    assert saver.flush() == []

    widget.reset_choices()
    widget._versions.value = widget._versions.choices[-1]  # the oldest: the brush stroke
    n_layers = len(viewer.layers)
    restored = widget.restore()
    assert len(viewer.layers) == n_layers + 1 and "(autosaved " in restored.name
    assert np.array_equal(restored.data, painted)
    assert not layer.data.any()                          # nothing existing was replaced


def test_edits_of_a_deleted_layer_are_saved_and_the_timer_saves_by_itself(correcting, qtbot):
    viewer, widget, layer, labels = correcting
    saver = widget._autosaver
    layer.paint((30, 30), 77)
    viewer.layers.remove(layer)                          # a mis-click on "delete layer"
    (entry,) = saver.flush()
    assert 77 in saver.store.load(entry)

    other = viewer.add_labels(labels.copy(), name="second")
    saver._timer.setInterval(50)
    other.paint((40, 40), 55)                            # no flush: the timer writes it
    qtbot.waitUntil(lambda: any(e.layer == "second" for e in saver.store.entries()), timeout=5000)

    widget._autosave.value = False                       # switched off: nothing written
    other.paint((60, 60), 56)
    assert saver.save_dirty() == []


def test_correction_tab_labels_its_fields_and_guards_its_tools(correcting, qtbot):
    import dask.array as da
    from qtpy.QtWidgets import QLabel

    viewer, widget, _layer, labels = correcting
    shown = {q.text() for q in widget.native.findChildren(QLabel) if not q.isHidden()}
    assert {"labels", "image", "dataset folder", "modality", "autosaved"} <= shown

    lazy = viewer.add_labels(da.from_array(labels, chunks=64), name="lazy")
    widget._labels_layer.value = lazy
    widget._fill.changed(True)                           # the button: a message, no traceback
    assert "read lazily" in widget._status.value

    negative = labels.astype(np.int32).copy()
    negative[:3, :3] = -1                                # a 9-px object with a negative label
    widget._labels_layer.value = viewer.add_labels(negative, name="negative")
    widget._min_size.value = 10
    widget._remove.changed(True)
    assert -1 not in viewer.layers["negative"].data and "pixels changed" in widget._status.value


def test_a_slow_write_is_never_queued_twice_and_the_last_edit_wins(correcting, monkeypatch):
    _viewer, widget, layer, _labels = correcting
    saver = widget._autosaver
    save = saver.store.save

    def slow(*args, **kwargs):                           # a large layer on a slow disk
        time.sleep(0.5)
        return save(*args, **kwargs)

    monkeypatch.setattr(saver.store, "save", slow)
    layer.paint((20, 20), 91)
    assert len(saver.save_dirty()) == 1
    layer.paint((60, 60), 92)                            # while the first write runs
    assert saver.save_dirty() == []                      # no second copy queued behind it
    written = saver.flush()
    assert len(written) == 2 and 92 in saver.store.load(written[-1])


def test_a_failed_write_is_said_once_and_retried(correcting, monkeypatch, qtbot):
    _viewer, widget, layer, _labels = correcting
    saver = widget._autosaver
    save, calls = saver.store.save, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return save(*args, **kwargs)

    monkeypatch.setattr(saver.store, "save", full_disk)
    said = []
    monkeypatch.setattr("napari_deepcens.widget.autosave.show_error", said.append)
    layer.paint((20, 20), 93)
    assert saver.flush() == []                           # the write failed...
    qtbot.waitUntil(lambda: bool(said), timeout=5000)    # ...the user is told...
    (entry,) = saver.flush()                             # ...and the edits are saved after all
    assert 93 in saver.store.load(entry) and "No space left" in said[0] and len(said) == 1


def test_segmented_labels_export_with_their_own_image(make_napari_viewer, tmp_path):
    """Two fields of one size open: choosing field B's labels chooses field B, and an export
    of them with field A (the picker's first image) is refused: it would have paired B's
    nuclei with A's pixels in the training data."""
    from napari_deepcens.widget.correction_widget import CorrectionWidget
    from napari_deepcens.widget.keys import SOURCE_KEY

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    field_a = viewer.add_image(rng.random((64, 64)), name="field A")
    field_b = viewer.add_image(rng.random((64, 64)), name="field B")
    lab = np.zeros((64, 64), np.int32)
    lab[10:20, 10:20] = 1
    labels = viewer.add_labels(lab, name="field B labels", metadata={SOURCE_KEY: id(field_b)})
    hand = viewer.add_labels(lab, name="drawn by hand")
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._dataset.value = tmp_path / "ds"
    widget._labels_layer.value = labels
    assert widget._image.value is field_b
    widget._image.value = field_a
    assert widget.export() is None and "segmented from 'field B'" in widget._status.value
    widget._image.value = field_b
    assert widget.export() is not None
    widget._labels_layer.value = hand  # labels with no source: the user's pairing stands
    widget._image.value = field_a
    assert widget.export() is not None


def test_a_restored_z_stack_is_still_a_z_stack(correcting):
    """Autosave keeps the axis names: restored without them, a z-stack read as a time-lapse,
    and Remove small objects measured its 3-D nuclei plane by plane (a 48-px nucleus of
    16 px per plane was deleted at a 20-px threshold)."""
    viewer, widget, _layer, _labels = correcting
    stack = np.zeros((3, 40, 40), np.int32)
    stack[:, 10:14, 10:14] = 1                           # 16 px per plane, 48 px in 3-D
    zlayer = viewer.add_labels(stack, name="z labels", axis_labels=("z", "y", "x"))
    zlayer.paint((1, 30, 30), 2)                          # an edit, so it is autosaved
    assert len(widget._autosaver.flush()) == 1
    widget.reset_choices()
    widget._versions.value = next(c for c in widget._versions.choices if c.layer == "z labels")
    restored = widget.restore()
    assert tuple(restored.axis_labels) == ("z", "y", "x")
    widget._labels_layer.value = restored
    widget._min_size.value = 20
    widget.remove_small()
    assert (restored.data == 1).sum() == 48                # a 3-D nucleus, measured whole


def test_recompute_boxes_keeps_hand_edited_boxes_and_handles_an_emptied_stack(make_napari_viewer, qtbot):
    """Recompute replaced the boxes layer by name: a box the user drew was gone with no copy,
    and a user layer of that name would have gone too. A stack with no object left raised a
    traceback after the old layer was already removed."""
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    viewer = make_napari_viewer()
    lab = np.zeros((60, 60), np.int32)
    lab[5:15, 5:15] = 1
    lab[30:45, 30:40] = 2
    layer = viewer.add_labels(lab, name="cells")
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    said = reports(widget)
    widget._labels_layer.value = layer
    boxes_and_wait(qtbot, widget)
    boxes_and_wait(qtbot, widget)  # unedited: replaced, not multiplied
    assert [ly.name for ly in viewer.layers] == ["cells", "cells boxes"]
    boxes = viewer.layers["cells boxes"]
    boxes.add_rectangles(np.array([[50, 50], [58, 58]]))  # the user draws a missed box
    boxes_and_wait(qtbot, widget)
    assert len(viewer.layers["cells boxes (edited)"].data) == 3
    assert len(viewer.layers["cells boxes"].data) == 2

    movie = np.zeros((3, 40, 40), np.int32)
    movie[1, 10:20, 10:20] = 4
    stack = viewer.add_labels(movie, name="movie labels")
    widget._labels_layer.value = stack
    boxes_and_wait(qtbot, widget)
    stack.selected_label = 4
    widget.delete_selected()                               # the only object was wrong
    boxes_and_wait(qtbot, widget)
    assert len(viewer.layers["movie labels boxes"].data) == 0
    assert "0 rotated boxes" in said[-1]
    # measured in a worker: labels that change size meanwhile get no boxes of the old ones
    widget.update_boxes()
    stack.data = np.zeros((2, 32, 32), np.int32)
    qtbot.waitUntil(lambda: widget._boxes_worker is None, timeout=60_000)
    assert "changed size while its boxes were measured" in said[-1]


def test_shift_d_reaches_the_correct_tab_open_now(make_napari_viewer, qtbot):
    """Keys bound to the first Correct tab outlived it: after its dock was closed and a new
    one opened, Shift+D ran the closed tab and napari showed a 'deleted QLabel' error."""
    from napari_deepcens.widget.dock import DeepCeNSDock

    viewer = make_napari_viewer()
    lab = np.zeros((40, 40), np.int32)
    lab[10:20, 10:20] = 3
    layer = viewer.add_labels(lab, name="labels")
    dock = DeepCeNSDock(viewer)
    viewer.window.add_dock_widget(dock, name="deepcens")
    dock.deleteLater()                                    # the dock closed
    qtbot.wait(100)
    again = DeepCeNSDock(viewer)
    viewer.window.add_dock_widget(again, name="deepcens again")
    shift_d = next(v for k, v in layer.keymap.items() if "Shift" in str(k) and "D" in str(k))
    viewer.cursor.position = (15, 15)
    shift_d(layer)
    assert not (layer.data == 3).any()
    assert "deleted label 3" in again.correct._status.value
