import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_deepcens.postprocess.params import PostprocessParams
from napari_deepcens.postprocess.watershed import flood_components, instances_from_maps
from napari_deepcens.training.targets import normalised_distance

from .conftest import disc_labels


def maps_from_labels(labels):
    """What a perfect network would output for ``labels``."""
    return (labels > 0).astype(np.float32), normalised_distance(labels)


def test_two_touching_discs_split_at_the_neck():
    # two overlapping discs merged into one blob: only the distance map can split them
    blob = (disc_labels((40, 60), [(20, 20)], 11) > 0) | (disc_labels((40, 60), [(20, 37)], 9) > 0)
    dist = ndi.distance_transform_edt(blob)
    dist = (dist / dist.max()).astype(np.float32)
    fg = blob.astype(np.float32)
    # the smaller disc's peak rises ~0.3 above the neck: a prominence below that splits,
    # above it merges
    split = instances_from_maps(fg, dist, PostprocessParams(seed_threshold=0.1))
    assert split.max() == 2
    left, right = split[20, 12], split[20, 46]
    assert left != right and left > 0 and right > 0
    merged = instances_from_maps(fg, dist, PostprocessParams(seed_threshold=0.5))
    assert merged.max() == 1


def test_min_size_drops_small_objects_and_relabels():
    labels = disc_labels((50, 50), [(10, 10), (35, 35)], 6)
    labels[45:47, 2:4] = 3                   # 4-pixel speck
    fg, dist = maps_from_labels(labels)
    kept = instances_from_maps(fg, dist, PostprocessParams(min_size=10))
    assert kept.max() == 2 and set(np.unique(kept)) == {0, 1, 2}
    assert instances_from_maps(fg, dist, PostprocessParams(min_size=0)).max() == 3


def test_foreground_threshold():
    labels = disc_labels((30, 30), [(15, 15)], 8)
    fg, dist = maps_from_labels(labels)
    assert instances_from_maps(fg * 0.4, dist, PostprocessParams(fg_threshold=0.5)).max() == 0
    assert instances_from_maps(fg * 0.4, dist, PostprocessParams(fg_threshold=0.3)).max() == 1


def test_blob_without_seed_is_kept():
    labels = disc_labels((30, 30), [(15, 15)], 5)
    fg = (labels > 0).astype(np.float32)
    dist = np.zeros_like(fg)                  # no seed anywhere
    out = instances_from_maps(fg, dist, PostprocessParams(min_size=1))
    assert out.max() == 1 and (out > 0).sum() == (labels > 0).sum()


def test_perfect_maps_recover_every_object():
    labels = disc_labels((64, 64), [(12, 12), (12, 30), (40, 40), (50, 12)], 9)
    fg, dist = maps_from_labels(labels)
    out = instances_from_maps(fg, dist)
    assert out.max() == 4
    for i in range(1, 5):
        assert len(np.unique(out[labels == i])) == 1


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="seed_threshold"):
        PostprocessParams(seed_threshold=1.5)
    with pytest.raises(ValueError, match="min_size"):
        PostprocessParams(min_size=-1)


def test_flooding_blob_by_blob_equals_one_global_watershed():
    """The per-blob shortcut must give exactly what one masked watershed of the whole image
    gives, seedless blobs numbered after the markers (touching, lone and seedless discs)."""
    from skimage.segmentation import watershed

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:180, :220]
    truth = np.zeros((180, 220), np.int32)
    for i, (cy, cx, r) in enumerate([(30, 30, 12), (30, 52, 12), (52, 40, 11), (120, 60, 14),
                                     (100, 160, 9), (150, 180, 10), (150, 199, 10), (20, 190, 6)],
                                    start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    relief = -(normalised_distance(truth) + 0.05 * rng.random(truth.shape)).astype(np.float32)
    mask = truth > 0
    peaks = (relief < -0.8) & mask
    peaks[10:30, 180:200] = False  # the small disc holds no seed
    markers, n = ndi.label(peaks)
    expected = watershed(relief, markers, mask=mask)
    orphans, n_orphans = ndi.label(mask & (expected == 0))
    expected = np.where(orphans > 0, orphans + n, expected)
    got = flood_components(relief, markers, n, mask)
    assert n_orphans == 1 and n == 7 and ndi.label(mask)[1] == 6  # two blobs hold two seeds
    np.testing.assert_array_equal(got, expected)
    assert flood_components(relief, markers, n, np.zeros_like(mask)).max() == 0
    # CenterUNet's markers: detection numbers, some unused; seedless blobs dropped
    sparse = markers * 2
    got = flood_components(relief, sparse, 2 * n + 1, mask, keep_seedless=False)
    np.testing.assert_array_equal(got, watershed(relief, sparse, mask=mask))
