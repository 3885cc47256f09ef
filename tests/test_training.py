"""Training plumbing: loader worker processes and growing a trained network."""

import numpy as np
import torch
from torch.utils.data import DataLoader

from napari_deepcens.cli import main
from napari_deepcens.io.images import read_image
from napari_deepcens.models.registry import bundled_weights
from napari_deepcens.models.weights import load_weights
from napari_deepcens.training.augment import AugmentConfig
from napari_deepcens.training.dataset import RandomCrops, load_folder
from napari_deepcens.training.loop import grow

from .conftest import DSB_VAL


def test_loader_workers_serve_different_crops():
    """Each worker process draws its own random stream: with one shared seed, every worker
    would serve the same crops and a GPU run would see each crop several times."""
    crops = RandomCrops(load_folder(DSB_VAL), AugmentConfig(crop=64), seed=3)
    loader = iter(DataLoader(crops, batch_size=1, num_workers=2))
    (a, _), (b, _) = next(loader), next(loader)  # one from each worker
    assert a.shape == b.shape == (1, 1, 64, 64)
    assert not torch.equal(a, b)


def test_train_with_worker_processes(tmp_path):
    out = tmp_path / "w.safetensors"
    assert main(["train", str(DSB_VAL), "-o", str(out), "--epochs", "1", "--steps-per-epoch", "3",
                 "--batch-size", "2", "--crop", "64", "--base-channels", "4", "--depth", "2",
                 "--workers", "2", "--device", "cpu"]) == 0
    _model, info = load_weights(out)
    assert info.training["workers"] == 2 and info.training["steps_per_epoch"] == 3


def test_grown_deepcens_starts_as_the_trained_one():
    """A deeper ResNeSt grown from the bundled DeepCeNS detects exactly what it detects."""
    small, info = load_weights(bundled_weights("deepcens"))
    big, big_info = grow(small, info, {"backbone": "resnest26d"})
    assert big_info.config["backbone"] == "resnest26d" and info.config["backbone"] == "resnest14d"
    assert sum(p.numel() for p in big.parameters()) > 1.1 * sum(p.numel() for p in small.parameters())
    sample = next(p for p in DSB_VAL.iterdir() if p.name.startswith("0bda"))
    plane = read_image(sample / "image.png").astype(np.float32)
    plane = plane.mean(axis=-1) if plane.ndim == 3 else plane
    x = torch.from_numpy((plane[:128, :128] - plane.min()) / (np.ptp(plane) or 1))[None, None]
    with torch.no_grad():
        a = small.eval()(x)[0]
        b = big.eval()(x)[0]
    assert len(a["boxes"]) >= 5
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert torch.allclose(a["scores"], b["scores"], atol=1e-4)


def test_fine_tuning_on_larger_nuclei_keeps_the_models_object_size(tmp_path):
    """Fine-tuning records the diameter the model was trained at, not the new data's, and
    trains on the data zoomed to it: the diameter knob and the estimate keep their meaning."""
    import shutil
    from pathlib import Path

    from napari_deepcens.models.weights import read_info
    from napari_deepcens.training.dataset import median_diameter
    from napari_deepcens.training.loop import to_model_scale

    data = tmp_path / "data" / "u2os"
    data.mkdir(parents=True)
    for name in ("image.png", "labels.png"):               # nuclei ~44 px, 2.2x the model's
        shutil.copy(Path(__file__).parent / "data" / "u2os_nuclei" / name, data / name)
    bundled = read_info(bundled_weights("unet"))
    items = load_folder(tmp_path / "data")
    zoomed, _ = to_model_scale(bundled, items, None)
    assert median_diameter(items) > 1.8 * bundled.median_diameter
    assert abs(median_diameter(zoomed) / bundled.median_diameter - 1) < 0.1

    out = tmp_path / "tuned.safetensors"
    assert main(["train", str(tmp_path / "data"), "-o", str(out), "--init",
                 str(bundled_weights("unet")), "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "2", "--crop", "64", "--device", "cpu"]) == 0
    assert read_info(out).median_diameter == bundled.median_diameter


def test_a_one_category_coco_file_trains_the_unet_and_resume_checks_validation(tmp_path):
    """A COCO file of the plugin's own export (one category) trains a dense network (its
    (1, H, W) labels are read as one label image); a run resumed with validation data it did
    not have is refused, not continued without ever saving again."""
    import json

    import pytest

    from napari_deepcens.errors import DeepCeNSError
    from napari_deepcens.io.dataset_export import export_sample, write_coco
    from napari_deepcens.io.images import read_labels
    from napari_deepcens.io.layout import list_samples
    from napari_deepcens.training.dataset import load_coco
    from napari_deepcens.training.loop import TrainConfig, train_iter

    sample = list_samples(DSB_VAL)[0]
    image, labels = read_image(sample.image), read_labels(sample.labels)
    ds = tmp_path / "ds"
    export_sample(ds, image, {"nucleus": labels}, "one")
    coco = write_coco(ds)
    assert [c["name"] for c in json.loads(coco.read_text())["categories"]] == ["nucleus"]
    items = load_coco(coco, channels=1)
    assert items[0].labels.shape[0] == 1
    config = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=1, augment=AugmentConfig(crop=64))
    out = tmp_path / "u.safetensors"
    run = train_iter(items, out, "unet", {"base_channels": 4, "depth": 2}, config, device="cpu")
    for progress in run:  # stop after the first epoch: its weights and checkpoint are written
        if progress.best_path is not None:
            break
    run.close()
    assert out.with_name(out.name + ".ckpt").is_file()
    with pytest.raises(DeepCeNSError, match="val"):
        next(train_iter(items, out, "unet", {"base_channels": 4, "depth": 2}, config,
                        val_items=load_folder(DSB_VAL)[:1], device="cpu"))


def test_cell_outlines_are_refused_and_any_one_category_name_is_read_as_nuclei(tmp_path):
    """A cell layer exported alone (labels_cell) is never trained on as nuclei, whether by
    `train` (with or without validation) or `tune`; a COCO file whose one category is named
    otherwise ("nuclei") trains and validates as the nuclei the model outputs."""
    import json

    import pytest

    from napari_deepcens.errors import DeepCeNSError
    from napari_deepcens.io.dataset_export import export_sample, write_coco
    from napari_deepcens.io.images import read_labels
    from napari_deepcens.io.layout import list_samples
    from napari_deepcens.models.registry import bundled_weights
    from napari_deepcens.models.weights import load_weights
    from napari_deepcens.training.dataset import load_coco
    from napari_deepcens.training.loop import as_nuclei, validate

    sample = list_samples(DSB_VAL)[0]
    image, labels = read_image(sample.image), read_labels(sample.labels)
    cells = tmp_path / "cells"
    export_sample(cells, image, {"cell": labels}, "one")
    items = load_folder(cells)
    assert items[0].classes == ("cell",)
    with pytest.raises(DeepCeNSError, match="cell outlines; the unet model learns nuclei"):
        as_nuclei("unet", items)
    for extra in ([], ["--val", str(cells)]):
        assert main(["train", str(cells), "-o", str(tmp_path / "x.safetensors"), "--init",
                     str(bundled_weights("unet")), "--epochs", "1", "--steps-per-epoch", "1",
                     "--crop", "64", "--device", "cpu", *extra]) == 2
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["tune", str(bundled_weights("unet")), str(cells), "-o",
                 str(tmp_path / "t.safetensors"), "--device", "cpu"]) == 2

    nuclei = tmp_path / "nuclei"
    export_sample(nuclei, image, {"nucleus": labels}, "one")
    coco = write_coco(nuclei)
    data = json.loads(coco.read_text())
    data["categories"][0]["name"] = "nuclei"
    coco.write_text(json.dumps(data))
    items = as_nuclei("unet", load_coco(coco, channels=1))
    assert items[0].classes == ("nucleus",) and items[0].labels.ndim == 2
    model, info = load_weights(bundled_weights("unet"))
    metrics, _params = validate(model, info, items, torch.device("cpu"))
    assert metrics["AP@0.5"] > 0.5  # compared with the model's nuclei, not an empty match


def test_a_fine_tune_keeps_thresholds_this_version_does_not_know(tmp_path):
    """Weights from a newer version may store a threshold this one lacks: reading them
    ignores it, and so must a fine-tune without validation (the Fine-tune tab's way)."""
    from napari_deepcens.models.weights import read_info, save_weights

    src = bundled_weights("unet")
    model, info = load_weights(src)
    info.thresholds = {**info.thresholds, "max_size": 5000}
    newer = tmp_path / "newer.safetensors"
    save_weights(newer, model, info)
    assert read_info(newer).thresholds["fg_threshold"] == read_info(src).thresholds["fg_threshold"]
    out = tmp_path / "tuned.safetensors"
    assert main(["train", str(DSB_VAL), "-o", str(out), "--init", str(newer), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "64",
                 "--device", "cpu"]) == 0
    assert read_info(out).thresholds["fg_threshold"] == read_info(src).thresholds["fg_threshold"]


def test_coco_masks_of_another_size_and_unannotated_images_are_left_out(tmp_path):
    """A mask drawn on another size of its image is skipped with the other unreadable
    outlines (not an IndexError); an image with no annotations (an unfinished CVAT export)
    is left out with a warning instead of teaching its nuclei as background; samples are
    named after their files."""
    import json

    import imageio.v3 as iio
    from pycocotools import mask as mask_utils

    from napari_deepcens.training.dataset import load_coco

    from .conftest import logged

    (tmp_path / "images").mkdir()
    image = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    for name in ("a", "b", "c"):
        iio.imwrite(tmp_path / "images" / f"{name}.png", image)

    def rle(shape, box):
        m = np.zeros(shape, np.uint8, order="F")
        m[box] = 1
        out = mask_utils.encode(np.asfortranarray(m))
        return {**out, "counts": out["counts"].decode()}

    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": rle((64, 80), np.s_[10:20, 10:30])},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": rle((128, 160), np.s_[40:60, 40:80])},
            {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0,
             "segmentation": rle((64, 80), np.s_[30:40, 30:50])}]
    coco = tmp_path / "data.json"
    coco.write_text(json.dumps({
        "categories": [{"id": 1, "name": "nucleus"}], "annotations": anns,
        "images": [{"id": k, "file_name": f"images/{n}.png", "height": 64, "width": 80}
                   for k, n in ((1, "a"), (2, "b"), (3, "c"))]}))
    with logged("napari_deepcens") as said:
        items = load_coco(coco, channels=1)
    assert [item.id for item in items] == ["a", "b"]
    assert [int(item.labels.max()) for item in items] == [1, 1]
    assert any("1 empty or unreadable outlines skipped in images/a.png" in m for m in said), said
    assert any("1 image(s) with no annotations left out (images/c.png)" in m for m in said), said
