import numpy as np
import pytest

from napari_deepcens.evaluation.metrics import THRESHOLDS, iou_matrix, match_image, summarize


def test_identical_labels_score_one():
    gt = np.array([[1, 1, 0], [0, 2, 2], [3, 0, 0]])
    m = match_image(gt, gt * 7)  # label values do not matter
    s = summarize([m])
    assert s["AP@0.5"] == s["DSB"] == s["F1"] == s["pixel_IoU"] == 1.0


def test_known_iou_and_counts():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1          # 16 px
    gt[6:10, 6:10] = 2        # 16 px, missed
    pred = np.zeros_like(gt)
    pred[0:4, 0:3] = 5        # 12 px inside object 1: IoU 12/16 = 0.75
    pred[6:8, 0:2] = 9        # false positive
    iou = iou_matrix(gt, pred)
    assert iou.shape == (2, 2)
    assert iou[0, 0] == pytest.approx(0.75)
    m = match_image(gt, pred)
    assert m.counts(0.5) == (1, 1, 1)
    assert m.ap(0.5) == pytest.approx(1 / 3)
    assert m.f1(0.5) == pytest.approx(0.5)
    # 0.75 is not > 0.75: no match from there on
    assert m.counts(0.75) == (0, 2, 2)
    dsb = np.mean([m.ap(t) for t in THRESHOLDS])
    assert summarize([m])["DSB"] == pytest.approx(dsb)
    assert dsb == pytest.approx(5 / 3 / 10)   # 1/3 at t=0.5..0.7 (5 thresholds), 0 after
    assert m.pixel_iou == pytest.approx(12 / (32 + 4))


def test_empty_cases():
    empty = np.zeros((5, 5), int)
    one = empty.copy()
    one[1:3, 1:3] = 1
    assert match_image(empty, empty).ap(0.5) == 1.0
    assert match_image(one, empty).ap(0.5) == 0.0
    assert match_image(empty, one).ap(0.5) == 0.0


def test_images_are_averaged_not_pooled():
    a = np.zeros((4, 4), int)
    a[:2, :2] = 1
    perfect = match_image(a, a)
    miss = match_image(a, np.zeros_like(a))
    assert summarize([perfect, miss])["AP@0.5"] == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        iou_matrix(np.zeros((3, 3), int), np.zeros((3, 4), int))


def test_coco_map_counts_every_nucleus_of_a_crowded_field():
    """pycocotools reports its headline .5:.95 mAP at 100 detections per image whatever
    maxDets says: a perfect prediction of 150 nuclei read 0.663. Read at MAX_DETS it is 1."""
    from napari_deepcens.evaluation.coco import coco_map

    gt = np.zeros((300, 300), np.int32)
    for k in range(150):
        r, c = divmod(k, 10)
        gt[r * 20 + 2: r * 20 + 14, c * 30 + 2: c * 30 + 20] = k + 1
    result = coco_map([gt], [gt.copy()], [np.linspace(1.0, 0.5, 150)])
    assert result["mask_mAP"] == pytest.approx(1.0) and result["box_mAP"] == pytest.approx(1.0)
    missing = gt.copy()
    missing[missing > 120] = 0  # 30 of 150 nuclei missed: recall 0.8 at every IoU
    assert coco_map([gt], [missing])["mask_mAP"] == pytest.approx(0.8, abs=0.01)


def test_counts_are_said_in_english():
    from napari_deepcens.wording import count_of, counts_of

    assert counts_of({"nucleus": 28, "cell": 28}) == "28 nuclei, 28 cells"
    assert count_of(1, "nucleus") == "1 nucleus" and count_of(0, "cell") == "0 cells"
    assert count_of(3, "Nucleus") == "3 Nuclei" and count_of(2, "mitosis") == "2 mitoses"
