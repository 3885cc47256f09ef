"""Issue 5, scripted: segment → edit → export → train + evaluate with the CLI → load in napari."""

import numpy as np
import pytest

from napari_deepcens.cli import main
from napari_deepcens.widget.dock import DeepCeNSDock

from .conftest import boxes_and_wait


@pytest.fixture
def dock(make_napari_viewer, fluorescence):
    viewer = make_napari_viewer()
    image, _ = fluorescence
    layer = viewer.add_image(image, name="nuclei")
    dock = DeepCeNSDock(viewer)
    viewer.window.add_dock_widget(dock)
    dock.segment.set_options(image=layer, device="cpu")
    return viewer, dock, layer


def test_round_trip(dock, qtbot, tmp_path, capsys):
    viewer, dock, layer = dock
    dock.segment.run()
    qtbot.waitUntil(lambda: dock.segment._worker is None, timeout=60_000)
    labels = viewer.layers["nuclei labels"]
    n_before = int(labels.data.max())

    # correct: delete one object (undoable), fill holes, relabel
    dock.correct._labels_layer.value = labels
    dock.correct._image.value = layer
    labels.selected_label = int(labels.data[labels.data > 0][0])
    dock.correct.delete_selected()
    assert int(labels.selected_label) not in labels.data
    labels.undo()
    assert int(labels.selected_label) in labels.data          # napari's undo covers our edits
    dock.correct.delete_selected()
    dock.correct._relabel.changed.emit(True)
    assert int(labels.data.max()) == n_before - 1
    boxes_and_wait(qtbot, dock.correct)
    boxes = viewer.layers["nuclei labels boxes"]
    assert len(boxes.data) == n_before - 1 and "angle" in boxes.features

    # export: provenance from the segmentation; the same pixels twice are refused, kindly
    dock.correct._dataset.value = tmp_path / "ds"
    first = dock.correct.export()
    second = dock.correct.export()
    assert first is not None and second is None and "nothing written" in dock.correct._status.value
    labels.selected_label = int(labels.data[labels.data > 0][0])
    dock.correct.delete_selected()                              # corrected further: a new sample
    second = dock.correct.export()
    assert second is not None and second != first
    prov = (first / "provenance.json").read_text()
    assert '"model": "unet"' in prov and "weights_sha256" in prov

    # the Fine-tune tab is pointed at the folder the corrections went to
    assert dock.finetune._dataset.value == tmp_path / "ds"
    dock.finetune._dataset.value = tmp_path / "other"            # the user's choice there stands
    dock.correct._dataset.value = tmp_path / "ds2"
    assert dock.finetune._dataset.value == tmp_path / "other"

    # the exported folder trains and evaluates with the CLI
    out = tmp_path / "tuned.safetensors"
    assert main(["train", str(tmp_path / "ds"), "-o", str(out), "--init",
                 str(dock.finetune._base()[1]), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "2", "--device", "cpu"]) == 0
    assert main(["segment", str(first / "image.tif"), "-o", str(tmp_path / "pred"),
                 "--weights", str(out)]) == 0
    assert main(["evaluate", str(tmp_path / "ds"), str(tmp_path / "pred")]) == 2  # one missing
    capsys.readouterr()

    # the new weights load in the widget
    dock.segment.set_options(weights=out)
    dock.segment.run()
    qtbot.waitUntil(lambda: dock.segment._worker is None, timeout=60_000)
    predictor, _ = dock.segment._raw[id(layer)]
    assert predictor.weights_path == out


def test_finetune_in_the_widget_saves_new_weights_and_loads_them(dock, qtbot, tmp_path, fluorescence):
    from napari_deepcens.io.dataset_export import export_sample
    from napari_deepcens.models.registry import bundled_weights

    _viewer, dock, _layer = dock
    image, labels = fluorescence
    export_sample(tmp_path / "ds", image, {"nucleus": labels}, "a")
    bundled_before = bundled_weights("unet").read_bytes()
    dock.finetune._dataset.value = tmp_path / "ds"
    dock.finetune._epochs.value = 1
    dock.finetune._steps.value = 2
    dock.finetune.start()
    qtbot.waitUntil(lambda: dock.finetune._worker is None, timeout=120_000)
    assert "done" in dock.finetune.status, dock.finetune.status
    new = dock.segment._weights.value
    assert new.is_file() and new.parent == tmp_path / "ds" / "models"
    assert not new.with_name(new.name + ".ckpt").exists()
    assert bundled_weights("unet").read_bytes() == bundled_before


def test_finetune_without_dataset_is_a_message(dock):
    _viewer, dock, _layer = dock
    dock.finetune.start()
    assert "dataset folder" in dock.finetune.status
    assert dock.finetune._worker is None


def test_export_without_folder_keeps_everything(dock, qtbot):
    viewer, dock, _layer = dock
    dock.segment.run()
    qtbot.waitUntil(lambda: dock.segment._worker is None, timeout=60_000)
    labels = viewer.layers["nuclei labels"]
    before = labels.data.copy()
    dock.correct._labels_layer.value = labels
    assert dock.correct.export() is None
    assert "dataset folder" in str(dock.correct._status.value)
    np.testing.assert_array_equal(labels.data, before)


def test_cancelled_finetune_leaves_no_checkpoint_and_keeps_the_segment_weights(dock, qtbot, tmp_path,
                                                                              fluorescence):
    from napari_deepcens.io.dataset_export import export_sample

    _viewer, dock, _layer = dock
    image, labels = fluorescence
    export_sample(tmp_path / "ds", image, {"nucleus": labels}, "a")
    dock.finetune._dataset.value = tmp_path / "ds"
    dock.finetune._epochs.value = 50
    dock.finetune.start()
    qtbot.waitUntil(lambda: dock.finetune._progress.value >= 1, timeout=60_000)
    dock.finetune.cancel()
    qtbot.waitUntil(lambda: dock.finetune._worker is None, timeout=60_000)
    assert "cancelled" in dock.finetune.status
    assert dock.segment.chosen_weights() is None            # nothing saved: still the bundled
    assert not list((tmp_path / "ds" / "models").glob("*.ckpt"))


def test_closing_the_window_mid_training_stops_it_cleanly(dock, qtbot, tmp_path, fluorescence):
    """The dock deleted under a running fine-tune (the viewer closed): the worker stops, no
    late signal reaches a deleted widget, and no checkpoint is left behind."""
    from napari_deepcens.io.dataset_export import export_sample

    _viewer, dock, _layer = dock
    image, labels = fluorescence
    export_sample(tmp_path / "ds", image, {"nucleus": labels}, "a")
    tune = dock.finetune
    tune._dataset.value = tmp_path / "ds"
    tune._epochs.value, tune._steps.value = 2, 3
    tune.start()
    worker = tune._worker
    qtbot.waitUntil(lambda: tune._progress.value >= 1, timeout=60_000)
    dock.deleteLater()                                      # what closing napari does
    qtbot.waitUntil(lambda: worker.abort_requested, timeout=10_000)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=120_000)
    qtbot.wait(300)                                         # the queued 'finished' handlers
    assert not list((tmp_path / "ds" / "models").glob("*.ckpt"))


def test_finetune_refuses_weights_of_another_model(dock, qtbot, tmp_path, fluorescence):
    from napari_deepcens.io.dataset_export import export_sample
    from napari_deepcens.models.registry import bundled_weights

    _viewer, dock, _layer = dock
    image, labels = fluorescence
    export_sample(tmp_path / "ds", image, {"nucleus": labels}, "a")
    dock.segment.set_options(model="centerunet")
    dock.segment.set_options(weights=bundled_weights("unet"))
    dock.finetune._dataset.value = tmp_path / "ds"
    dock.finetune.start()
    qtbot.waitUntil(lambda: dock.finetune._worker is None, timeout=60_000)
    assert "holds weights for model 'unet'" in dock.finetune.status
    assert not (tmp_path / "ds" / "models").exists() or not list(
        (tmp_path / "ds" / "models").glob("*.safetensors"))


def test_finetuned_weights_are_not_loaded_into_another_model(dock, qtbot, tmp_path, fluorescence):
    """The Segment model switched while a U-Net fine-tuned: its weights were put in the
    weights field of CenterUNet anyway, and every Run (and Fine-tune) failed after."""
    from napari_deepcens.io.dataset_export import export_sample

    _viewer, dock, _layer = dock
    image, labels = fluorescence
    export_sample(tmp_path / "ds", image, {"nucleus": labels}, "a")
    dock.finetune._dataset.value = tmp_path / "ds"
    dock.finetune._epochs.value = 1
    dock.finetune._steps.value = 2
    dock.finetune.start()
    dock.segment.set_options(model="centerunet")
    qtbot.waitUntil(lambda: dock.finetune._worker is None, timeout=120_000)
    assert dock.segment._weights.value is None or str(dock.segment._weights.value) in ("", ".")
    assert "choose that model and these weights" in dock.finetune.status
