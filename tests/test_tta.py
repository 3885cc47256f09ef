"""Test-time augmentation (inference/tta.py): four flips, merged back on the image's grid."""

import numpy as np
from scipy import ndimage as ndi

from napari_deepcens.inference.tta import (
    FLIPS,
    flip_averaged_maps,
    flip_fused_detections,
    fuse_detections,
)


def l_shape(h: int = 96, w: int = 128) -> np.ndarray:
    """One channel with a bright L (asymmetric under every flip) and a small square."""
    plane = np.zeros((1, h, w), np.float32)
    plane[0, 20:60, 30:40] = 1.0   # upright bar of the L
    plane[0, 50:60, 30:70] = 1.0   # its foot, to the right
    plane[0, 70:80, 90:100] = 0.8
    return plane


def component_detector(tile: np.ndarray, only_left_half: bool = False) -> dict[str, np.ndarray]:
    """A stand-in detector: each bright component, box in pixel edges, mask sampled at 28²."""
    lab, _n = ndi.label(tile[0] > 0.5)
    boxes, scores, masks = [], [], []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if only_left_half and (x0 + x1) / 2 >= tile.shape[-1] / 2:
            continue
        crop = lab[sl] == i
        ys = ((np.arange(28) + 0.5) * crop.shape[0] / 28).astype(int)
        xs = ((np.arange(28) + 0.5) * crop.shape[1] / 28).astype(int)
        boxes.append([x0, y0, x1, y1])
        scores.append(float(tile[0][lab == i].mean()))
        masks.append(crop[np.ix_(ys, xs)].astype(np.float16))
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "classes": np.ones(len(scores), np.int64),
            "masks": np.asarray(masks, np.float16).reshape(-1, 28, 28)}


def test_flipped_detections_come_back_where_they_were_with_their_masks_the_right_way_round():
    plane = l_shape()
    single = component_detector(plane)
    fused = flip_fused_detections(component_detector, plane)
    assert len(fused["scores"]) == len(single["scores"]) == 2
    order = np.argsort(-single["scores"])
    np.testing.assert_allclose(fused["boxes"], single["boxes"][order], atol=1e-4)
    np.testing.assert_allclose(fused["scores"], single["scores"][order], atol=1e-4)  # seen 4 times
    # the L's mask keeps its foot at the bottom right: a wrongly unflipped pass would blur it
    np.testing.assert_array_equal(fused["masks"][0], single["masks"][order][0])
    assert fused["masks"][0][-1, -1] == 1 and fused["masks"][0][0, -1] == 0


def test_an_object_seen_in_half_the_passes_keeps_half_its_score():
    plane = l_shape()
    fused = flip_fused_detections(lambda t: component_detector(t, only_left_half=True), plane)
    # The L (left half) is seen unflipped and flipped upside down; mirrored left-right it
    # lies in the right half. The square (right half) is seen only in the mirrored passes.
    assert len(fused["scores"]) == 2
    np.testing.assert_allclose(sorted(fused["scores"]), [0.4, 0.5], atol=1e-4)


def test_fusion_takes_one_member_per_pass_and_keeps_separate_objects_apart():
    box = np.asarray([[10, 10, 30, 30]], np.float32)
    far = np.asarray([[60, 60, 80, 80]], np.float32)
    mask = np.ones((1, 28, 28), np.float16)

    def dets(boxes, scores):
        n = len(scores)
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "scores": np.asarray(scores, np.float32), "classes": np.ones(n, np.int64),
                "masks": np.repeat(mask, n, 0)}

    # pass 0 holds the object twice (a duplicate the model's own NMS left): it must not count twice
    passes = [dets(np.concatenate([box, box + 1, far]), [0.9, 0.6, 0.7]), dets(box + 2, [0.3])]
    fused = fuse_detections(passes)
    assert len(fused["scores"]) == 3
    np.testing.assert_allclose(fused["scores"], [(0.9 + 0.3) / 2, 0.7 / 2, 0.6 / 2], atol=1e-5)
    np.testing.assert_allclose(fused["boxes"][0], (box[0] * 0.9 + (box[0] + 2) * 0.3) / 1.2, atol=1e-4)
    assert fuse_detections([dets(np.zeros((0, 4)), []), dets(np.zeros((0, 4)), [])])["boxes"].shape == (0, 4)


def test_averaged_maps_undo_a_networks_left_right_bias():
    """A stand-in network that leans to the right by one pixel: averaged over the flips its
    map is centred again. Coarse (stride-4) maps come back aligned with the tile."""
    tile = np.zeros((32, 32), np.float32)
    tile[10:22, 12:20] = 1.0

    def biased(t):
        return {"foreground": np.roll(t, 1, axis=-1)[None],
                "heatmap": t.reshape(1, 8, 4, 8, 4).mean((2, 4)),
                "offset": np.full((2, 8, 8), 0.25, np.float32)}

    out = flip_averaged_maps(biased, tile)
    np.testing.assert_allclose(out["foreground"][0], (np.roll(tile, 1, -1) + np.roll(tile, -1, -1)) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(out["heatmap"], biased(tile)["heatmap"], atol=1e-6)
    np.testing.assert_array_equal(out["offset"], biased(tile)["offset"])  # unflipped pass only
    assert len(FLIPS) == 4


def test_centerunet_maps_become_exactly_flip_equivariant(fluorescence):
    from napari_deepcens import Predictor

    image, _ = fluorescence  # 256 × 256: one tile, no padding
    predictor = Predictor.from_name("centerunet", device="cpu")
    raw = predictor.predict(image, tta=True, estimate=False)
    mirrored = predictor.predict(np.ascontiguousarray(image[:, ::-1]), tta=True, estimate=False)
    assert raw.meta["tta"] and not predictor.predict(image, estimate=False).meta["tta"]
    for name in ("segmentation", "heatmap"):
        np.testing.assert_allclose(mirrored.maps[name][..., ::-1], raw.maps[name], atol=2e-4)


#: AP@0.5 of the bundled CenterUNet on the three bundled validation crops, without and with
#: flip averaging (measured 0.683 / 0.852 / 0.695 → 0.694 / 0.888 / 0.740: mean +0.031).
def test_flip_averaging_segments_real_nuclei_better(dsb_samples):
    from napari_deepcens import Predictor
    from napari_deepcens.evaluation.metrics import match_image, summarize

    predictor = Predictor.from_name("centerunet", device="cpu")
    plain, averaged = [], []
    for _id, image, labels, _modality in dsb_samples:
        plain.append(summarize([match_image(labels, predictor.segment(image))])["AP@0.5"])
        averaged.append(summarize([match_image(labels, predictor.segment(image, tta=True))])["AP@0.5"])
    assert np.mean(averaged) >= np.mean(plain) + 0.015, (plain, averaged)
    assert min(np.subtract(averaged, plain)) > -0.02


def test_flip_averaging_handles_sides_that_need_padding():
    from napari_deepcens import Predictor

    rng = np.random.default_rng(0)
    size = (100, 130)  # padded to 112 × 144 for the U-Net
    image = rng.normal(100, 5, size).astype(np.float32)
    raw = Predictor.from_name("unet", device="cpu").predict(image, tta=True, estimate=False)
    assert raw.maps["foreground"].shape == size
