"""Tiled inference with overlapping tiles blended into seamless full-size maps.

Each tile's output is weighted by a window that ramps up over the overlap and is 1 in the
tile's middle; the sum of weighted outputs is divided by the sum of weights. Where tiles
overlap, the prediction fades from one to the other, so no seam can appear (a constant output
stays exactly constant), and pixels near a tile's edge, where the network sees the least
context, count the least. Instances are found afterwards on the stitched maps, so no nucleus
is ever cut at a tile border. Memory is bounded by the tile size plus the output maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import DeepCeNSError

#: Floor of the blending window, so image-border pixels covered by a single tile keep a weight.
_EPS = 1e-3


@dataclass(frozen=True)
class Tile:
    """Where one tile sits in the (padded) image."""

    y: int
    x: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``, sharing ≥ ``overlap``.

    Starts are multiples of ``align`` (so lower-resolution outputs of stride ``align`` line up
    between tiles); ``length`` and ``tile`` must then be multiples of ``align`` too.
    """
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile - align:
        raise DeepCeNSError(f"a tile of {tile} px is too small for an overlap of {overlap} px "
                            f"between tiles: use tiles of at least {overlap + align + 16} px")
    step = tile - overlap - (align - 1)
    n = int(np.ceil((length - tile) / step)) + 1
    starts = np.linspace(0, length - tile, n) / align
    return sorted(set((starts.round().astype(int) * align).tolist()))


def balanced_tile(length: int, tile: int, overlap: int, align: int = 1) -> int:
    """The smallest tile side (≤ ``tile``, a multiple of ``align``) that covers ``length`` with
    as few tiles as ``tile`` itself would.

    Why: with fixed 1024-px tiles a 2048-px side needs three tiles that overlap by 512 px, so
    the network would compute 2.25× the image's pixels; three balanced 736-px tiles compute
    1.16×. Per-pixel network time barely depends on the tile side, so this is the speed-up.
    """
    if tile >= length:
        return length
    n = len(tile_starts(length, tile, overlap, align))
    lower = -(-(length + (n - 1) * overlap) // n)  # n tiles sharing exactly ``overlap``
    for side in range(-(-lower // align) * align, tile, align):
        if side - align > overlap and len(tile_starts(length, side, overlap, align)) <= n:
            return side
    return tile


def tile_grid(shape: tuple[int, int], tile: int, overlap: int, align: int = 1) -> list[Tile]:
    """All tiles covering an image of ``shape``: per axis, the fewest tiles of at most
    ``tile`` pixels, made as small as that count allows (:func:`balanced_tile`)."""
    h, w = shape
    th, tw = balanced_tile(h, tile, overlap, align), balanced_tile(w, tile, overlap, align)
    return [
        Tile(y, x, th, tw)
        for y in tile_starts(h, th, overlap, align)
        for x in tile_starts(w, tw, overlap, align)
    ]


def blend_window(height: int, width: int, ramp: int) -> np.ndarray:
    """Separable weights: linear ramps of ``ramp`` pixels at every side, 1 inside."""

    def ramp_1d(n: int) -> np.ndarray:
        r = min(ramp, n // 2)
        w = np.ones(n, np.float32)
        if r > 0:
            up = (np.arange(r, dtype=np.float32) + 0.5) / r
            w[:r] = up
            w[n - r :] = up[::-1]
        return np.maximum(w, _EPS)

    return np.outer(ramp_1d(height), ramp_1d(width))


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the last two axes up to multiples of ``multiple``; returns (padded, original)."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        pads = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
        mode = "reflect" if h > ph and w > pw else "symmetric"
        image = np.pad(image, pads, mode=mode)
    return image, (h, w)


def predict_tiled(
    plane: np.ndarray,
    predict_tile: Callable[[np.ndarray], dict[str, np.ndarray]],
    strides: dict[str, int],
    tile: int = 1024,
    overlap: int = 64,
    multiple: int = 16,
) -> Iterator[tuple[int, int] | dict[str, np.ndarray]]:
    """Run ``predict_tile`` over overlapping tiles of ``plane`` and blend its outputs.

    A generator: yields ``(done, total)`` after every tile and finally the stitched maps,
    name → float32 (C, ceil(H/stride), ceil(W/stride)). ``predict_tile`` maps a (h, w) float32
    tile whose sides are multiples of ``multiple`` to name → (C, h/stride, w/stride) arrays,
    with ``strides`` giving each output's stride (each dividing ``multiple``).
    """
    if tile % multiple:
        raise ValueError(f"tile size {tile} must be a multiple of {multiple}")
    padded, (h, w) = pad_to_multiple(plane, multiple)
    tiles = tile_grid(padded.shape, tile, overlap, align=multiple)
    grids = {s: (padded.shape[0] // s, padded.shape[1] // s) for s in set(strides.values())}
    weights = {s: np.zeros(g, np.float32) for s, g in grids.items()}
    out: dict[str, np.ndarray] = {}
    yield 0, len(tiles)
    for i, t in enumerate(tiles, start=1):
        result = predict_tile(np.ascontiguousarray(padded[t.slices]))
        windows = {}
        for s in grids:
            windows[s] = blend_window(t.height // s, t.width // s, overlap // s)
            sl = (slice(t.y // s, (t.y + t.height) // s), slice(t.x // s, (t.x + t.width) // s))
            weights[s][sl] += windows[s]
        for name, values in result.items():
            s = strides[name]
            if name not in out:
                out[name] = np.zeros((values.shape[0], *grids[s]), np.float32)
            sl = (slice(None), slice(t.y // s, (t.y + t.height) // s),
                  slice(t.x // s, (t.x + t.width) // s))
            out[name][sl] += values * windows[s]
        yield i, len(tiles)
    for name, values in out.items():
        s = strides[name]
        values /= weights[s]
        out[name] = values[:, : -(-h // s), : -(-w // s)]
    yield out
