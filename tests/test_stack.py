"""Time-lapses and z-stacks: segmented plane by plane, one object size, labels numbered across
planes; read with their axes from TIFF, written back as one labels stack, shown in napari."""

import csv
import warnings

import numpy as np
import pytest
import tifffile

from napari_deepcens.cli import main
from napari_deepcens.errors import DeepCeNSError, ImageError
from napari_deepcens.evaluation.metrics import match_image, summarize
from napari_deepcens.inference.stack import restack, segment_stack
from napari_deepcens.io.images import read_stack

from .conftest import boxes_and_wait, logged, reports


def link_and_wait(qtbot, correct) -> None:
    """Link planes runs in a thread worker (the GUI never waits for it): wait here."""
    correct.link_planes()
    qtbot.waitUntil(lambda: correct._link_worker is None, timeout=60_000)


def ap50(truth, pred) -> float:
    return summarize([match_image(truth, pred)])["AP@0.5"]


def docked_movie(make_napari_viewer, stack):
    """A viewer with ``stack`` as the time-lapse "movie" (axes t, y, x) and the plugin docked."""
    from napari_deepcens.widget.dock import DeepCeNSDock

    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="movie", axis_labels=("t", "y", "x"))
    dock = DeepCeNSDock(viewer)
    viewer.window.add_dock_widget(dock)
    return viewer, dock, layer


@pytest.fixture(scope="module")
def timelapse(fluorescence):
    """Three frames of the 256² fluorescence crop: as it is, a dark frame, then drifted by
    9 px and bleached to 40 % (uint16, as a camera writes them)."""
    image, labels = fluorescence
    grey = (image[..., 0] if image.ndim == 3 else image).astype(np.uint16) * 40 + 100
    bleached = (np.roll(grey, 9, axis=1).astype(np.float32) * 0.4).astype(np.uint16)
    return np.stack([grey, np.full_like(grey, 100), bleached]), labels


def test_planes_are_segmented_alike_and_numbered_across_the_stack(predictor, timelapse):
    stack, truth = timelapse
    result = segment_stack(predictor, stack, keep_maps=True)
    assert result.leading == (3,) and result.blank == [(1,)]
    labels = result.stacked()["nucleus"][0]
    assert labels.shape == stack.shape and labels.dtype == np.int32
    assert not labels[1].any()                                   # a dark frame: empty, no error
    first, last = labels[0], labels[2]
    assert first.max() < last[last > 0].min()                    # one identity per object
    # one object size for every frame, from the reference frame (the middle one is dark, so
    # its neighbour), as that frame alone would get it
    alone = predictor.predict(stack[2])
    assert result.diameter == pytest.approx(alone.diameter, rel=1e-6) and result.estimated
    assert np.array_equal(np.where(last > 0, last - first.max(), 0), predictor.instances(alone).labels)
    # the first frame runs at that size: the labels of the frame alone at that diameter
    assert np.array_equal(first, predictor.segment(stack[0], diameter=result.diameter))
    assert ap50(truth, first) > 0.6             # 53 small nuclei: 0.645 (its own estimate: 0.683)
    # bleaching does not matter (each frame normalised on its own) and drift moves the labels
    assert ap50(np.roll(truth, 9, axis=1), last) > 0.6                    # 0.677
    assert set(result.raws) == {(0,), (2,)}


def test_only_chosen_planes_run_and_the_reference_decides(predictor, timelapse):
    stack, _ = timelapse
    result = segment_stack(predictor, stack, planes=[(2,)], diameter=25.0)
    assert list(result.planes) == [(2,)] and result.diameter == 25.0 and not result.estimated
    with pytest.raises(DeepCeNSError, match="outside"):
        segment_stack(predictor, stack, planes=[(3,)])
    with pytest.raises(ImageError, match="every plane"):
        segment_stack(predictor, np.zeros((2, 64, 64), np.uint8))


def write(path, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, data, **kwargs)
    return path


def test_tiff_axes_are_read(tmp_path):
    rng = np.random.default_rng(0)
    hyper = rng.integers(0, 4000, (2, 3, 2, 32, 40), dtype=np.uint16)
    write(tmp_path / "h.tif", hyper, imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(ImageError, match=r"2 channels .*--channel \(0 to 1\)"):
        read_stack(tmp_path / "h.tif")
    nuclear = read_stack(tmp_path / "h.tif", channel=1)
    assert nuclear.axes == "TZYX" and np.array_equal(nuclear.data, hyper[:, :, 1])
    with pytest.raises(ImageError, match="0 to 1"):
        read_stack(tmp_path / "h.tif", channel=2)
    # a planar RGB TIFF: colour last, one image; a single-plane ImageJ stack: one image
    rgb = rng.integers(0, 255, (3, 32, 40), dtype=np.uint8)
    planar = read_stack(write(tmp_path / "rgb.tif", rgb))
    assert planar.axes == "YXS" and planar.leading == "" and np.array_equal(planar.data[..., 2], rgb[2])
    one = read_stack(write(tmp_path / "one.tif", hyper[:1, :1, 0], imagej=True, metadata={"axes": "TZYX"}))
    assert one.axes == "YX" and one.data.shape == (32, 40)
    assert read_stack(write(tmp_path / "q.tif", hyper[:, :, 0].reshape(6, 32, 40))).axes == "QYX"


def test_cli_writes_a_labels_stack_with_its_axes(tmp_path, timelapse, capsys):
    stack, _ = timelapse
    write(tmp_path / "movie.tif", stack, imagej=True, metadata={"axes": "TYX"})
    write(tmp_path / "frame.tif", stack[2])
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "movie.tif"), str(tmp_path / "frame.tif"),
                 "-o", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "movie.tif: 3 planes (axes TYX)" in printed and "1 blank plane left empty" in printed
    with tifffile.TiffFile(out / "movie_labels.tif") as tif:
        assert tif.series[0].axes == "TYX"
        labels = tif.series[0].asarray()
    frame = tifffile.imread(out / "frame_labels.tif")
    last = labels[2].astype(np.int64)
    # the frame alone gets the same objects (its own estimate: the stack's reference frame)
    assert np.array_equal(np.where(last > 0, last - labels[0].max(), 0), frame)

    # a multichannel hyperstack needs the nuclear channel named: a message, not a traceback
    two = np.stack([stack, stack[:, ::-1]], axis=1)
    write(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "TCYX"})
    assert main(["segment", str(tmp_path / "two.tif"), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "--channel" in err and "Traceback" not in err
    assert main(["segment", str(tmp_path / "two.tif"), "-o", str(out), "--device", "cpu",
                 "--channel", "0"]) == 0
    assert np.array_equal(tifffile.imread(out / "two_labels.tif"), labels)


def test_cli_stack_boxes_name_their_plane(tmp_path, timelapse):
    import csv

    stack, _ = timelapse
    write(tmp_path / "movie.tif", np.stack([stack[0], np.roll(stack[0], 2, axis=1)]),
          imagej=True, metadata={"axes": "ZYX"})
    for extra in ([], ["--link"]):                             # linked: the boxes follow
        out = tmp_path / ("linked" if extra else "pieces")
        assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(out), "--model",
                     "centerunet", "--device", "cpu", *extra]) == 0
        rows = list(csv.DictReader(open(out / "movie_boxes.csv")))
        labels = tifffile.imread(out / "movie_labels.tif")
        assert rows and {r["z"] for r in rows} == {"0", "1"}
        for row in rows[:: max(1, len(rows) // 10)]:           # each box sits on its object
            z, label = int(row["z"]), int(row["label"])
            cy, cx = round(float(row["cy"])), round(float(row["cx"]))
            ys, xs = np.nonzero(labels[z] == label)
            assert ys.size and abs(ys.mean() - cy) < 4 and abs(xs.mean() - cx) < 4
    assert len(np.unique(labels)) < len(np.unique(tifffile.imread(tmp_path / "pieces" / "movie_labels.tif")))


def test_the_widget_segments_the_plane_on_screen_then_every_plane(make_napari_viewer, qtbot,
                                                                   timelapse, monkeypatch, tmp_path):
    stack, truth = timelapse
    viewer, dock, layer = docked_movie(make_napari_viewer, stack)
    widget = dock.segment
    widget.set_options(image=layer, device="cpu")
    assert not widget._planes.native.isHidden()                  # shown for stacks only

    viewer.dims.set_current_step(0, 2)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    labels = viewer.layers["movie labels"]
    assert labels.data.shape == stack.shape and widget.status.startswith("plane 2:")
    assert labels.data[2].any() and not labels.data[0].any()

    widget.set_options(planes="all")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert "3 planes" in widget.status and "1 blank" in widget.status
    assert ap50(truth, labels.data[0]) > 0.6 and not labels.data[1].any()
    assert tuple(labels.axis_labels) == ("t", "y", "x")          # linking reads the axes
    assert labels.data[0].max() < labels.data[2][labels.data[2] > 0].min()

    # sliders re-threshold every plane whose maps are kept, never the network
    predictor, _ = widget._raw[id(layer)]
    monkeypatch.setattr(predictor, "predict_iter", lambda *a, **k: pytest.fail("network re-ran"))
    before = labels.data.copy()
    widget.set_options(fg=0.93)
    qtbot.waitUntil(lambda: widget._post_worker is None and not np.array_equal(labels.data, before),
                    timeout=20_000)
    for plane in (0, 2):
        assert 0 < (labels.data[plane] > 0).sum() < (before[plane] > 0).sum()
    monkeypatch.undo()

    # a hand edit on frame 0, then frame 2 again on its own: frame 0 keeps the edit in place,
    # and Ctrl+Z still undoes it (only frame 2's history goes with frame 2)
    corner = labels.data[0, :12, :12].copy()
    square = np.indices((1, 12, 12)).reshape(3, -1)               # frame 0's top-left corner
    labels.data_setitem(tuple(square), 999)                      # as napari's tools paint
    square[0] = 2
    labels.data_setitem(tuple(square), 777)                      # and frame 2's
    viewer.dims.set_current_step(0, 2)
    widget.set_options(planes="current")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert (labels.data[0, :12, :12] == 999).all() and "movie labels (edited)" in viewer.layers
    assert labels.data[2][labels.data[2] > 0].min() > 999        # numbered after the others
    assert not (labels.data[2] == 777).any()
    new_frame = labels.data[2].copy()
    labels.undo()                                  # the frame-2 edit is gone with frame 2…
    assert np.array_equal(labels.data[0, :12, :12], corner)      # …the frame-0 one undoes
    assert np.array_equal(labels.data[2], new_frame)             # and frame 2 stays new
    labels.undo()                                  # nothing more: frame 2 is not painted back
    assert np.array_equal(labels.data[2], new_frame)
    labels.redo()
    assert (labels.data[0, :12, :12] == 999).all()
    viewer.layers.remove("movie labels (edited)")
    # an edit in the plane a run replaces: the layer as it was is kept first
    edited = labels.data.copy()
    edited[2, :12, :12] = 5000
    labels.data = edited
    labels.events.paint(value=[])
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert (viewer.layers["movie labels (edited)"].data[2, :12, :12] == 5000).all()
    assert not (labels.data[2] == 5000).any() and (labels.data[0, :12, :12] == 999).all()
    # the stack's top label deleted on frame 2, frame 0 re-run, the delete undone: the new
    # frame-0 objects were numbered past it, so no label names a nucleus in two frames
    top = int(labels.data.max())
    labels.data_setitem(np.nonzero(labels.data == top), 0)
    viewer.dims.set_current_step(0, 0)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    labels.undo()
    assert (labels.data[2] == top).any()
    assert not set(np.unique(labels.data[0])[1:]) & set(np.unique(labels.data[2])[1:])
    viewer.dims.set_current_step(0, 2)

    # export from a stack: the plane on screen, named after it
    correct = dock.correct
    correct._labels_layer.value = labels
    correct._image.value = layer
    correct._dataset.value = tmp_path / "ds"
    folder = correct.export()
    assert folder is not None and folder.name.endswith("plane2")
    assert np.array_equal(tifffile.imread(folder / "image.tif"), stack[2])
    boxes_and_wait(qtbot, correct)
    boxes = viewer.layers["movie labels boxes"]
    assert boxes.ndim == 3 and len(boxes.data) == len(np.unique(labels.data)) - 1


def test_replacing_a_plane_forgets_only_its_history():
    """Brush strokes (masked atoms), fancy-index edits and a 3-D brush across planes: after
    plane 2 is replaced, undo walks back every other plane's edits and never repaints 2."""
    import napari

    from napari_deepcens.widget.history import forget_planes

    layer = napari.layers.Labels(np.zeros((3, 32, 32), np.int32))
    layer.paint((0, 5, 5), 7)                                            # plane 0
    layer.data_setitem((np.array([1, 2]), np.array([3, 3]), np.array([3, 3])), 9)  # 1 and 2
    layer.paint((2, 20, 20), 4)                                          # plane 2 only
    layer.n_edit_dimensions, layer.brush_size = 3, 3
    layer.paint((1, 10, 10), 5)                                          # planes 0, 1 and 2
    assert list((layer.data == 5).sum(axis=(1, 2))) == [5, 9, 5]
    layer.data[2] = 0                                                    # a program's new plane
    forget_planes(layer, [(2,)])
    assert len(layer._undo_history) == 3                                 # plane 2's stroke gone
    layer.undo()
    assert not (layer.data == 5).any()
    layer.undo()
    assert layer.data[1, 3, 3] == 0 and layer.data[0, 5, 5] == 7
    layer.undo()
    assert not layer.data.any()
    for _ in range(3):
        layer.redo()
    assert layer.data[0, 5, 5] == 7 and (layer.data[:2] == 5).sum() == 14 and not layer.data[2].any()


def test_boxes_select_their_objects_after_correct_tab_edits_and_undo(make_napari_viewer, qtbot,
                                                                     timelapse):
    """Delete, Relabel 1..N, Link planes, their undo, and one frame run again (the other
    frames' boxes come from the widget's cache): a box still selects the object it holds,
    and selecting an object selects its box."""
    viewer, dock, layer = docked_movie(make_napari_viewer, timelapse[0])
    widget, correct = dock.segment, dock.correct
    widget.set_options(image=layer, device="cpu", model="centerunet", planes="all")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    labels = viewer.layers["movie labels"]
    correct._labels_layer.value = labels

    def check_every_box() -> None:
        boxes = viewer.layers["movie boxes"]
        checked = 0
        for i in range(len(boxes.data)):
            plane, (cy, cx) = round(float(boxes.data[i][0, 0])), boxes.data[i][:, 1:].mean(0)
            under = int(labels.data[plane, int(cy), int(cx)])
            if not under:                                 # a deleted object's box
                continue
            labels.selected_label = 1 if under != 1 else 2
            boxes.selected_data = {i}
            assert labels.selected_label == under, i      # box → its object
            boxes.selected_data = set()
            viewer.dims.set_current_step(0, plane)
            labels.selected_label = 1 if under != 1 else 2
            labels.selected_label = under
            assert i in boxes.selected_data or len(boxes.selected_data) == 1, i   # object → a box
            checked += 1
        assert checked > 20

    labels.selected_label = 3
    correct.delete_selected()
    check_every_box()
    labels.undo()                                        # object 3 back: its box selects it
    assert (labels.data == 3).any()
    check_every_box()
    correct._relabel.changed.emit()                      # Relabel 1..N after a delete
    labels.selected_label = 5
    correct.delete_selected()
    correct._relabel.changed.emit()
    check_every_box()
    labels.undo()
    labels.undo()
    check_every_box()
    link_and_wait(qtbot, correct)                        # frame 2's objects take frame 0's labels
    check_every_box()
    viewer.dims.set_current_step(0, 0)
    widget.set_options(planes="current")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    check_every_box()


def test_stack_boxes_start_over_with_a_new_labels_layer(make_napari_viewer, qtbot, timelapse):
    """Labels deleted, one plane run again: the other planes' old boxes go with them (they
    would share label numbers with the new plane's objects)."""
    viewer, dock, layer = docked_movie(make_napari_viewer, timelapse[0])
    widget = dock.segment
    widget.set_options(image=layer, device="cpu", model="centerunet", planes="all")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    boxes = viewer.layers["movie boxes"]
    assert {round(float(b[0, 0])) for b in boxes.data} == {0, 2}     # frame 1 is dark
    assert tuple(boxes.axis_labels) == ("t", "y", "x")
    viewer.layers.remove("movie labels")
    viewer.dims.set_current_step(0, 2)
    widget.set_options(planes="current")
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert {round(float(b[0, 0])) for b in viewer.layers["movie boxes"].data} == {2}
    assert not viewer.layers["movie labels"].data[0].any()


def test_planes_run_one_by_one_keep_maps_within_the_memory_cap(make_napari_viewer, qtbot,
                                                                timelapse, monkeypatch):
    from napari_deepcens.widget import segment_widget
    from napari_deepcens.widget.segment_widget import SegmentWidget

    stack, _ = timelapse
    monkeypatch.setattr(segment_widget, "CHUNKED_ABOVE", stack[0].size)   # one plane's maps
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="movie")
    widget = SegmentWidget(viewer)
    widget.set_options(image=layer, device="cpu")
    for plane in (0, 2):
        viewer.dims.set_current_step(0, plane)
        widget.run()
        qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    _, result = widget._raw[id(layer)]
    assert set(result.planes) == {(0,), (2,)} and set(result.raws) == {(2,)}
    labels = viewer.layers["movie labels"]
    before = labels.data.copy()
    widget.set_options(fg=0.93)
    qtbot.waitUntil(lambda: widget._post_worker is None and not np.array_equal(labels.data, before),
                    timeout=20_000)
    assert np.array_equal(labels.data[0], before[0])            # no maps: labels as they were
    assert (labels.data[2] > 0).sum() < (before[2] > 0).sum()
    assert "1 without kept maps" in widget.status



def test_planes_run_one_at_a_time_share_the_stacks_size_and_stale_slider_results_are_dropped(
        make_napari_viewer, qtbot, timelapse):
    from napari_deepcens.widget.segment_widget import SegmentWidget

    stack, _ = timelapse
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="movie")
    widget = SegmentWidget(viewer)
    widget.set_options(image=layer, device="cpu")
    viewer.dims.set_current_step(0, 0)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    predictor, first = widget._raw[id(layer)]
    gen = restack(predictor, first, {"fg_threshold": 0.95})
    while True:                                   # a slider move computed on the first maps…
        try:
            next(gen)
        except StopIteration as stop:
            stale = stop.value
            break
    viewer.dims.set_current_step(0, 2)
    widget.run()                                  # …lands after the next run
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    _, result = widget._raw[id(layer)]
    assert result is first and set(result.raws) == {(0,), (2,)}      # merged: the same size
    assert result.diameter == first.diameter and result.estimated and "(estimated)" in widget.status
    labels = viewer.layers["movie labels"].data.copy()
    widget._on_restacked(layer, first, {**stale, (2,): (object(), None)})
    assert np.array_equal(viewer.layers["movie labels"].data[2], labels[2])   # not its maps
    assert (viewer.layers["movie labels"].data[0] > 0).sum() < (labels[0] > 0).sum()  # its own
    provenance = viewer.layers["movie labels"].metadata["deepcens_provenance"]
    assert set(provenance["plane_diameters"]) == {"0", "2"}


def test_grey_pages_of_a_colour_image_and_holes_in_a_stack(tmp_path):
    from napari_deepcens.postprocess.edit import fill_holes

    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    image = read_stack(write(tmp_path / "pages.tif", rgb, photometric="minisblack"))
    assert image.axes == "YXS" and np.array_equal(image.data, rgb)
    ring = np.zeros((2, 9, 9), np.int32)
    ring[1, 2:7, 2:7] = 4
    ring[1, 4, 4] = 0                                            # a hole in frame 1
    filled = fill_holes(ring)
    assert filled[1, 4, 4] == 4 and not filled[0].any()


def test_linking_gives_an_object_one_label_across_planes():
    from napari_deepcens.postprocess.link import link_planes

    from .conftest import disc_labels

    first = disc_labels((64, 64), [(10, 10), (30, 30), (50, 12)], 6)
    second = disc_labels((64, 64), [(12, 13), (31, 33)], 6)          # moved; the third is gone
    third = disc_labels((64, 64), [(14, 16), (50, 50)], 6)           # one moved on, one new
    stack = np.stack([first, second, third])                         # each plane counts from 1
    linked = link_planes(stack)
    assert linked.dtype == np.int32
    a, b, c = (linked[k][tuple(p)] for k, p in enumerate([(10, 10), (12, 13), (14, 16)]))
    assert a == b == c                                               # one track
    assert linked[1][31, 33] == linked[0][30, 30]
    assert linked[2][50, 50] not in np.unique(linked[:2])           # a newcomer: its own label
    assert len(np.unique(linked)) - 1 == 4                           # 4 objects, not 7 pieces
    # two stack axes (time, z): linked along the one asked for only
    tz = np.stack([stack, stack])
    along_z = link_planes(tz, axis=1)
    assert len(np.unique(along_z[0])) - 1 == 4 and not set(np.unique(along_z[0])[1:]) & set(
        np.unique(along_z[1])[1:])
    # labels unique across the stack: the lookup table carries boxes along
    unique = np.where(stack > 0, stack + np.array([0, 10, 20])[:, None, None], 0)
    relinked, lut = link_planes(unique, return_map=True)
    assert np.array_equal(lut[unique], relinked)
    with pytest.raises(ValueError):
        link_planes(first)
    with pytest.raises(ValueError, match="min_iou"):
        link_planes(stack, min_iou=0)



def test_gap_closing_bridges_a_frame_where_a_nucleus_was_missed():
    """A nucleus missed in one frame keeps its label with ``max_gap=1`` (and gets a new one
    without); one missed for two frames only with ``max_gap=2``; a newcomer where nothing
    ended stays new; the lookup table still follows."""
    from napari_deepcens.postprocess.link import link_planes

    from .conftest import disc_labels

    centres = [[(10, 10), (40, 40)], [(12, 12)], [(14, 14), (44, 44)], [(16, 16), (46, 46), (10, 52)],
               [(18, 18)], [(20, 20)], [(22, 22), (52, 52)]]
    stack = np.stack([disc_labels((64, 64), c, 6) for c in centres])  # each plane counts from 1
    plain = link_planes(stack, max_gap=0)
    assert plain[2][44, 44] != plain[0][40, 40]                        # the gap breaks the track
    bridged = link_planes(stack, max_gap=1)
    track = bridged[0][40, 40]
    assert bridged[2][44, 44] == bridged[3][46, 46] == track           # bridged over frame 1
    assert bridged[6][52, 52] != track                                 # missed 2 frames: new
    assert bridged[3][10, 52] not in np.unique(bridged[:3])            # a newcomer stays new
    assert len({bridged[k][10 + 2 * k, 10 + 2 * k] for k in range(7)}) == 1
    assert link_planes(stack, max_gap=2)[6][52, 52] == track           # two frames bridged
    # objects: 2 tracks, the newcomer, the late return (max_gap 1); without, one more
    assert len(np.unique(bridged)) - 1 == 4 and len(np.unique(plain)) - 1 == 5
    unique = np.where(stack > 0, stack + 10 * np.arange(7)[:, None, None], 0)
    relinked, lut = link_planes(unique, return_map=True, max_gap=1)
    assert np.array_equal(lut[unique], relinked)
    np.testing.assert_array_equal(relinked, bridged)
    with pytest.raises(ValueError, match="max_gap"):
        link_planes(stack, max_gap=-1)
    # open tracks whose outlines overlap keep them whole: a small nucleus, a large one around
    # it that ends too, two empty planes, the small one back
    small, large = disc_labels((40, 40), [(20, 20)], 3), disc_labels((40, 40), [(20, 20)], 12)
    empty = np.zeros_like(small)
    both = link_planes(np.stack([small, large, empty, small]), max_gap=2)
    assert both[3][20, 20] == both[0][20, 20] != both[1][20, 20]
    assert link_planes(np.stack([small, empty, small]))[2][20, 20] != 1  # default: no gap closing



def test_track_table_follows_each_nucleus_centroid_and_area():
    from napari_deepcens.postprocess.tracks import count_tracks, track_table

    from .conftest import disc_labels

    frames = [disc_labels((64, 64), [(10 + 2 * t, 12 + 3 * t), (40, 40)], 5) for t in range(3)]
    frames[2][frames[2] == 2] = 0                                     # the second one gone
    table = track_table(np.stack(frames))
    assert table.shape == (5, 5) and count_tracks(table) == 2
    np.testing.assert_array_equal(table[:, :2], [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1]])
    np.testing.assert_allclose(table[:3, 2:4], [[10, 12], [12, 15], [14, 18]], atol=1e-9)
    assert table[0, 4] == np.count_nonzero(frames[0] == 1)
    # (T, Z, Y, X): a centroid in z too; along the second stack axis: its index in column 1
    tz = np.stack([np.stack([frames[0], frames[0] * 0]), np.stack([frames[1], frames[1]])])
    table4 = track_table(tz)
    assert table4.shape[1] == 6
    np.testing.assert_allclose(table4[(table4[:, 0] == 1) & (table4[:, 1] == 1)][0, 2:5], [0.5, 12, 15])
    assert set(track_table(tz, axis=1)[:, 1]) == {0, 1}
    assert track_table(np.zeros((2, 8, 8), np.int32)).shape == (0, 5)
    with pytest.raises(ValueError):
        track_table(frames[0])


def test_cli_links_a_time_lapse_and_the_correction_tab_links_undoably(
        tmp_path, fluorescence, make_napari_viewer, capsys, qtbot):
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    image, _ = fluorescence
    grey = (image[..., 0] if image.ndim == 3 else image).astype(np.uint16) * 40 + 100
    movie = np.stack([np.roll(grey, (t, 2 * t), axis=(0, 1)) for t in range(3)])
    write(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(tmp_path / "a"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(tmp_path / "b"), "--device", "cpu",
                 "--link"]) == 0
    said = capsys.readouterr().out
    pieces = tifffile.imread(tmp_path / "a" / "movie_labels.tif")
    linked = tifffile.imread(tmp_path / "b" / "movie_labels.tif")
    assert np.array_equal(pieces > 0, linked > 0)                    # only the numbers change
    per_frame = [set(np.unique(f)[1:]) for f in linked]
    shared = len(per_frame[0] & per_frame[1] & per_frame[2])
    assert shared >= 0.9 * len(per_frame[0])                         # tracks through 3 frames
    assert len(np.unique(linked)) - 1 < 0.5 * (len(np.unique(pieces)) - 1)
    n_pieces, n_objects = len(np.unique(pieces)) - 1, len(np.unique(linked)) - 1
    assert f"{n_pieces} nucleus pieces linked into {n_objects} objects" in said
    # linked along T: a tracks table, one row per nucleus per frame
    assert not (tmp_path / "a" / "movie_tracks.csv").exists()
    with open(tmp_path / "b" / "movie_tracks.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["label", "t", "y", "x", "area"]
    assert len(rows) - 1 == sum(len(np.unique(f)) - 1 for f in linked)
    first = next(r for r in rows[1:] if r[1] == "0")
    mask = linked[0] == int(first[0])
    assert int(first[4]) == mask.sum()
    assert abs(float(first[2]) - np.argwhere(mask)[:, 0].mean()) < 0.01
    # a dark middle frame (nothing found there): gap closing carries the labels over it
    dark = movie.copy()
    dark[1] = 100
    write(tmp_path / "dark.tif", dark, imagej=True, metadata={"axes": "TYX"})
    for out, extra in (("c", []), ("d", ["--link-gap", "0"])):
        assert main(["segment", str(tmp_path / "dark.tif"), "-o", str(tmp_path / out),
                     "--device", "cpu", "--link", *extra]) == 0
    assert main(["segment", str(tmp_path / "dark.tif"), "-o", str(tmp_path / "e"),
                 "--link-gap", "1"]) == 2                             # without --link: refused
    assert "add --link" in capsys.readouterr().err
    bridged = tifffile.imread(tmp_path / "c" / "dark_labels.tif")
    broken = tifffile.imread(tmp_path / "d" / "dark_labels.tif")
    assert not bridged[1].any() and np.array_equal(bridged > 0, broken > 0)
    ends = [set(np.unique(f)[1:]) for f in (bridged[0], bridged[2])]
    assert len(ends[0] & ends[1]) >= 0.8 * len(ends[0])              # 42 of 48
    assert not set(np.unique(broken[0])[1:]) & set(np.unique(broken[2])[1:])
    # a plain stack names no axis: it may be a z-stack, where an empty slice separates two
    # nuclei, so nothing is bridged unless asked, and the user is told
    tifffile.imwrite(tmp_path / "plain.tif", np.concatenate([dark, dark[2:], dark[2:]]))  # 5: no colour
    with logged("napari_deepcens") as told:
        assert main(["segment", str(tmp_path / "plain.tif"), "-o", str(tmp_path / "f"),
                     "--device", "cpu", "--link"]) == 0
    plain = tifffile.imread(tmp_path / "f" / "plain_labels.tif")
    assert not set(np.unique(plain[0])[1:]) & set(np.unique(plain[2])[1:])
    assert any("not named time (T) or depth (Z)" in m for m in told), told

    viewer = make_napari_viewer()
    layer = viewer.add_labels(pieces.astype(np.int32), name="pieces")
    correct = CorrectionWidget(viewer)
    said = reports(correct)
    correct._labels_layer.value = layer
    link_and_wait(qtbot, correct)
    assert any("pieces →" in m for m in said)
    assert len(np.unique(layer.data)) == len(np.unique(linked))
    tracks = viewer.layers["pieces tracks"]                          # one stack axis: a time-lapse
    assert len(np.unique(tracks.data[:, 0])) >= 0.9 * (len(np.unique(pieces[0])) - 1)
    assert "tracks over 2+ planes" in said[-1]
    layer.undo()
    assert np.array_equal(layer.data, pieces)
    # the gap knob: a plane where the nuclei were erased is bridged (1, default) or not (0)
    gap = np.stack([pieces[0], np.zeros_like(pieces[0]), pieces[0]]).astype(np.int32)
    layer2 = viewer.add_labels(gap, name="gap")
    correct.reset_choices()
    correct._labels_layer.value = layer2
    n = len(np.unique(pieces[0])) - 1
    link_and_wait(qtbot, correct)
    assert len(np.unique(layer2.data)) - 1 == n
    assert "stack axis has no name" in said[-1]                # bridged as time: said so
    layer2.undo()
    correct._gap.value = 0
    link_and_wait(qtbot, correct)
    assert len(np.unique(layer2.data)) - 1 == 2 * n
    correct._gap.value = 1
    # the same along z: an empty slice may separate two nuclei, so no bridge and no tracks
    layer3 = viewer.add_labels(gap.copy(), name="zgap", axis_labels=("z", "y", "x"))
    correct.reset_choices()
    correct._labels_layer.value = layer3
    link_and_wait(qtbot, correct)
    assert len(np.unique(layer3.data)) - 1 == 2 * n and "zgap tracks" not in viewer.layers
    # a (time, z) layer napari knows the axes of: linked along z, into 3-D objects per time
    tz = np.stack([pieces[:2], pieces[1:]]).astype(np.int32)
    layer4 = viewer.add_labels(tz, name="tz", axis_labels=("t", "z", "y", "x"))
    correct.reset_choices()
    correct._labels_layer.value = layer4
    link_and_wait(qtbot, correct)
    assert set(np.unique(layer4.data[0, 0])[1:]) & set(np.unique(layer4.data[0, 1])[1:])
    assert not set(np.unique(layer4.data[0])[1:]) & set(np.unique(layer4.data[1])[1:])
    assert "tz tracks" not in viewer.layers                          # 3-D objects, not tracks


def test_deepcens_napari_opens_a_time_lapse_with_its_axes(make_napari_viewer, tmp_path, timelapse,
                                                          monkeypatch):
    import napari

    stack, _ = timelapse
    viewers = []
    monkeypatch.setattr(napari, "Viewer", lambda: viewers.append(make_napari_viewer()) or viewers[-1])
    monkeypatch.setattr(napari, "run", lambda: None)
    write(tmp_path / "movie.tif", stack, imagej=True, metadata={"axes": "TYX"})
    assert main(["napari", str(tmp_path / "movie.tif"), "--no-run"]) == 0
    layer = viewers[0].layers["movie"]
    assert layer.data.shape == stack.shape and tuple(layer.axis_labels) == ("t", "y", "x")


def test_a_run_stopped_while_writing_tracks_is_redone(tmp_path, fluorescence, monkeypatch):
    """The labels mark an image done (a rerun skips it): written before the tracks table, a
    run stopped in between left a time-lapse whose tracks no rerun would ever write."""
    import napari_deepcens.io.export as export

    image, _ = fluorescence
    grey = (image[..., 0] if image.ndim == 3 else image).astype(np.uint16) * 40 + 100
    movie = np.stack([np.roll(grey, (t, 2 * t), axis=(0, 1)) for t in range(2)])
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    real = export.write_tracks

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_tracks", stopped)
    assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(out), "--device", "cpu",
                 "--link"]) != 0  # Ctrl+C while the tracks were written
    assert not (out / "movie_labels.tif").exists()
    monkeypatch.setattr(export, "write_tracks", real)
    assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(out), "--device", "cpu", "--link"]) == 0
    assert (out / "movie_tracks.csv").is_file() and (out / "movie_labels.tif").is_file()


def test_link_planes_runs_off_the_gui_thread_and_never_overwrites_an_edit(make_napari_viewer, qtbot):
    """Linking a long time-lapse took 11–14 s on the GUI thread; it runs in a worker now, and
    an edit made while it ran is kept: the link is refused, not applied over it."""
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    from .conftest import disc_labels

    frame = disc_labels((64, 64), [(16, 16), (40, 44)], 6)
    stack = np.stack([frame, frame * 3, frame * 5]).astype(np.int32)  # 2 objects, 3 numberings
    viewer = make_napari_viewer()
    layer = viewer.add_labels(stack.copy(), name="movie", axis_labels=("t", "y", "x"))
    correct = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct._labels_layer.value = layer
    said = reports(correct)
    correct.link_planes()
    assert correct._link_worker is not None and "linking the planes" in said[-1]
    layer.paint((1, 60, 60), 9, refresh=True)            # the user goes on correcting
    qtbot.waitUntil(lambda: correct._link_worker is None, timeout=60_000)
    assert "was edited while its planes were linked" in said[-1]
    assert (layer.data[1] == 9).any() and np.array_equal(layer.data[0], stack[0])
    link_and_wait(qtbot, correct)                        # again, left alone: linked
    assert len(np.unique(layer.data)) - 1 == 3           # the 2 nuclei and the painted blob
    assert "planes linked: 7 pieces" in said[-1]


def test_link_planes_refuses_whatever_changed_the_labels_meanwhile(make_napari_viewer, qtbot,
                                                                  monkeypatch):
    """An undo, or a Segment-tab slider move, raises no event: the result is compared with the
    labels as they are now. A closed layer is not linked; a bug is a message, not a hang."""
    from napari_deepcens.postprocess import tracks
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    from .conftest import disc_labels

    frame = disc_labels((64, 64), [(16, 16), (40, 44)], 6)
    stack = np.stack([frame, frame * 3, frame * 5]).astype(np.int32)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(stack.copy(), name="movie", axis_labels=("t", "y", "x"))
    correct = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(correct)
    correct._labels_layer.value = layer
    said = reports(correct)
    layer.selected_label = 3
    correct.delete_selected()
    correct.link_planes()
    layer.undo()                                          # no paint or data event
    qtbot.waitUntil(lambda: correct._link_worker is None, timeout=60_000)
    assert "was edited while its planes were linked" in said[-1]
    assert np.array_equal(layer.data, stack)
    correct.link_planes()
    layer.data[2][layer.data[2] == 5] = 0                # written in place, as a slider does
    qtbot.waitUntil(lambda: correct._link_worker is None, timeout=60_000)
    assert "was edited while its planes were linked" in said[-1]
    layer.data[2] = stack[2]
    correct.link_planes()
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: correct._link_worker is None, timeout=60_000)
    assert "was closed while its planes were linked" in said[-1]
    assert "movie tracks" not in viewer.layers

    def bug(*_args, **_kwargs):
        raise IndexError("a bug")

    monkeypatch.setattr(tracks, "track_table", bug)
    again = viewer.add_labels(stack.copy(), name="again", axis_labels=("t", "y", "x"))
    correct.reset_choices()
    correct._labels_layer.value = again
    link_and_wait(qtbot, correct)
    assert "linking failed (IndexError): a bug" in said[-1]
    assert correct._link.enabled
