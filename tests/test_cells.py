"""Cells + nuclei out of the box: the bundled two-stain DeepCeNS (preset ``cells``), its input
from an RGB image, a multichannel TIFF or two napari layers, and fine-tuning it by name."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_deepcens.errors import WeightsError
from napari_deepcens.io.images import ImageError, read_stack
from napari_deepcens.io.layout import list_samples

CELLS = Path(__file__).parent / "data" / "u2os_cells"
#: U2OS nuclei are ~44 px across in these fields: given, the test skips the size estimate.
NUCLEUS_DIAMETER = 44.0
#: AP@0.5 per class of the bundled cells model on the val crop (measured: see the test), with
#: a margin for CPU/bf16 differences.
GOLDEN_AP50 = {"cell": 0.647 - 0.06, "nucleus": 0.762 - 0.06}


@pytest.fixture(scope="module")
def cells_predictor():
    from napari_deepcens import Predictor

    return Predictor.from_name("cells", device="cpu")


@pytest.fixture(scope="module")
def crop():
    (sample,) = list_samples(CELLS)
    return sample, iio.imread(sample.image)


def test_the_cells_preset_is_a_two_stain_deepcens(cells_predictor):
    from napari_deepcens.models.registry import get_preset
    from napari_deepcens.models.weights import load_weights

    assert get_preset("cells").model == "deepcens"
    assert cells_predictor.model_name == "deepcens"
    assert cells_predictor.class_names == ("cell", "nucleus") and cells_predictor.in_channels == 3
    # the diameter knob means the nucleus diameter, as for the nucleus models
    assert 15 < cells_predictor.info.median_diameter < 25
    from napari_deepcens.models.registry import bundled_weights

    with pytest.raises(WeightsError, match="'deepcens', not 'unet'"):
        load_weights(bundled_weights("cells"), expected_model="unet")
    with pytest.raises(WeightsError, match="choose one of unet, centerunet, deepcens, cells"):
        bundled_weights("cell")


def test_bundled_cells_model_finds_cells_and_nuclei(cells_predictor, crop):
    from napari_deepcens.evaluation.metrics import match_image, summarize
    from napari_deepcens.io.images import read_labels

    sample, image = crop
    seg = cells_predictor.instances(cells_predictor.predict(image, diameter=NUCLEUS_DIAMETER))
    parts = seg.by_class()
    assert set(parts) == {"cell", "nucleus"}
    for name, path in sample.classes.items():
        truth = read_labels(path)
        score = summarize([match_image(truth, parts[name].labels)])["AP@0.5"]
        assert score >= GOLDEN_AP50[name], (name, score)
        assert len(parts[name].boxes) == parts[name].labels.max()  # a rotated box per object
    # a cell is larger than its nucleus: median areas differ by several times
    areas = {n: np.median(np.bincount(p.labels.ravel())[1:]) for n, p in parts.items()}
    assert areas["cell"] > 2.5 * areas["nucleus"], areas


def test_two_stains_from_a_multichannel_tiff_match_the_rgb_image(crop, tmp_path):
    _sample, image = crop
    path = tmp_path / "two.tif"
    # a 3-channel ImageJ hyperstack: cytoplasm, an unrelated stain, nuclei
    channels = np.stack([image[..., 1], image[..., 0] // 2, image[..., 0]])
    tifffile.imwrite(path, channels, imagej=True, metadata={"axes": "CYX"})
    stack = read_stack(path, channel=2, cyto_channel=0)
    assert stack.axes == "YXS" and stack.rgb
    expected = image.copy()
    expected[..., 2] = 0
    assert np.array_equal(stack.data, expected)
    with pytest.raises(ImageError, match="both 1"):
        read_stack(path, channel=1, cyto_channel=1)
    with pytest.raises(ImageError, match="has 3 channels: --cyto-channel must be 0 to 2, got 3"):
        read_stack(path, channel=0, cyto_channel=3)
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, image[..., 0])
    with pytest.raises(ImageError, match="one channel"):
        read_stack(grey, cyto_channel=1)
    # a plain (C, Y, X) TIFF without axis names: its one unnamed axis holds the stains
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, channels)
    assert np.array_equal(read_stack(plain, channel=2, cyto_channel=0).data, expected)
    unnamed = tmp_path / "unnamed.tif"
    tifffile.imwrite(unnamed, np.stack([channels[:2], channels[:2]]))
    with pytest.raises(ImageError, match="do not say which axis holds the stains"):
        read_stack(unnamed, channel=1, cyto_channel=0)


def test_cli_segments_cells_and_refuses_a_single_stain(crop, tmp_path, capsys):
    from napari_deepcens.cli import main
    from napari_deepcens.io.images import read_labels

    sample, image = crop
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.stack([image[..., 0], image[..., 1]]), imagej=True,
                     metadata={"axes": "CYX"})
    out = tmp_path / "out"
    args = ["-o", str(out), "--model", "cells", "--diameter", str(NUCLEUS_DIAMETER),
            "--device", "cpu"]
    assert main(["segment", str(sample.image), *args]) == 0
    assert main(["segment", str(two), "--channel", "0", "--cyto-channel", "1", *args]) == 0
    for cls in ("cell", "nucleus"):
        from_png = read_labels(out / f"{sample.id}_{cls}_labels.tif")
        assert from_png.max() > 3
        assert np.array_equal(from_png, read_labels(out / f"two_{cls}_labels.tif"))
    capsys.readouterr()
    assert main(["segment", str(two), "--cyto-channel", "1", "-o", str(out), "--device", "cpu"]) == 2
    assert "--cyto-channel is for two-stain models" in capsys.readouterr().err
    grey = tmp_path / "grey.png"
    iio.imwrite(grey, image[..., 0])
    assert main(["segment", str(grey), *args]) == 1
    err = capsys.readouterr().err
    assert "one stain" in err and "--cyto-channel" in err and "Traceback" not in err


def test_widget_pairs_a_nuclear_layer_with_its_cytoplasm_layer(make_napari_viewer, qtbot, crop,
                                                               cells_predictor, tmp_path,
                                                               monkeypatch):
    from napari_deepcens.widget.segment_widget import SegmentWidget

    _sample, image = crop
    viewer = make_napari_viewer()
    nuclear = viewer.add_image(image[..., 0], name="hoechst")
    cyto = viewer.add_image(image[..., 1], name="actin")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_options(image=nuclear, device="cpu", auto_diameter=False,
                       diameter=NUCLEUS_DIAMETER)
    assert widget._cyto.native.isHidden()  # one-stain models: no picker, no cell edge
    assert widget._outline.native.isHidden()
    widget.set_options(model="cells")
    assert not widget._cyto.native.isHidden() and widget._fg.label == "mask"
    assert widget._cyto.value is cyto  # the one other layer of that size: paired already
    widget._cyto.value = None
    widget.run()
    assert widget._worker is None and "needs two stains" in widget.status
    assert "'cytoplasm'" in widget.status and not any("labels" in lay.name for lay in viewer.layers)
    widget.set_options(cyto=cyto)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    cells, nuclei = viewer.layers["hoechst cell labels"], viewer.layers["hoechst nucleus labels"]
    rgb = image.copy()
    rgb[..., 2] = 0
    raw = cells_predictor.predict(rgb, diameter=NUCLEUS_DIAMETER)
    parts = cells_predictor.instances(raw).by_class()
    assert np.array_equal(cells.data, parts["cell"].labels), widget.status
    assert np.array_equal(nuclei.data, parts["nucleus"].labels)
    assert " cells" in widget.status and " nuclei" in widget.status  # plurals, not "28 cell"
    # the sliders re-threshold the cached detections, without the network
    monkeypatch.setattr(widget._raw[id(nuclear)][0], "predict_iter",
                        lambda *a, **k: pytest.fail("a slider re-ran the network"))
    before = int(cells.data.max())
    widget.set_options(score=0.95)
    qtbot.waitUntil(lambda: widget._post_worker is None, timeout=20_000)
    assert int(cells.data.max()) < before and "belong to" not in widget.status, widget.status
    widget.set_options(score=float(cells_predictor.default_params().score_threshold))
    qtbot.waitUntil(lambda: widget._post_worker is None and cells.data.max() == before,
                    timeout=20_000)
    # the cell-edge knob (cells model only) shows its tuned value and moves the cells'
    # outlines on the cached detections; the nuclei stay as they were
    assert not widget._outline.native.isHidden()
    tuned = cells_predictor.default_params().outline_threshold
    assert tuned > 0 and widget._outline.value == pytest.approx(tuned)
    followed, nuclei_before = cells.data.copy(), nuclei.data.copy()
    network_only = cells_predictor.instances(raw, {"outline_threshold": 0.0}).by_class()["cell"].labels
    assert not np.array_equal(network_only, followed)
    widget.set_options(outline=0.0)
    qtbot.waitUntil(lambda: widget._post_worker is None
                    and np.array_equal(cells.data, network_only), timeout=20_000)
    assert np.array_equal(nuclei.data, nuclei_before)
    widget.set_options(outline=tuned)
    qtbot.waitUntil(lambda: widget._post_worker is None and np.array_equal(cells.data, followed),
                    timeout=20_000)
    # exported for fine-tuning, the sample keeps both stains, as the model read them
    from napari_deepcens.io.images import read_image, read_labels
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    correct = CorrectionWidget(viewer)
    correct._labels_layer.value, correct._image.value = cells, nuclear
    correct._dataset.value = tmp_path / "ds"
    folder = correct.export()
    assert folder is not None, correct._status.value
    assert np.array_equal(read_image(folder / "image.tif"), rgb)
    assert np.array_equal(read_labels(folder / "labels_nucleus.tif"), nuclei.data)
    # a cytoplasm layer of another type keeps its values (each stain is normalised alone)
    scaled = viewer.add_image(image[..., 1] / 255.0, name="actin 0-1")
    widget.set_options(cyto=scaled)
    composed, rgb_flag, name = widget._stains(nuclear, nuclear.data)
    assert rgb_flag and name == "actin 0-1" and composed.dtype == np.float64
    assert np.array_equal(composed[..., 1], image[..., 1] / 255.0)
    exported = correct._with_cytoplasm(nuclear.data, "actin 0-1", ())
    assert np.array_equal(exported[..., 1], image[..., 1] / 255.0)
    # an RGB composite with blue nuclei is refused with what to do
    blue = viewer.add_image(rgb[..., ::-1].copy(), name="dapi composite", rgb=True)
    widget.set_options(image=blue)
    widget.run()
    assert widget._worker is None and "Split RGB" in widget.status
    widget.set_options(image=nuclear)
    # a cytoplasm layer of another size is refused with both sizes
    small = viewer.add_image(image[:100, :100, 1], name="small")
    widget.set_options(cyto=small)
    widget.run()
    assert widget._worker is None and "(100, 100)" in widget.status
    # another image segmented by a one-class model: this image's boxes still pick their class
    other = viewer.add_image(image[..., 0].copy(), name="other")
    widget.set_options(image=other, model="centerunet", auto_diameter=True)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert "other boxes" in viewer.layers
    boxes = viewer.layers["hoechst boxes"]
    k = int(np.flatnonzero((boxes.features["class"].to_numpy() == "nucleus")
                           & (boxes.features["label"].to_numpy() != nuclei.selected_label))[0])
    boxes.selected_data = {k}
    assert nuclei.selected_label == int(boxes.features["label"].iloc[k])


def test_training_the_cells_preset_fine_tunes_its_bundled_weights(tmp_path):
    from napari_deepcens.cli import main
    from napari_deepcens.models.weights import read_info

    out = tmp_path / "mine.safetensors"
    assert main(["train", str(CELLS), "-o", str(out), "--model", "cells", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "128",
                 "--device", "cpu"]) == 0
    info = read_info(out)
    assert info.model == "deepcens" and info.config["classes"] == ["cell", "nucleus"]
    assert info.training["init"].endswith("deepcens_u2os_cells.safetensors")
    bundled = read_info(Path(info.training["init"]))
    assert info.median_diameter == bundled.median_diameter  # the knob keeps its meaning
    # COCO from another tool numbers its categories otherwise: matched by name, not by order
    import json
    import shutil

    coco = tmp_path / "coco"
    shutil.copytree(Path(__file__).parent / "data" / "u2os_crop", coco)
    data = json.loads((coco / "annotations.json").read_text())
    swap = {c["id"]: 3 - c["id"] for c in data["categories"]}  # cell 1 ↔ nucleus 2
    for c in data["categories"]:
        c["id"] = swap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = swap[a["category_id"]]
    assert sorted((c["id"], c["name"]) for c in data["categories"])[0] == (1, "nucleus")
    (coco / "annotations.json").write_text(json.dumps(data))
    assert main(["train", str(coco / "annotations.json"), "-o", str(tmp_path / "coco.safetensors"),
                 "--model", "cells", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size",
                 "1", "--crop", "128", "--device", "cpu"]) == 0


def test_fine_tuning_the_cells_preset_on_nucleus_only_data_is_refused(tmp_path, capsys):
    from napari_deepcens.cli import main

    dsb = Path(__file__).parent / "data" / "dsb_tiny"
    assert main(["train", str(dsb), "-o", str(tmp_path / "x.safetensors"), "--model", "cells",
                 "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "grey image" in err and "colour" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_widget_pairs_stacks_of_two_stains_plane_by_plane(make_napari_viewer, qtbot, crop,
                                                          cells_predictor):
    from napari_deepcens.widget.segment_widget import SegmentWidget

    _sample, image = crop
    tile = image[:320, :320]
    # a 2-frame movie: the second frame is the first mirrored (a different image)
    nuclear = np.stack([tile[..., 0], tile[::-1, :, 0]])
    cyto = np.stack([tile[..., 1], tile[::-1, :, 1]])
    viewer = make_napari_viewer()
    layer = viewer.add_image(nuclear, name="movie")
    other = viewer.add_image(cyto, name="movie cytoplasm")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_options(image=layer, device="cpu", model="cells", cyto=other, planes="all",
                       auto_diameter=False, diameter=NUCLEUS_DIAMETER)
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    cells = viewer.layers["movie cell labels"].data
    assert cells.shape == nuclear.shape and cells[0].max() > 0, widget.status
    # each frame is segmented as its own two-stain image would be (labels numbered apart)
    for t in range(2):
        rgb = np.stack([nuclear[t], cyto[t], np.zeros_like(nuclear[t])], axis=-1)
        alone = cells_predictor.instances(cells_predictor.predict(rgb, diameter=NUCLEUS_DIAMETER))
        expected = alone.by_class()["cell"].labels
        assert np.array_equal(cells[t] > 0, expected > 0)
        assert len(np.unique(cells[t])) == len(np.unique(expected))


def test_deepcens_napari_opens_two_stains_as_two_layers_for_the_cells_model(make_napari_viewer, crop,
                                                                          tmp_path, monkeypatch):
    import napari

    from napari_deepcens.cli import main

    _sample, image = crop
    viewers = []
    monkeypatch.setattr(napari, "Viewer", lambda: viewers.append(make_napari_viewer()) or viewers[-1])
    monkeypatch.setattr(napari, "run", lambda: None)
    path = tmp_path / "stains.tif"
    tifffile.imwrite(path, np.stack([image[..., 1], image[..., 0]]), imagej=True,
                     metadata={"axes": "CYX"})
    assert main(["napari", str(path), "--channel", "1", "--cyto-channel", "0", "--no-run"]) == 0
    viewer = viewers[0]
    nuclear, cyto = viewer.layers["stains"], viewer.layers["stains cytoplasm"]
    assert np.array_equal(nuclear.data, image[..., 0]) and np.array_equal(cyto.data, image[..., 1])
    segment = viewer.window.dock_widgets["DeepCeNS"].segment
    assert segment._model.value == "cells" and segment._cyto.value is cyto
    assert segment._image.value is nuclear and not segment._cyto.native.isHidden()
    # a plain (C, Y, X) TIFF without axis names opens the same way
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.stack([image[..., 1], image[..., 0]]))
    assert main(["napari", str(plain), "--channel", "1", "--cyto-channel", "0", "--no-run"]) == 0
    assert np.array_equal(viewers[1].layers["plain cytoplasm"].data, image[..., 1])
    # a one-stain model is not given a cytoplasm it would ignore
    assert main(["napari", str(plain), "--cyto-channel", "0", "--model", "unet", "--no-run"]) == 2
    assert len(viewers) == 2


def test_new_multi_class_models_read_colour_only_from_colour_data():
    from napari_deepcens.commands import _colour_data

    assert _colour_data([CELLS]) and _colour_data([Path(__file__).parent / "data" / "u2os_crop"
                                                  / "annotations.json"])
    assert not _colour_data([Path(__file__).parent / "data" / "dsb_tiny"])


def test_the_cytoplasm_layer_is_chosen_only_where_the_layers_say_which_it_is(make_napari_viewer, crop):
    """Two-channel files open as two layers: the cells model pairs them without a second
    drop-down, but among several candidates it only takes one whose name says cytoplasm."""
    from napari_deepcens.widget.segment_widget import SegmentWidget

    _sample, image = crop
    viewer = make_napari_viewer()
    nuclear = viewer.add_image(image[..., 0], name="DAPI")
    viewer.add_image(image[..., 1], name="GFP")
    viewer.add_image(image[..., 1], name="mCherry")
    viewer.add_image(image[:32, :32, 1], name="small")  # another size: never a candidate
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_options(image=nuclear, model="cells")
    assert widget._cyto.value is None  # two could be it: the user chooses
    tubulin = viewer.add_image(image[..., 1], name="Tubulin 488")  # opened after: its name decides
    assert widget._cyto.value is tubulin
    other = viewer.layers["GFP"]
    widget.set_options(cyto=other)  # the user's choice is kept
    widget._update_stains()
    assert widget._cyto.value is other

    # a second field of the same size: its own cytoplasm, not the first field's
    viewer.layers.clear()
    dapi1 = viewer.add_image(image[..., 0], name="field1 DAPI")
    tub1 = viewer.add_image(image[..., 1], name="field1 tubulin")
    widget.set_options(image=dapi1)
    assert widget._cyto.value is tub1
    dapi2 = viewer.add_image(image[..., 0].T.copy(), name="field2 DAPI")
    tub2 = viewer.add_image(image[..., 1].T.copy(), name="field2 tubulin")
    widget.set_options(image=dapi2)
    assert widget._cyto.value is tub2
    # field 1's own stain closed: field 2's tubulin is no more its than field 2's DAPI
    widget.set_options(image=dapi1)
    viewer.layers.remove(tub1)
    viewer.add_image(image[..., 1].T.copy(), name="field3 other")
    assert widget._cyto.value is None
