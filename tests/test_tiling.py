import itertools

import numpy as np
import pytest

from napari_deepcens.inference.tiling import (
    balanced_tile,
    blend_window,
    predict_tiled,
    tile_grid,
    tile_starts,
)


def drain(gen):
    *progress, result = list(gen)
    return progress, result


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (1000, 256, 64), (257, 256, 64),
                                                 (64, 256, 32)])
def test_tiles_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))


def test_constant_field_stays_constant():
    plane = np.zeros((300, 470), np.float32)
    def constant(t):
        return {"a": np.full((2, *t.shape), 0.7, np.float32),
                "b": np.full((1, t.shape[0] // 4, t.shape[1] // 4), 0.3, np.float32)}

    _, out = drain(predict_tiled(plane, constant, {"a": 1, "b": 4}, tile=128, overlap=32,
                                 multiple=16))
    assert out["a"].shape == (2, 300, 470) and out["b"].shape == (1, 75, 118)
    np.testing.assert_allclose(out["a"], 0.7, rtol=1e-6)
    np.testing.assert_allclose(out["b"], 0.3, rtol=1e-6)


def test_identity_is_seamless_and_unpadded():
    rng = np.random.default_rng(0)
    plane = rng.random((333, 401)).astype(np.float32)
    progress, out = drain(predict_tiled(plane, lambda t: {"x": t[None]}, {"x": 1}, tile=96,
                                        overlap=32, multiple=16))
    np.testing.assert_allclose(out["x"][0], plane, rtol=1e-5, atol=1e-6)
    assert progress[0] == (0, len(progress) - 1) and progress[-1][0] == progress[-1][1]


def test_window_is_positive_and_flat_inside():
    w = blend_window(64, 80, 16)
    assert w.min() > 0 and w[32, 40] == 1.0 and w[0, 0] < w[8, 8] < 1.0


def test_grid_counts():
    assert len(tile_grid((4096, 4096), 1024, 64)) == 25
    assert len(tile_grid((200, 200), 1024, 64)) == 1


def test_balanced_tiles_compute_less_for_the_same_count():
    # a 2048-px side: three 1024-px tiles would overlap by 512 px (2.25x the pixels)
    tiles = tile_grid((2048, 2048), 1024, 64, align=16)
    assert len(tiles) == 9 and {(t.height, t.width) for t in tiles} == {(736, 736)}
    assert sum(t.height * t.width for t in tiles) / 2048**2 < 1.2
    for length, align, overlap in itertools.product((1088, 1536, 2048, 3008, 4096, 8192), (16, 64),
                                                    (64, 128)):
        side = balanced_tile(length, 1024, overlap, align)
        starts = tile_starts(length, side, overlap, align)
        assert side <= 1024 and side % align == 0
        assert len(starts) == len(tile_starts(length, 1024, overlap, align))
        assert starts[-1] + side == length
        assert all(b - a <= side - overlap for a, b in itertools.pairwise(starts))
    assert balanced_tile(700, 1024, 64, 16) == 700


def test_tile_must_fit_multiple():
    with pytest.raises(ValueError, match="multiple"):
        list(predict_tiled(np.zeros((64, 64), np.float32), lambda t: {"x": t[None]}, {"x": 1},
                           tile=100))
