"""Issue 5: edits, rotated boxes, and export to a dataset that trains and evaluates."""

import json
import math

import numpy as np
import pytest
import tifffile
from skimage.draw import ellipse

from napari_deepcens.errors import DeepCeNSError
from napari_deepcens.io.dataset_export import export_sample
from napari_deepcens.io.layout import list_samples
from napari_deepcens.postprocess import edit
from napari_deepcens.postprocess.rotated_boxes import rotated_boxes


def test_edit_operations():
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:8] = 3
    lab[4:6, 4:6] = 0                       # a hole
    lab[10:18, 10:18] = 7
    lab[0, 19] = 9                          # a speck
    assert (edit.fill_holes(lab)[4:6, 4:6] == 3).all()
    assert 9 not in edit.remove_small(lab, 2) and 7 in edit.remove_small(lab, 2)
    assert set(np.unique(edit.relabel_sequential(lab))) == {0, 1, 2, 3}
    merged = edit.merge_labels(lab, 3, 7)
    assert 7 not in merged and (merged[10:18, 10:18] == 3).all()
    assert 3 not in edit.delete_label(lab, 3)
    _where, values = edit.changed_pixels(lab, edit.delete_label(lab, 9))
    assert len(values) == 1 and values[0] == 0
    assert lab[0, 19] == 9                  # inputs are never modified
    # a speck linked over 10 frames: small in each frame (a time-lapse), not in all of them
    movie = np.stack([lab] * 10)
    assert 9 not in edit.remove_small(movie, 2, per_plane=True)
    assert 9 in edit.remove_small(movie, 2) and 7 in edit.remove_small(movie, 2, per_plane=True)


@pytest.mark.parametrize("angle", [0, 30, 60, 90, 135])
def test_rotated_box_of_a_known_ellipse(angle):
    lab = np.zeros((160, 160), np.int32)
    rr, cc = ellipse(80, 80, 12, 40, rotation=math.radians(angle))
    lab[rr, cc] = 1
    (_, cx, cy, w, h, a), = rotated_boxes(lab)
    assert (cx, cy) == pytest.approx((80.5, 80.5), abs=1.0)
    assert w == pytest.approx(81, rel=0.08) and h == pytest.approx(25, rel=0.15)
    diff = abs((a - angle + 90) % 180 - 90)
    assert diff < 5.0


def test_all_boxes_at_once_equal_one_object_at_a_time(fluorescence):
    """The vectorised boxes are those of each object's own minimum rotated rectangle, on real
    nuclei and on the thinnest shapes (a single pixel, one-pixel lines)."""
    from scipy import ndimage as ndi

    from napari_deepcens.postprocess.rotated_boxes import box_from_points

    def corners(mask, top, left):  # one object's boundary-pixel corners, as (x, y)
        rows, cols = np.nonzero(mask & ~ndi.binary_erosion(mask))
        x = np.concatenate([cols, cols + 1, cols, cols + 1]) + left
        y = np.concatenate([rows, rows, rows + 1, rows + 1]) + top
        return np.stack([x, y], axis=1).astype(np.float64)

    _, labels = fluorescence
    lab = labels.copy()
    lab[0, 0:9] = 900        # a line along the border
    lab[250, 250] = 901      # one pixel
    lab[240:243, 5] = 903    # a vertical line; label 902 unused
    rows = rotated_boxes(lab)
    slices = ndi.find_objects(lab)
    expected = [(i, *box_from_points(corners(lab[s] == i, s[0].start, s[1].start)))
                for i, s in enumerate(slices, start=1) if s is not None]
    assert [r[0] for r in rows] == [r[0] for r in expected] and len(rows) == labels.max() + 3
    np.testing.assert_allclose(np.array(rows), np.array(expected), atol=1e-9)
    assert rotated_boxes(np.zeros((8, 8), np.int32)) == []


def test_export_never_overwrites_and_accumulates(tmp_path, fluorescence):
    image, labels = fluorescence
    ds = tmp_path / "dataset"
    a = export_sample(ds, image, {"nucleus": labels}, "cells", provenance={"model": "unet"})
    b = export_sample(ds, image, {"nucleus": labels[:, ::-1].copy()}, "cells")
    assert a.name == "cells" and b.name == "cells-2"
    assert np.array_equal(tifffile.imread(a / "labels.tif"), labels)   # first one intact
    prov = json.loads((a / "provenance.json").read_text())
    assert prov["model"] == "unet" and "exported" in prov
    samples = list_samples(ds)
    assert [s.id for s in samples] == ["cells", "cells-2"]
    index = (ds / "index.csv").read_text().splitlines()
    assert index[0].startswith("id,height,width,n_objects") and len(index) == 3
    assert not [p for p in ds.iterdir() if p.name.startswith(".")]   # no temporary leftovers


def test_coco_json_loads_in_pycocotools(tmp_path, fluorescence):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    image, labels = fluorescence
    ds = tmp_path / "ds"
    export_sample(ds, image, {"nucleus": labels}, "one")
    coco = COCO(str(ds / "annotations.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(np.unique(labels)) - 1
    assert coco.loadCats(coco.getCatIds())[0]["name"] == "nucleus"
    first = anns[0]
    decoded = coco.annToMask(first)
    assert decoded.sum() == first["area"] and len(first["rotated_box"]) == 5
    assert mask_utils.area(first["segmentation"]) == first["area"]


def test_failed_export_leaves_the_dataset_as_it_was(tmp_path, fluorescence):
    image, labels = fluorescence
    ds = tmp_path / "ds"
    export_sample(ds, image, {"nucleus": labels}, "ok")
    before = sorted(p.name for p in ds.iterdir())
    with pytest.raises(DeepCeNSError, match="shape"):
        export_sample(ds, image, {"nucleus": labels[:10]}, "bad")
    assert sorted(p.name for p in ds.iterdir()) == before


def test_coco_from_saved_fragments_equals_coco_from_the_tiffs(tmp_path, fluorescence):
    from napari_deepcens.io.dataset_export import SAMPLE_COCO, coco_dataset

    image, labels = fluorescence
    ds = tmp_path / "ds"
    export_sample(ds, image, {"nucleus": labels}, "a")
    export_sample(ds, image, {"nucleus": labels[::-1].copy()}, "b")
    from_fragments = coco_dataset(ds)
    for fragment in ds.glob(f"*/{SAMPLE_COCO}"):
        fragment.unlink()                    # as in a folder made by hand
    assert coco_dataset(ds) == json.loads(json.dumps(from_fragments))


def test_the_same_sample_is_not_exported_twice(tmp_path, fluorescence):
    image, labels = fluorescence
    first = export_sample(tmp_path, image, {"nucleus": labels}, "cells")
    with pytest.raises(DeepCeNSError, match=f"{first.name}.*nothing written"):
        export_sample(tmp_path, image, {"nucleus": labels}, "cells again")
    edited = labels.copy()
    edited[edited == edited.max()] = 0                   # a corrected version is a new sample
    assert export_sample(tmp_path, image, {"nucleus": edited}, "cells") != first
    assert len(list_samples(tmp_path)) == 2


def test_modality_is_guessed_from_the_image():
    from napari_deepcens.io.images import guess_modality
    from napari_deepcens.sample_data import _load

    for modality in ("fluorescence", "histology", "brightfield"):
        assert guess_modality(_load(f"nuclei_{modality}")) == modality


def test_a_cell_mask_exported_alone_stays_a_cell_mask(tmp_path, fluorescence):
    """labels.tif means nuclei to every reader: one class that is not nuclei is written as
    labels_<class>.tif, so training never learns cell outlines as nuclei. Hidden folders (an
    interrupted export's staging) are not samples, and labels out of range are refused."""
    import shutil

    from napari_deepcens.training.dataset import load_folder
    from napari_deepcens.training.loop import train_iter

    image, labels = fluorescence
    folder = export_sample(tmp_path, image, {"cell": labels}, "s1")
    assert (folder / "labels_cell.tif").is_file() and not (folder / "labels.tif").exists()
    (sample,) = list_samples(tmp_path)
    assert list(sample.classes) == ["cell"]
    (item,) = load_folder(tmp_path)
    assert item.classes == ("cell",) and item.labels.ndim == 2
    nuclei = export_sample(tmp_path / "n", image, {"nucleus": labels}, "s1")
    assert (nuclei / "labels.tif").is_file()
    shutil.copytree(folder, tmp_path / ".export-abc")
    assert [s.id for s in list_samples(tmp_path)] == ["s1"]
    with pytest.raises(DeepCeNSError, match="outside"):
        export_sample(tmp_path, image, {"nucleus": labels.astype(np.int64) - 1}, "neg")
    # a dense network learns one class; two are refused with what to do
    two = export_sample(tmp_path / "two", image, {"cell": labels, "nucleus": labels}, "s2")
    with pytest.raises(DeepCeNSError, match="learns one"):
        next(train_iter(load_folder(two.parent), tmp_path / "u.safetensors", "unet", resume=False))
    from napari_deepcens.cli import main  # the CLI says the same, and writes nothing

    assert main(["train", str(two.parent), "-o", str(tmp_path / "u.safetensors"), "--epochs", "1",
                 "--steps-per-epoch", "1", "--device", "cpu"]) == 2
    assert not (tmp_path / "u.safetensors").exists()


def test_object_masks_are_encoded_from_their_boxes_exactly_as_pycocotools_does():
    """Each object's RLE is built from its bounding box (a whole-frame mask per object took
    ~50 s for a 2080×2784 field of 3168 nuclei, on the GUI thread); it must be the very RLE
    pycocotools encodes, objects in pieces, touching the frame's edges and huge ids included."""
    from pycocotools import mask as mask_utils

    from napari_deepcens.io.dataset_export import sample_annotations

    rng = np.random.default_rng(0)
    for trial in range(20):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        labels = rng.integers(0, 5, (h, w)).astype(np.int64)  # scattered, many pieces
        if trial % 3 == 0:
            labels[labels == 3] = 5_000_000
        values = [v for v in np.unique(labels) if v]
        annotations = sample_annotations({"nucleus": labels})
        assert len(annotations) == len(values)
        for ann, value in zip(annotations, values, strict=True):
            ref = mask_utils.encode(np.asfortranarray((labels == value).astype(np.uint8)))
            assert ann["segmentation"]["counts"] == ref["counts"].decode()
            assert ann["area"] == (labels == value).sum()
            assert ann["bbox"] == [float(v) for v in mask_utils.toBbox(ref)]
    # label maps saved as float (Fiji, MorphoLibJ) or a bool mask encode the same
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9], labels[10:15, 20:30] = 4, 9
    ints = sample_annotations({"nucleus": labels})
    assert sample_annotations({"nucleus": labels.astype(np.float32)}) == ints
    assert len(sample_annotations({"nucleus": labels > 0})) == 1
