import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_deepcens.postprocess.params import PostprocessParams
from napari_deepcens.postprocess.watershed import instances_from_maps
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
