"""Widget tests in a real napari viewer (Xvfb in CI)."""

import numpy as np
import pytest

from napari_deepcens.widget.segment_widget import SegmentWidget

pytest.importorskip("napari")


@pytest.fixture
def docked(make_napari_viewer, fluorescence):
    viewer = make_napari_viewer()
    image, _labels = fluorescence
    layer = viewer.add_image(image, name="nuclei")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_options(image=layer, device="cpu")
    return viewer, widget, layer


def run_and_wait(qtbot, widget, timeout=60_000):
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def test_run_creates_labels_and_slider_updates_them_without_network(docked, qtbot, monkeypatch):
    viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    labels_layer = viewer.layers["nuclei labels"]
    n_objects = int(labels_layer.data.max())
    assert 40 <= n_objects <= 70, widget.status      # 53 annotated nuclei
    assert "objects" in widget.status

    predictor, _raw = widget._raw[id(layer)]
    monkeypatch.setattr(predictor, "predict_iter",
                        lambda *a, **k: pytest.fail("slider re-ran the network"))
    before = labels_layer.data.copy()
    widget.set_options(fg=0.93)                       # stricter foreground: less area
    qtbot.waitUntil(lambda: widget._post_worker is None and not np.array_equal(
        labels_layer.data, before), timeout=20_000)
    assert (labels_layer.data > 0).sum() < (before > 0).sum()
    assert len(viewer.layers) == 2                    # updated in place, no new layer

    # the bundled U-Net scores its objects: the score knob is shown and drops the doubtful
    assert not widget._score.native.isHidden() and not widget._seed.native.isHidden()
    n_before = int(labels_layer.data.max())
    widget.set_options(score=0.95)
    qtbot.waitUntil(lambda: widget._post_worker is None
                    and int(labels_layer.data.max()) < n_before, timeout=20_000)


def test_rerun_keeps_hand_edits(docked, qtbot):
    viewer, widget, _layer = docked
    run_and_wait(qtbot, widget)
    labels_layer = viewer.layers["nuclei labels"]
    edited = labels_layer.data.copy()
    edited[:20, :20] = 999
    labels_layer.data = edited
    labels_layer.events.paint(value=[])               # what napari's brush emits
    run_and_wait(qtbot, widget)
    kept = viewer.layers["nuclei labels (edited)"]
    assert (kept.data[:20, :20] == 999).all()
    assert (viewer.layers["nuclei labels"].data != 999).all()
    # the kept copy is autosaved; the fresh segmentation (the program's work) is not
    saved = widget._autosaver.flush()
    assert [e.layer for e in saved] == ["nuclei labels (edited)"]
    assert (widget._autosaver.store.load(saved[0])[:20, :20] == 999).all()


def test_cancel_changes_nothing(docked, qtbot):
    viewer, widget, _layer = docked
    widget.set_options(auto_diameter=False, diameter=4.0)  # upscales ×5: many tiles to cancel
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert "nuclei labels" not in viewer.layers
    assert "cancel" in widget.status


def test_bad_weights_file_is_a_message_not_a_crash(docked, qtbot, tmp_path):
    viewer, widget, _layer = docked
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not weights")
    widget.set_options(weights=bad)
    run_and_wait(qtbot, widget)
    assert "not a valid safetensors" in widget.status
    assert "nuclei labels" not in viewer.layers


def test_no_image_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()
    assert "no image layer" in widget.status


def test_estimated_diameter_is_shown_and_an_override_is_used(docked, qtbot):
    _viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    estimate = widget._diameter.value
    assert 10 < estimate < 40 and not widget._diameter.enabled  # read-only while automatic
    assert "estimated" in widget.status
    widget.set_options(auto_diameter=False)
    assert widget._diameter.enabled
    widget.set_options(diameter=2 * estimate)
    run_and_wait(qtbot, widget)
    predictor, raw = widget._raw[id(layer)]
    assert not raw.estimated and raw.diameter == pytest.approx(2 * estimate)
    assert raw.scale == pytest.approx(predictor.info.zoom_diameter / (2 * estimate))


def test_centerunet_boxes_follow_the_score_slider_and_select_labels(docked, qtbot):
    viewer, widget, _layer = docked
    widget.set_options(model="centerunet", device="cpu")
    assert not widget._score.native.isHidden() and widget._seed.native.isHidden()
    run_and_wait(qtbot, widget)
    boxes, labels = viewer.layers["nuclei boxes"], viewer.layers["nuclei labels"]
    n = len(boxes.data)
    assert 35 <= n <= 70, widget.status                    # 53 annotated nuclei
    assert {"label", "score", "width", "height", "angle"} <= set(boxes.features.columns)
    assert int(labels.data.max()) == n                      # one label per box
    boxes.selected_data = {3}
    assert labels.selected_label == int(boxes.features["label"].iloc[3])
    labels.selected_label = int(boxes.features["label"].iloc[5])
    assert set(boxes.selected_data) == {5}
    widget.set_options(score=0.9)
    qtbot.waitUntil(lambda: len(viewer.layers["nuclei boxes"].data) < n, timeout=20_000)
    assert int(viewer.layers["nuclei labels"].data.max()) == len(viewer.layers["nuclei boxes"].data)
    # no box at all, then boxes again: they come back as rectangles, not polygons
    widget.set_options(score=0.99)
    qtbot.waitUntil(lambda: widget._post_worker is None and not len(viewer.layers["nuclei boxes"].data),
                    timeout=20_000)
    widget.set_options(score=0.5)
    qtbot.waitUntil(lambda: widget._post_worker is None and len(viewer.layers["nuclei boxes"].data) > 0,
                    timeout=20_000)
    assert set(viewer.layers["nuclei boxes"].shape_type) == {"rectangle"}


def test_removing_the_image_frees_its_cached_maps(docked, qtbot):
    viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    assert id(layer) in widget._raw
    viewer.layers.remove(layer)
    assert id(layer) not in widget._raw


def test_unrecognised_object_size_is_said_and_the_image_runs_as_it_is(make_napari_viewer, qtbot):
    """Camera noise only: no zoom finds objects, so nothing is estimated and the user is told."""
    viewer = make_napari_viewer()
    noise = (100 + 5 * np.random.default_rng(0).standard_normal((256, 256))).astype(np.uint8)
    layer = viewer.add_image(noise, name="empty well")
    widget = SegmentWidget(viewer)
    widget.set_options(image=layer, device="cpu")
    run_and_wait(qtbot, widget)
    _predictor, raw = widget._raw[id(layer)]
    assert raw.diameter is None and raw.scale == 1.0 and raw.size_unrecognised
    assert "not recognised" in widget.status
    assert viewer.layers["empty well labels"].data.max() <= 2


def test_a_low_magnification_image_is_sharpened_and_the_user_told(make_napari_viewer, qtbot):
    """Val 150b0ffa at a quarter of its magnification (nuclei ~5 px, each pixel the mean of
    its area): the estimate enlarges it ×3.3, the bundled U-Net sharpens it first, and the
    status line and the labels' provenance say so."""
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.widget.keys import PROVENANCE_KEY

    from .conftest import shrunk_by_area

    viewer = make_napari_viewer()
    image, truth = shrunk_by_area("150b0ffa")
    layer = viewer.add_image(image, name="low mag")
    widget = SegmentWidget(viewer)
    widget.set_options(image=layer, device="cpu")
    run_and_wait(qtbot, widget)
    labels = viewer.layers["low mag labels"]
    assert "edges sharpened" in widget.status and "(estimated)" in widget.status
    assert labels.metadata[PROVENANCE_KEY]["sharpened"] is True
    assert summarize([match_image(truth, labels.data)])["AP@0.5"] > 0.74    # 0.76 measured


def test_a_noisy_image_is_denoised_and_the_user_told(docked, qtbot, fluorescence):
    """The fluorescence crop at 20 photons: denoised first, said in the status line and
    recorded in the labels' provenance; the clean image is not, nor the noisy one when the
    user picks "never"."""
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.widget.keys import PROVENANCE_KEY

    from .test_denoise import photon_limited

    viewer, widget, _layer = docked
    run_and_wait(qtbot, widget)
    assert "denoised" not in widget.status
    assert viewer.layers["nuclei labels"].metadata[PROVENANCE_KEY]["denoised"] is False
    noisy = viewer.add_image(photon_limited(fluorescence[0], 20), name="noisy")
    widget.set_options(image=noisy)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["noisy labels"]
    assert "denoised first" in widget.status
    assert labels.metadata[PROVENANCE_KEY]["denoised"] is True
    assert summarize([match_image(fluorescence[1], labels.data)])["AP@0.5"] > 0.56   # 0.587
    widget.set_options(denoise="no")                     # the user's choice overrides
    run_and_wait(qtbot, widget)
    assert "denoised" not in widget.status
    assert labels.metadata[PROVENANCE_KEY]["denoised"] is False


def test_flip_averaging_is_used_and_recorded(docked, qtbot, fluorescence):
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.widget.keys import PROVENANCE_KEY

    viewer, widget, layer = docked
    widget.set_options(model="centerunet", tta=True)
    run_and_wait(qtbot, widget)
    _predictor, raw = widget._raw[id(layer)]
    labels = viewer.layers["nuclei labels"]
    assert raw.meta["tta"] and labels.metadata[PROVENANCE_KEY]["flip_averaged"] is True
    assert "4 flips averaged" in widget.status
    assert summarize([match_image(fluorescence[1], labels.data)])["AP@0.5"] >= 0.66  # 0.694 measured
    widget.set_options(tta=False)
    run_and_wait(qtbot, widget)
    assert labels.metadata[PROVENANCE_KEY]["flip_averaged"] is False
    assert labels.metadata[PROVENANCE_KEY]["sharpened"] is False      # not enlarged
    assert "flips" not in widget.status and "sharpened" not in widget.status


def test_box_edits_are_kept_when_a_slider_redraws_the_boxes(docked, qtbot):
    viewer, widget, _layer = docked
    widget.set_options(model="centerunet", device="cpu")
    run_and_wait(qtbot, widget)
    boxes = viewer.layers["nuclei boxes"]
    n = len(boxes.data)
    boxes.selected_data = {0, 1, 2, 3, 4}
    boxes.remove_selected()                                 # five boxes deleted by hand
    widget.set_options(score=0.5)
    qtbot.waitUntil(lambda: "nuclei boxes (edited)" in viewer.layers, timeout=20_000)
    assert len(viewer.layers["nuclei boxes (edited)"].data) == n - 5
    qtbot.waitUntil(lambda: widget._post_worker is None, timeout=20_000)
    widget.set_options(score=0.45)                          # redrawn boxes are not edits
    qtbot.waitUntil(lambda: widget._post_worker is None, timeout=20_000)
    assert len([ly for ly in viewer.layers if "(edited)" in ly.name]) == 1


def test_a_model_without_boxes_removes_the_previous_models_boxes(docked, qtbot):
    """CenterUNet's boxes name its labels; after a U-Net run they would name other nuclei."""
    viewer, widget, _layer = docked
    widget.set_options(model="centerunet", device="cpu")
    run_and_wait(qtbot, widget)
    assert len(viewer.layers["nuclei boxes"].data) > 10
    widget.set_options(model="unet")
    run_and_wait(qtbot, widget)
    assert "nuclei boxes" not in viewer.layers and "nuclei labels" in viewer.layers
    assert not [ly for ly in viewer.layers if "(edited)" in ly.name]


def test_sliders_after_a_model_switch_ask_for_a_run_and_undo_stays_in_its_run(docked, qtbot):
    viewer, widget, _layer = docked
    run_and_wait(qtbot, widget)
    labels = viewer.layers["nuclei labels"]
    labels.data_setitem((np.arange(20, 40), np.arange(20, 40)), 555)   # a hand edit
    widget.set_options(fg=0.8)
    qtbot.waitUntil(lambda: widget._post_worker is None and 555 not in labels.data, timeout=20_000)
    fresh = labels.data.copy()
    labels.undo()                                           # nothing of the old run comes back
    assert np.array_equal(labels.data, fresh)

    widget.set_options(model="centerunet")
    assert "press Run" in widget.status
    widget.set_options(score=0.9)
    assert "press Run" in widget.status and widget._post_worker is None
    assert np.array_equal(labels.data, fresh)


def test_an_image_removed_during_its_run_leaves_nothing_behind(docked, qtbot):
    viewer, widget, layer = docked
    widget.run()
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert "nuclei labels" not in viewer.layers and not widget._raw
    assert "removed" in widget.status


def test_long_messages_wrap_instead_of_widening_the_dock(docked):
    _viewer, widget, _layer = docked
    before = widget.native.minimumSizeHint().width()
    widget._status.value = ("centerunet_dsb2018.safetensors holds weights for model 'centerunet', "
                            "not 'unet': choose the 'centerunet' model or other weights " * 2)
    assert widget.native.minimumSizeHint().width() <= before + 10
    assert "holds weights" in widget._status.native.toolTip()


def test_library_warnings_reach_napari_as_notifications(docked, qtbot):
    """NaN pixels are logged by io.images inside the worker; the user sees it in napari,
    named after the layer, once per run (a second run says it again), and the run completes."""
    from napari.utils.notifications import notification_manager

    viewer, widget, layer = docked
    image = layer.data.astype(np.float32)
    image[:8, :8] = np.nan
    layer.data = image
    seen: list[str] = []

    def note(n) -> None:
        seen.append(str(n.message))

    notification_manager.notification_ready.connect(note)
    try:
        for run in (1, 2):
            run_and_wait(qtbot, widget)
            qtbot.waitUntil(lambda run=run: sum("NaN" in m for m in seen) == run, timeout=5_000)
    finally:
        notification_manager.notification_ready.disconnect(note)
    assert [m for m in seen if "NaN" in m] == 2 * ["nuclei: image has 64 NaN/infinite pixels; "
                                                   "treated as background"]
    assert viewer.layers["nuclei labels"].data.max() > 30


def test_a_relay_left_by_an_abandoned_worker_is_replaced_on_its_thread():
    """Cancelled generator workers are abandoned mid-run; the next worker on the same pool
    thread must not relay under the old prefix (seen in CI: a fine-tune's dataset name on a
    segmentation's warning)."""
    import logging
    import warnings

    from napari_deepcens.widget.workers import relay_warnings

    log = logging.getLogger("napari_deepcens.test")
    abandoned = relay_warnings("ds: ")
    abandoned.__enter__()                                # never exited, like a cancelled worker
    with warnings.catch_warnings(record=True) as caught, relay_warnings("nuclei: "):
        warnings.simplefilter("always")
        log.warning("image has 64 NaN/infinite pixels")
    assert [str(w.message) for w in caught] == ["nuclei: image has 64 NaN/infinite pixels"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log.warning("outside any worker")
    assert caught == []


def test_other_threads_log_as_before_while_a_worker_relays(monkeypatch):
    """While a worker relays, a warning logged on another thread is not swallowed: with no
    handler configured it still reaches Python's last-resort handler (stderr)."""
    import logging
    import threading

    from napari_deepcens.widget.workers import relay_warnings

    printed: list[str] = []

    class Record(logging.Handler):
        def emit(self, record):
            printed.append(record.getMessage())

    monkeypatch.setattr(logging, "lastResort", Record())
    monkeypatch.setattr(logging.root, "handlers", [])
    entered, leave = threading.Event(), threading.Event()

    def worker():
        with relay_warnings("x: "):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    entered.wait(10)
    try:
        logging.getLogger("napari_deepcens.io.images").warning("from the GUI thread")
    finally:
        leave.set()
        thread.join()
    assert printed == ["from the GUI thread"]


def test_runtime_memory_is_kept_between_runs_and_given_back_when_quiet(docked, qtbot, monkeypatch):
    """ONNX Runtime's arena makes the next run fast, so a run does not give it back at once;
    a quiet minute after the last run does, unless a run has started since."""
    _viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    predictor, _raw = widget._raw[id(layer)]
    released = []
    monkeypatch.setattr(predictor, "release_memory", lambda: released.append(1))
    assert widget._release_timer.isActive() and widget._release_timer.interval() == 60_000
    assert released == []
    widget._worker = object()                  # a run under way keeps it
    widget._release_timer.timeout.emit()
    assert released == []
    widget._worker = None
    widget._release_timer.timeout.emit()
    assert released == [1]


def test_the_score_knob_follows_the_weights(docked, tmp_path):
    """Shown for detection models and for U-Net weights with an object scorer (the bundled
    ones), hidden for U-Net weights without one, where it would do nothing."""
    from dataclasses import replace

    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights, save_weights

    _viewer, widget, _layer = docked
    assert not widget._score.native.isHidden()
    model, info = load_weights(bundled_weights("unet"))
    plain = save_weights(tmp_path / "plain.safetensors", model, replace(info, object_scorer={}))
    widget.set_options(weights=plain)
    assert widget._score.native.isHidden()
    widget.set_options(model="centerunet")
    assert not widget._score.native.isHidden()
    widget.set_options(model="unet")
    assert not widget._score.native.isHidden() and widget._score.min == 0.0


def test_chunked_results_of_the_same_second_get_their_own_folder(tmp_path):
    """Two chunked runs started within one second (Run pressed twice) must not collide: the
    second used to fail with "exists already"."""
    from napari_deepcens.widget.segment_widget import _fresh_output

    first = _fresh_output(tmp_path, "slide-20261127-122531")
    assert first.name == "slide-20261127-122531.zarr"
    first.mkdir()
    second = _fresh_output(tmp_path, "slide-20261127-122531")
    assert second.name == "slide-20261127-122531-2.zarr"
    (tmp_path / ".slide-20261127-122531-2.zarr.tmp-host-1-2").mkdir()    # a run still writing
    assert _fresh_output(tmp_path, "slide-20261127-122531").name == "slide-20261127-122531-3.zarr"


def test_boxes_lie_on_their_objects_as_napari_draws_them():
    """napari draws pixel (r, c) centred on (r, c); boxes count it from c to c + 1. Drawn
    unshifted, every box sat half a pixel below and right of its object, and a click on a
    thin object's box picked the neighbour below it."""
    from napari_deepcens.postprocess.rotated_boxes import rotated_boxes
    from napari_deepcens.widget.correction_widget import boxes_layer_data
    from napari_deepcens.widget.layers import napari_corners, object_in_box

    labels = np.zeros((20, 24), np.int32)
    labels[5:8, 10:14] = 1        # rows 5-7, columns 10-13: drawn over 4.5-7.5 and 9.5-13.5
    shapes, _features = boxes_layer_data(labels)
    assert np.allclose(shapes[0].min(0), (4.5, 9.5)) and np.allclose(shapes[0].max(0), (7.5, 13.5))
    thin = np.zeros((20, 20), np.int32)
    thin[5, 10:13] = 7            # one pixel tall, with a neighbour just below
    thin[6:9, 10:13] = 3
    row = next(r for r in rotated_boxes(thin) if r[0] == 7)
    corners = napari_corners(*row[1:])
    assert object_in_box(thin, corners, 7) == 7
    assert object_in_box(thin, corners, 0) == 7   # read from the pixels alone, too
    # all boxes at once (the live redraw) as one at a time
    from napari_deepcens.widget.layers import napari_corners_of

    rows = np.random.default_rng(0).uniform((0, 0, 1, 1, 0), (50, 40, 20, 9, 180), (30, 5))
    np.testing.assert_allclose(napari_corners_of(rows), [napari_corners(*r) for r in rows])


@pytest.mark.parametrize("original", ["deleted", "kept above the copy"])
def test_a_duplicated_labels_layer_is_the_users_and_never_written_over(docked, qtbot, original):
    """napari's Duplicate Layer copies the metadata that names the Segment tab's layers;
    biologists duplicate before correcting. A slider move wrote the new labels into the copy,
    wiping the corrections with no undo and no autosave."""
    from napari.layers._layer_actions import _duplicate_layer

    viewer, widget, _layer = docked
    run_and_wait(qtbot, widget)
    ours = viewer.layers["nuclei labels"]
    viewer.layers.selection = {ours}
    _duplicate_layer(viewer.layers)
    copy = viewer.layers["nuclei labels copy"]
    if original == "deleted":
        viewer.layers.remove(ours)
    else:
        viewer.layers.move(viewer.layers.index(copy), viewer.layers.index(ours))
    copy.paint((5, 5), 999, refresh=True)            # the user's correction, in the copy
    corrected = copy.data.copy()
    widget.set_options(fg=0.8)
    qtbot.waitUntil(lambda: widget._post_worker is None, timeout=20_000)
    assert np.array_equal(copy.data, corrected)
    fresh = widget.labels_layer(_layer)
    assert fresh is not None and fresh is not copy and not (fresh.data == 999).any()


def test_a_dock_opened_again_finds_its_labels(docked, qtbot):
    """The layers the Segment tab made are marked on the layer objects, so a dock closed
    and opened again (a new widget) updates them instead of adding 'nuclei labels [1]'."""
    viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    again = SegmentWidget(viewer)
    viewer.window.add_dock_widget(again)
    again.set_options(image=layer, device="cpu")
    run_and_wait(qtbot, again)
    assert [ly.name for ly in viewer.layers] == ["nuclei", "nuclei labels"]


def test_cancel_after_the_last_tile_says_cancelled(docked, qtbot):
    """Cancel pressed once the tiles are done: the worker ends with neither a result nor
    'aborted', and the status stayed on 'cancelling…' for good."""
    viewer, widget, _layer = docked
    seen = widget._on_progress

    def progress(p):
        seen(p)
        if p[0] >= p[1]:
            widget.cancel()

    widget._on_progress = progress
    run_and_wait(qtbot, widget)
    qtbot.wait(200)
    assert widget.status == "cancelled: nothing changed"
    assert [ly.name for ly in viewer.layers] == ["nuclei"]


def test_the_status_and_diameter_belong_to_the_image_chosen_now(docked, qtbot, fluorescence):
    """Switched to another image, the status kept 'N objects … diameter 25.5 px
    (estimated)' and the read-only diameter field the last image's estimate."""
    viewer, widget, layer = docked
    run_and_wait(qtbot, widget)
    estimate = widget._diameter.value
    assert estimate > 0
    other = viewer.add_image(fluorescence[0][:128, :128], name="other")
    widget.set_options(image=other)
    assert widget._diameter.value == 0.0 and widget.status == "press Run to segment 'other'"
    widget.set_options(score=0.5)  # no maps for it yet: said, not silently ignored
    assert "press Run to segment 'other'" in widget.status
    widget.set_options(image=layer)
    assert widget._diameter.value == estimate  # its own estimate again
    widget.set_options(auto_diameter=False, diameter=60.0)
    widget.set_options(auto_diameter=True)
    assert widget._diameter.value == estimate
    widget.set_options(auto_diameter=False)  # the typed diameter comes back
    assert widget._diameter.value == 60.0
