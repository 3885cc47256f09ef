"""DeepCeNS: cascade assignment, the paper configuration, training, mask pasting, tiling,
two-class data (a real U2OS crop: cells and nuclei) and evaluation per class."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deepcens.evaluation.evaluate import evaluate_folder
from napari_deepcens.inference.detection import detect_tiled
from napari_deepcens.io.export import write_labels
from napari_deepcens.io.images import read_labels
from napari_deepcens.io.layout import list_samples
from napari_deepcens.models.deepcens import PAPER_ANCHORS, DeepCeNS, DeepCeNSConfig, DeformableConv
from napari_deepcens.postprocess.masks import class_instances, paste_masks
from napari_deepcens.postprocess.params import PostprocessParams
from napari_deepcens.training.dataset import load_coco, load_folder

U2OS = Path(__file__).parent / "data" / "u2os_crop"
#: A narrow network that builds and runs in well under a second.
TINY = dict(channels=(16, 32, 64, 128), fpn_channels=32, box_head_dim=64, mask_head_dim=32,
            rpn_pre_nms_train=300, rpn_post_nms_train=300, rpn_pre_nms_test=300,
            rpn_post_nms_test=200, detections_per_image=100, roi_batch=64)


def tiny(**overrides) -> DeepCeNS:
    torch.manual_seed(0)
    return DeepCeNS(DeepCeNSConfig(**{**TINY, **overrides}))


def test_cascade_stages_assign_by_their_iou_thresholds():
    model = tiny(classes=("cell", "nucleus"))
    gt = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([2])}
    # the ground-truth box shifted right by dx: IoU = (40 - dx) / (40 + dx)
    shifts = [11.0, 8.0, 5.0, 30.0]  # IoU 0.569, 0.667, 0.778, 0.143
    proposals = torch.tensor([[10 + dx, 10.0, 50 + dx, 50.0] for dx in shifts])
    expected = {0: [2, 2, 2, 0], 1: [0, 2, 2, 0], 2: [0, 0, 2, 0]}  # thresholds 0.5 / 0.6 / 0.7
    for stage, labels in expected.items():
        assigned = model._match(stage, [proposals], [gt])
        assert assigned.labels[0].tolist() == labels, stage
        # regression targets of a positive decode back onto the ground-truth box
        decoded = model.coders[stage].decode_single(assigned.regression[0][2:3], proposals[2:3])
        torch.testing.assert_close(decoded, gt["boxes"], atol=1e-3, rtol=0)
    # later stages normalise their deltas more finely (tighter boxes), as in Cascade R-CNN
    assert [c.weights[0] for c in model.coders] == [10.0, 20.0, 30.0]


def test_paper_configuration_builds_and_runs():
    cfg = DeepCeNSConfig.paper()
    assert cfg.backbone == "resnest200e" and cfg.anchor_sizes == PAPER_ANCHORS
    assert cfg.aspect_ratios == (0.25, 0.5, 1.0, 2.0, 4.0) and cfg.cascade_ious == (0.5, 0.6, 0.7)
    assert cfg.rpn_post_nms_train == 2000 and cfg.classes == ("cell", "nucleus")
    model = DeepCeNS(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 60e6  # ResNeSt-200 is ~70 M parameters before the heads
    deformable = [m for m in model.backbone.body.layer3.modules() if isinstance(m, DeformableConv)]
    deformable += [m for m in model.backbone.body.layer4.modules() if isinstance(m, DeformableConv)]
    assert len(deformable) == 36 + 3  # one per bottleneck of stages 3 and 4
    assert not any(isinstance(m, DeformableConv) for m in model.backbone.body.layer2.modules())
    with torch.no_grad():
        (out,) = model(torch.rand(1, 3, 128, 128))
    assert model.rpn.post_nms_top_n() == 1000  # a small image keeps the minimum
    n = len(out["scores"])
    assert out["boxes"].shape == (n, 4) and out["masks"].shape == (n, 28, 28)
    assert set(out["classes"].tolist()) <= {1, 2}


def test_test_time_proposals_follow_the_image_area():
    cfg = DeepCeNSConfig()
    assert cfg.rpn_post_nms_test == 2000 and cfg.rpn_post_nms_train == 2000
    assert cfg.test_proposals(256, 320) == 1000  # a val image: 2000 would be mostly duplicates
    assert cfg.test_proposals(832, 832) == 1320
    assert cfg.test_proposals(1024, 1024) == cfg.test_proposals(4096, 4096) == 2000


def test_deformable_stages_are_switchable():
    plain = tiny(deformable_stages=())
    assert not any(isinstance(m, DeformableConv) for m in plain.modules())
    # a fresh deformable convolution (zero offsets) computes what the plain one does
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
    x = torch.rand(1, 8, 12, 12)
    torch.testing.assert_close(DeformableConv(conv)(x), conv(x), atol=1e-5, rtol=1e-4)


def test_a_few_training_steps_lower_the_loss_on_two_classes():
    items = load_coco(U2OS / "annotations.json")
    item = items[0]
    assert item.classes == ("cell", "nucleus")
    from napari_deepcens.training.loop import detection_data_config
    from napari_deepcens.training.targets import detection_targets

    model = tiny(**detection_data_config(items)).train()
    assert detection_targets(item.labels)["labels"].tolist().count(1) == 10  # 10 cells, 9 nuclei
    assert detection_targets(item.labels)["labels"].tolist().count(2) == 9
    # two 192-px crops: ResNeSt's split attention normalises pooled features over the batch
    plane, labels = item.plane[:, :192, :192], item.labels[:, :192, :192]
    image = torch.from_numpy(np.stack([plane, plane[:, ::-1]]).copy())
    targets = [{k: torch.from_numpy(v) for k, v in detection_targets(lab.copy()).items()}
               for lab in (labels, labels[:, ::-1])]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(10):
        parts = model(image, targets)
        loss = sum(parts.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert {"loss_objectness", "loss_cls_0", "loss_box_2", "loss_mask"} <= set(parts)
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:2]), losses


def test_masks_are_pasted_per_class_and_the_more_confident_wins():
    m = np.zeros((28, 28), np.float32)
    m[4:24, 4:24] = 1.0  # a square filling the middle of its box
    dets = {
        "boxes": np.asarray([[10, 10, 38, 38], [24, 10, 52, 38], [60, 60, 62, 62], [0, 0, 28, 28]],
                            np.float32),
        "scores": np.asarray([0.6, 0.9, 0.8, 0.7], np.float32),
        "classes": np.asarray([1, 1, 1, 2]),
        "masks": np.stack([m, m, m, m]).astype(np.float16),
    }
    params = PostprocessParams(fg_threshold=0.5, score_threshold=0.5, min_size=10)
    out = class_instances(dets, (80, 80), ("cell", "nucleus"), params)
    cells, cell_boxes = out["cell"]
    # the 2×2-pixel detection is below min_size; the 0.9 one is label 1 and wins the overlap
    assert cells.max() == 2 and list(cell_boxes.score) == pytest.approx([0.9, 0.6])
    assert cells[24, 30] == 1
    assert (cells == 1).sum() == 20 * 20 and (cells == 2).sum() == 20 * 20 - 20 * 6
    nuclei, nucleus_boxes = out["nucleus"]
    assert nuclei.max() == 1 and (nuclei == 1).sum() == 400
    assert nucleus_boxes.width[0] == pytest.approx(20) and nucleus_boxes.cx[0] == pytest.approx(14)
    # the score threshold drops detections before pasting
    strict = class_instances(dets, (80, 80), ("cell", "nucleus"), PostprocessParams(score_threshold=0.85))
    assert strict["cell"][0].max() == 1 and strict["nucleus"][0].max() == 0
    labels, source = paste_masks(dets["boxes"][:2], dets["scores"][:2], dets["masks"][:2], (80, 80), 0.5)
    assert source.tolist() == [1, 0] and labels.max() == 2  # label 1 ↔ detection 1 (score 0.9)


def test_tiled_detection_keeps_every_object_once_and_whole():
    """A stand-in detector that sees objects cut by its tile edge (as a real one does, with a
    lower score): merged, each object is found once, with its whole box."""
    rng = np.random.default_rng(3)
    h, w = 700, 900
    grid = np.stack(np.meshgrid(np.arange(40, h - 30, 70), np.arange(40, w - 30, 70), indexing="ij"), -1)
    centres = grid.reshape(-1, 2) + rng.uniform(-12, 12, size=(grid.size // 2, 2))  # disjoint objects
    objects = np.stack([centres[:, 1] - 15, centres[:, 0] - 12, centres[:, 1] + 15, centres[:, 0] + 12], 1)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    plane = np.stack([yy, xx])  # each tile can read where it is

    def detect(tile: np.ndarray) -> dict[str, np.ndarray]:
        y0, x0 = float(tile[0, 0, 0]), float(tile[1, 0, 0])
        th, tw = tile.shape[-2:]
        local = objects - np.asarray([x0, y0, x0, y0])
        clipped = local.copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, tw)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, th)
        area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        seen = area > 0
        whole = area >= 30 * 24 - 1e-3
        scores = np.where(whole, 0.9, 0.5)[seen].astype(np.float32)
        n = int(seen.sum())
        return {"boxes": clipped[seen].astype(np.float32), "scores": scores,
                "classes": np.ones(n, np.int64), "masks": np.ones((n, 28, 28), np.float16)}

    gen = detect_tiled(plane, detect, tile=256, overlap=128, multiple=64)
    progress = []
    for item in gen:
        if isinstance(item, dict):
            merged = item
        else:
            progress.append(item)
    from napari_deepcens.inference.tiling import tile_starts

    n_tiles = len(tile_starts(704, 256, 128, 64)) * len(tile_starts(960, 256, 128, 64))
    assert n_tiles > 20 and progress[0] == (0, n_tiles) and progress[-1] == (n_tiles, n_tiles)
    assert len(merged["boxes"]) == len(objects)
    assert np.all(merged["scores"] == pytest.approx(0.9))  # never a cut one
    order = np.lexsort((objects[:, 1], objects[:, 0]))
    got = merged["boxes"][np.lexsort((merged["boxes"][:, 1], merged["boxes"][:, 0]))]
    np.testing.assert_allclose(got, objects[order], atol=1e-3)


def test_a_network_that_learnt_its_targets_exactly_pastes_each_object_where_it_is():
    """The mask targets of training (torchvision's, roi_align without alignment) sit half a
    pixel down-right in their box: centred before pasting, a disk comes back in place, cut
    by the image edge or not (boxes are not clipped: the mask describes the whole box)."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    from napari_deepcens.models.deepcens import centred_masks

    yy, xx = np.mgrid[:60, :60]
    for cy, cx, r in ((29.5, 29.5, 8.5), (31.0, 27.0, 12.0), (55.0, 40.0, 9.0)):  # last: cut
        whole = np.zeros((80, 80), bool)                         # the disk, edge or not
        whole[(np.mgrid[:80, :80][0] - cy) ** 2 + (np.mgrid[:80, :80][1] - cx) ** 2 <= r * r] = True
        disk = whole[:60, :60]
        ys, xs = np.nonzero(whole)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        target = project_masks_on_boxes(torch.from_numpy(whole[None].astype(np.float32)), box,
                                        torch.tensor([0]), 28)                  # (1, 28, 28)
        for masks, good in ((target, False), (centred_masks(target, box), True)):
            labels, _ = paste_masks(box.numpy(), np.ones(1, np.float32), masks.numpy(), (60, 60), 0.5)
            iou = ((labels > 0) & disk).sum() / ((labels > 0) | disk).sum()
            py, px = np.nonzero(labels)
            shift = max(abs(py.mean() - yy[disk].mean()), abs(px.mean() - xx[disk].mean()))
            if good:
                assert iou > 0.96 and shift < 0.1, (cy, cx, iou, shift)
            else:                                                # as pasted before the fix
                assert shift > 0.3 and iou < 0.95, (cy, cx, iou, shift)


def test_tiled_detection_keeps_boxes_that_reach_into_the_padding():
    """An image 100 px wide runs padded to 128: a nucleus cut by the right edge is seen
    whole with its mirror; its box is kept as it is, since its mask spans the whole box."""
    box = np.array([[70.0, 10.0, 110.0, 40.0]], np.float32)          # centre inside

    def detect(tile):
        return {"boxes": box.copy(), "scores": np.ones(1, np.float32), "classes": np.ones(1, np.int64),
                "masks": np.ones((1, 28, 28), np.float16)}

    *_, merged = detect_tiled(np.zeros((1, 64, 100), np.float32), detect, tile=128, multiple=64)
    np.testing.assert_array_equal(merged["boxes"], box)


def test_two_class_folders_and_coco_agree():
    (sample,) = list_samples(U2OS)
    assert list(sample.classes) == ["cell", "nucleus"]
    (from_folder,) = load_folder(U2OS, channels=3)
    (from_coco,) = load_coco(U2OS / "annotations.json")
    assert from_folder.plane.shape == (3, 256, 256) and from_folder.classes == from_coco.classes
    for a, b in zip(from_folder.labels, from_coco.labels, strict=True):
        assert a.max() == b.max()
        assert np.array_equal(a > 0, b > 0)


def test_evaluation_per_class(tmp_path):
    (sample,) = list_samples(U2OS)
    cells, nuclei = read_labels(sample.classes["cell"]), read_labels(sample.classes["nucleus"])
    write_labels(tmp_path / f"{sample.id}_cell_labels.tif", cells)
    fewer = np.where(nuclei <= 3, nuclei, 0)  # 3 of the 9 nuclei found, exactly
    write_labels(tmp_path / f"{sample.id}_nucleus_labels.tif", fewer)
    results = evaluate_folder(U2OS, tmp_path)
    assert results["cell"]["AP@0.5"] == pytest.approx(1.0)
    assert results["nucleus"]["AP@0.5"] == pytest.approx(3 / 9)
    assert results["overall"]["AP@0.5"] == pytest.approx((1.0 + 3 / 9) / 2)
    assert results["cell"]["mask_mAP"] == pytest.approx(1.0)
    assert results["nucleus"]["mask_mAP@0.5"] == pytest.approx(3 / 9, abs=0.02)


@pytest.fixture
def tiny_two_class_weights(tmp_path):
    """An untrained two-class network whose classifiers score every proposal exactly 1/3 per
    class (zero weights), so both classes are found and the score slider has a known effect.
    Room for every proposal twice: a cap would keep whichever class random init favours."""
    from napari_deepcens.models.weights import WeightsInfo, save_weights
    from napari_deepcens.training.loop import detection_data_config

    model = tiny(**detection_data_config(load_coco(U2OS / "annotations.json")),
                 detections_per_image=2 * TINY["rpn_post_nms_test"])
    with torch.no_grad():
        for stage in model.stages:
            stage.cls_score.weight.zero_()
            stage.cls_score.bias.zero_()
    info = WeightsInfo(model="deepcens", config=model.config.to_dict(), median_diameter=40.0,
                       thresholds={"fg_threshold": 0.45, "score_threshold": 0.3, "min_size": 5})
    return save_weights(tmp_path / "tiny_two_class.safetensors", model, info)


def test_widget_puts_each_class_in_its_own_labels_layer(make_napari_viewer, qtbot, monkeypatch,
                                                        tiny_two_class_weights, tmp_path):
    import imageio.v3 as iio

    from napari_deepcens.widget.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    (sample,) = list_samples(U2OS)
    layer = viewer.add_image(iio.imread(sample.image), name="u2os", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_options(image=layer, device="cpu", model="deepcens")
    widget.set_options(weights=tiny_two_class_weights, auto_diameter=False, diameter=0.0)
    assert not widget._score.native.isHidden() and widget._seed.native.isHidden()
    assert widget._fg.label == "mask"
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    cells, nuclei = viewer.layers["u2os cell labels"], viewer.layers["u2os nucleus labels"]
    boxes = viewer.layers["u2os boxes"]
    assert cells.data.max() > 0 and nuclei.data.max() > 0, widget.status
    assert set(boxes.features["class"]) == {"cell", "nucleus"}
    n_cells = int((boxes.features["class"] == "cell").sum())
    assert n_cells == cells.data.max()
    assert " cells" in widget.status and " nuclei" in widget.status  # plurals, not "28 cell"
    # selecting a nucleus box selects its label in the nucleus layer
    index = int(np.flatnonzero(boxes.features["class"] == "nucleus")[0])
    boxes.selected_data = {index}
    boxes.events.highlight()
    assert nuclei.selected_label == int(boxes.features["label"].iloc[index])

    # exporting either class layer writes one sample with both classes, each under its name
    from napari_deepcens.io.images import read_labels
    from napari_deepcens.widget.correction_widget import CorrectionWidget

    correct = CorrectionWidget(viewer)
    correct._labels_layer.value, correct._image.value = cells, layer
    correct._dataset.value = tmp_path / "ds"
    folder = correct.export()
    assert folder is not None and "cell + nucleus" in correct._status.value
    assert np.array_equal(read_labels(folder / "labels_cell.tif"), cells.data)
    assert np.array_equal(read_labels(folder / "labels_nucleus.tif"), nuclei.data)
    assert not (folder / "labels.tif").exists()

    predictor, _raw = widget._raw[id(layer)]
    monkeypatch.setattr(predictor, "predict_iter", lambda *a, **k: pytest.fail("slider re-ran the network"))
    widget.set_options(score=0.9)  # every class scores ~1/3: nothing is left
    qtbot.waitUntil(lambda: widget._post_worker is None and cells.data.max() == 0, timeout=20_000)
    assert nuclei.data.max() == 0 and len(boxes.data) == 0
    assert len([lay for lay in viewer.layers if lay.name.startswith("u2os")]) == 4  # updated in place


def test_cli_trains_on_coco_segments_per_class_and_evaluates(tmp_path, capsys):
    """The command-line round trip on two classes: one training step from COCO JSON (the
    network is not meant to be good), per-class outputs, per-class evaluation."""
    import csv

    from napari_deepcens.cli import main
    from napari_deepcens.models.weights import read_info

    weights = tmp_path / "two.safetensors"
    assert main(["train", str(U2OS / "annotations.json"), "-o", str(weights), "--model", "deepcens",
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "128",
                 "--device", "cpu"]) == 0
    info = read_info(weights)
    assert info.config["classes"] == ["cell", "nucleus"] and info.config["in_channels"] == 3
    from napari_deepcens.training.dataset import object_diameters

    nuclei = load_coco(U2OS / "annotations.json")[0].class_labels()["nucleus"]
    assert info.median_diameter == pytest.approx(np.median(object_diameters(nuclei)))  # nuclei set the scale
    (sample,) = list_samples(U2OS)
    out = tmp_path / "out"
    assert main(["segment", str(sample.image), "-o", str(out), "--model", "deepcens",
                 "--weights", str(weights), "--diameter", f"{info.median_diameter:.3f}",
                 "--device", "cpu"]) == 0
    for cls in ("cell", "nucleus"):
        assert read_labels(out / f"{sample.id}_{cls}_labels.tif").shape == (256, 256)
        with open(out / f"{sample.id}_{cls}_boxes.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert all(row["class"] == cls for row in rows)
    capsys.readouterr()
    assert main(["evaluate", str(U2OS), str(out)]) == 0
    table = capsys.readouterr().out
    assert "cell" in table and "nucleus" in table and "mask_mAP" in table


#: AP@0.5 of the bundled DeepCeNS on two validation images (measured 0.621 and 0.726 in
#: fp32 with the segment path below), with a margin for CPU/bf16 differences.
GOLDEN_AP50 = {"0bda51": 0.621 - 0.06, "5d75a6": 0.726 - 0.06}


def test_bundled_deepcens_on_validation_images(dsb_samples):
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image, summarize

    predictor = Predictor.from_name("deepcens", device="cpu")
    assert predictor.class_names == ("nucleus",) and predictor.info.median_diameter > 10
    for sample_id, image, labels, modality in dsb_samples:
        if sample_id[:6] not in GOLDEN_AP50:
            continue
        seg = predictor.instances(predictor.predict(image))
        score = summarize([match_image(labels, seg.labels)])["AP@0.5"]
        assert score >= GOLDEN_AP50[sample_id[:6]], (sample_id, modality, score)
        assert len(seg.boxes) == seg.labels.max()  # one rotated box per object


def test_mask_threshold_rises_and_score_threshold_falls_only_on_enlargement():
    from napari_deepcens.inference.predictor import params_at_scale
    from napari_deepcens.postprocess.params import PostprocessParams

    tuned = PostprocessParams(fg_threshold=0.4, score_threshold=0.7, min_size=10)
    for scale in (0.25, 0.5, 1.0, 1.5):
        at = params_at_scale(tuned, scale, detection=True)
        assert (at.fg_threshold, at.score_threshold) == (0.4, 0.7)
    assert params_at_scale(tuned, 2.25, detection=True).score_threshold == 0.6
    assert params_at_scale(tuned, 2.5, detection=True).fg_threshold == 0.4
    at = params_at_scale(tuned, 3.75, detection=True)
    assert (at.fg_threshold, at.score_threshold) == (0.6, 0.5)
    at = params_at_scale(tuned, 9.0, detection=True)
    assert (at.fg_threshold, at.score_threshold) == (0.8, 0.5)
    at = params_at_scale(tuned, 9.0)                        # dense models: both kept
    assert (at.fg_threshold, at.score_threshold) == (0.4, 0.7)


def _shrunk_quarter(dsb_samples, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """A validation crop shrunk ×0.25 as ``bench/eval_scales.py`` shrinks val: the normalised
    plane bilinear, the labels sampled at the same pixel centres (nearest-exact)."""
    import torch
    from torch.nn import functional as F

    from napari_deepcens.io.images import to_plane

    _sample_id, image, labels, _ = next(s for s in dsb_samples if s[0].startswith(prefix))
    plane = to_plane(image)
    size = (round(plane.shape[0] / 4), round(plane.shape[1] / 4))
    small = F.interpolate(torch.from_numpy(plane)[None, None], size=size, mode="bilinear")[0, 0].numpy()
    truth = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size,
                          mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return small, truth


def test_tiny_nuclei_keep_their_size_when_enlarged(dsb_samples):
    """Val 0bda515e shrunk ×0.25 (nuclei ~3 px): the estimate enlarges it ×6.5 and the mask
    head, on blurred nuclei, draws them too wide at the tuned threshold (AP@0.5 0.33 with the
    session-7 weights); the raised threshold gives them back their size (0.51)."""
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image

    small, truth = _shrunk_quarter(dsb_samples, "0bda51")
    predictor = Predictor.from_name("deepcens", device="cpu")
    raw = predictor.predict(small, normalised=True)
    assert raw.scale > 5.5
    raised = predictor.default_params(raw.scale)
    assert raised.fg_threshold > 0.7
    tuned = replace(raised, fg_threshold=predictor.default_params().fg_threshold)
    ap_raised = match_image(truth, predictor.postprocess(raw, raised)).ap(0.5)
    ap_tuned = match_image(truth, predictor.postprocess(raw, tuned)).ap(0.5)
    assert ap_raised >= 0.45 and ap_raised >= ap_tuned + 0.1, (ap_raised, ap_tuned)


def test_blurred_nuclei_kept_by_the_lower_score_threshold_when_enlarged(dsb_samples):
    """Val 150b0ffa shrunk ×0.25 (198 touching nuclei of ~6 px): the estimate enlarges it ~×3
    and the classifier scores many blurred true nuclei below the tuned threshold; the score
    threshold lowered with the zoom keeps them (AP@0.5 0.73 → 0.77 when measured with the
    session-8 network, tuned 0.6, trained on more low-resolution crops; 0.56 → 0.70 with the
    session-7 one, tuned 0.7)."""
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image

    small, truth = _shrunk_quarter(dsb_samples, "150b0f")
    predictor = Predictor.from_name("deepcens", device="cpu")
    raw = predictor.predict(small, normalised=True)
    assert 2.5 < raw.scale < 3.5
    lowered = predictor.default_params(raw.scale)
    tuned = predictor.default_params().score_threshold
    assert lowered.score_threshold < tuned - 0.15
    ap_lowered = match_image(truth, predictor.postprocess(raw, lowered)).ap(0.5)
    ap_tuned = match_image(truth, predictor.postprocess(
        raw, replace(lowered, score_threshold=tuned))).ap(0.5)
    assert ap_lowered >= 0.70 and ap_lowered >= ap_tuned + 0.02, (ap_lowered, ap_tuned)


def test_detections_map_back_by_the_zoom_each_axis_got(monkeypatch):
    """702 px shrunk ×0.25 run as 176 px, a zoom of 0.2507: boxes mapped back by it land on
    their object at the far edge too (by the nominal 0.25 they were 2 px off)."""
    from napari_deepcens.inference.predictor import Predictor

    predictor = Predictor.from_name("deepcens", device="cpu")
    image = np.zeros((64, 702), np.float32)
    image[20:44, 670:694] = 1.0                              # a square, centre x = 682.0

    def first_run(profile):                                  # not its mirrors in the padding
        on = np.flatnonzero(profile > 0.25)
        return on[0], on[np.r_[np.flatnonzero(np.diff(on) > 1), on.size - 1][0]] + 1

    def detect(tile):                                        # the square's box, as seen
        (c0, c1), (r0, r1) = first_run(tile[0].max(0)), first_run(tile[0].max(1))
        box = np.array([[c0, r0, c1, r1]], np.float32)
        return {"boxes": box, "scores": np.ones(1, np.float32), "classes": np.ones(1, np.int64),
                "masks": np.ones((1, 28, 28), np.float16)}

    monkeypatch.setattr(predictor, "_detect_tile", detect)
    raw = predictor.predict(image, normalised=True, diameter=4 * predictor.info.zoom_diameter)
    assert raw.scale == 0.25
    x0, y0, x1, y1 = raw.maps["boxes"][0]
    assert abs((x0 + x1) / 2 - 682.0) < 0.6 and abs((y0 + y1) / 2 - 32.0) < 0.6
