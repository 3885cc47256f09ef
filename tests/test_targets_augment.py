import numpy as np

from napari_deepcens.training.augment import AugmentConfig, augment, random_scaled_crop
from napari_deepcens.training.dataset import object_diameters
from napari_deepcens.training.targets import make_targets, normalised_distance, shape_aware_weights

from .conftest import disc_labels


def test_normalised_distance_peaks_at_one_in_every_object():
    labels = disc_labels((60, 60), [(15, 15), (40, 40)], [4, 10][0])
    labels[labels == 2] = 0
    labels |= disc_labels((60, 60), [(40, 40)], 10) * 2
    dist = normalised_distance(labels)
    for i in (1, 2):
        assert dist[labels == i].max() == 1.0
    assert dist[labels == 0].max() == 0.0
    assert dist[15, 15] == 1.0 and dist[40, 40] == 1.0


def test_shape_aware_weights_follow_the_seed_formula():
    labels = disc_labels((80, 80), [(40, 40)], 10)
    w = shape_aware_weights(labels)
    n_fg = (labels > 0).sum()
    ratio = min((labels.size - n_fg) / n_fg, 10.0)  # w_c, capped for tiny foregrounds
    # far from the boundary: only w_c is left
    assert np.isclose(w[0, 0], 1.0, atol=1e-3)
    # at the centre D ≈ 9 px (the inner boundary ring is one pixel in)
    assert np.isclose(w[40, 40], ratio + 10 * np.exp(-(9.0**2) / 50), rtol=2e-2)
    # on the boundary (D = 0) the distance term is the full alpha = 10
    assert np.isclose(w[40, 50], ratio + 10.0, rtol=1e-3)


def test_targets_stack():
    t = make_targets(disc_labels((32, 32), [(16, 16)], 6))
    assert t.shape == (3, 32, 32) and t.dtype == np.float32


def test_scaled_crop_keeps_labels_nearest():
    labels = disc_labels((100, 100), [(30, 30), (70, 60)], 12)
    image = (labels > 0).astype(np.float32)
    rng = np.random.default_rng(1)
    img, lab = random_scaled_crop(image, labels, 64, 2.0, rng)
    assert img.shape == lab.shape == (64, 64)
    assert set(np.unique(lab)) <= {0, 1, 2}
    # zoom ×2 doubles diameters (~24 px → ~48 px) for objects fully inside the crop
    img, lab = random_scaled_crop(image, labels, 200, 2.0, np.random.default_rng(0))
    d = object_diameters(lab)
    assert np.allclose(d, 2 * object_diameters(labels), rtol=0.05)


def test_augment_shapes_and_ranges():
    labels = disc_labels((120, 90), [(30, 30), (80, 60)], 10)
    image = (labels > 0).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, lab = augment(image, labels, AugmentConfig(crop=48), rng)
        assert img.shape == lab.shape == (48, 48)
        assert img.dtype == np.float32 and lab.dtype == np.int32


def test_low_resolution_matches_what_the_predictor_does_to_small_objects(fluorescence):
    """The degradation the network trains on is what a ×4 lower magnification (an area
    filter: torch's antialiased shrink) followed by the predictor's bilinear enlargement back
    to the training scale does, on the same grid, and it removes the fine texture."""
    import torch
    from torch.nn import functional as F

    from napari_deepcens.inference.predictor import resize
    from napari_deepcens.io.images import to_plane
    from napari_deepcens.training.augment import low_resolution

    plane = to_plane(fluorescence[0])
    degraded = low_resolution(plane, 4.0)
    assert degraded.shape == plane.shape and degraded.dtype == np.float32
    small = F.interpolate(torch.from_numpy(plane)[None, None], size=(64, 64), mode="bilinear",
                          antialias=True)[0, 0].numpy()
    seen = resize(small, plane.shape)
    assert np.corrcoef(degraded.ravel(), seen.ravel())[0, 1] > 0.995
    assert abs(float(degraded.mean() - plane.mean())) < 0.01
    # fine texture (pixel-to-pixel differences) mostly gone; the nuclei themselves stay
    assert np.abs(np.diff(degraded, axis=1)).mean() < 0.5 * np.abs(np.diff(plane, axis=1)).mean()
    assert np.corrcoef(degraded.ravel(), plane.ravel())[0, 1] > 0.8



def test_point_sampled_and_sharpened_low_resolution_match_the_pipeline(fluorescence):
    """A point-sampled crop is what a resampled ×4 image (bilinear at pixel centres, no area
    filter) becomes once the predictor sharpens it on its small grid and enlarges it back;
    it keeps more texture than the area-filtered one, and ×2 crops are never sharpened."""
    import torch
    from torch.nn import functional as F

    from napari_deepcens.inference.predictor import resize
    from napari_deepcens.inference.sharpen import unsharp
    from napari_deepcens.io.images import to_plane
    from napari_deepcens.training.augment import low_resolution

    plane = to_plane(fluorescence[0])[:256, :256]
    small = F.interpolate(torch.from_numpy(plane)[None, None], size=(64, 64), mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    seen = resize(unsharp(small), plane.shape)
    point = low_resolution(plane, 4.0, point=True, sharpen=True)
    assert point.shape == plane.shape and point.dtype == np.float32
    assert np.corrcoef(point.ravel(), seen.ravel())[0, 1] > 0.995
    area = low_resolution(plane, 4.0)
    texture = [np.abs(np.diff(x, axis=1)).mean() for x in (area, point)]
    assert texture[1] > 1.3 * texture[0], texture
    # sharpening starts at ×2.5 (inference/sharpen.SHARPEN_FROM), as in the predictor
    np.testing.assert_array_equal(low_resolution(plane, 2.0, sharpen=True), low_resolution(plane, 2.0))
    assert not np.array_equal(low_resolution(plane, 3.0, sharpen=True), low_resolution(plane, 3.0))
    flat = np.full((64, 64), 0.3, np.float32)
    np.testing.assert_allclose(low_resolution(flat, 4.0, point=True, sharpen=True), 0.3, atol=1e-6)


def test_coco_outlines_that_are_empty_or_degenerate_are_skipped(tmp_path, monkeypatch):
    import json

    import imageio.v3 as iio

    from napari_deepcens.training import dataset
    from napari_deepcens.training.dataset import load_coco

    said = []
    monkeypatch.setattr(dataset.log, "warning", lambda msg, *args: said.append(msg % args))

    image = np.zeros((64, 64), np.uint8)
    image[10:30, 10:30] = 200
    iio.imwrite(tmp_path / "a.png", image)
    square = [10, 10, 30, 10, 30, 30, 10, 30]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
            "categories": [{"id": 1, "name": "nucleus"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square]},
                {"id": 2, "image_id": 1, "category_id": 1, "segmentation": []},
                {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 2, 2]]},
                {"id": 4, "image_id": 1, "category_id": 1, "segmentation": None}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (item,) = load_coco(tmp_path / "coco.json", channels=1)
    assert int(item.labels.max()) == 1 and (item.labels > 0).sum() >= 400
    assert any("3 empty or unreadable outlines skipped" in m for m in said)


def test_an_empty_channel_stays_empty_under_intensity_augmentation():
    """The two-stain models read RGB with blue unused, normalised by a spread clamped to
    1e-3: brightness or noise added there would reach the network ~1000× amplified during
    training, while at inference the channel is exactly 0."""
    from napari_deepcens.training.augment import intensity

    rng = np.random.default_rng(0)
    image = np.zeros((3, 48, 48), np.float32)
    image[:2] = rng.random((2, 48, 48))
    cfg = AugmentConfig()
    for _ in range(10):
        out = intensity(image, cfg, rng)
        assert np.array_equal(out[2], image[2])
        assert not np.allclose(out[:2], image[:2])  # the stains are still augmented
    grey = rng.random((48, 48)).astype(np.float32)
    assert not np.allclose(intensity(grey, cfg, rng), grey)
