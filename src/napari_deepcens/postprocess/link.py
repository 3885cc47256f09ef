"""Linking the planes of a labels stack: one label per object across planes.

A z-stack's nucleus spans several planes and a time-lapse's nucleus lives over many frames;
segmented plane by plane, each plane numbers its own objects. Linking gives an object the
label of the object it overlaps most in the previous plane, one to one (the matching that
maximises the total IoU, ``scipy.optimize.linear_sum_assignment``), when that IoU reaches
``min_iou``. In a z-stack the linked pieces are 3-D objects; in a time-lapse they are tracks
of nuclei that move less than about half their size a frame.

Gap closing (``max_gap``): a nucleus the network misses in a frame (out of focus, dim, merged
with a neighbour) would otherwise come back under a new label. Tracks that end stay open for
``max_gap`` planes, remembered by their last outline; an object that links to nothing in the
previous plane is then matched, one to one and by IoU as above, against those outlines. No
divisions: of two daughters, the one overlapping the mother most keeps her label.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Default overlap for two pieces in consecutive planes to be one object. Low, because the
#: matching is one to one and maximises the total overlap: small nuclei that move a third of
#: their size a frame still overlap little. On 10 val time-lapses drifting 3.6 px a frame
#: (bench/bench_stack.py --link), 0.1 kept 98.7 % of identities (3 labels jumped to another
#: nucleus), 0.25 only 93.1 % (7 jumps), 0.4 79.0 %.
MIN_IOU = 0.1
#: Default gap closing for time-lapses: frames a track may be missing and still go on (not for
#: z-stacks, where a plane with nothing between two nuclei may be two nuclei). On the drifting
#: val movies with 10 % of the predicted objects deleted at random (bench/bench_stack.py
#: --drop 0.1), a nucleus found again after one missing frame kept its label 103 times of 142
#: with 1, 6 times without, and no label came back on another nucleus.
LINK_GAP = 1


def link_pair(previous: np.ndarray, current: np.ndarray, min_iou: float = MIN_IOU
              ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (label in ``current``, label in ``previous``) that are one object: one to one,
    IoU ≥ ``min_iou``, total IoU maximal."""
    both = (previous > 0) & (current > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = previous[both].astype(np.int64), current[both].astype(np.int64)
    width = int(b.max()) + 1
    pairs, inter = np.unique(a * width + b, return_counts=True)
    pa, pb = pairs // width, pairs % width
    area_a = np.bincount(previous[previous > 0].astype(np.int64))
    area_b = np.bincount(current[current > 0].astype(np.int64))
    iou = inter / (area_a[pa] + area_b[pb] - inter)
    return _assign(pb, pa, iou, min_iou)


def _assign(mine: np.ndarray, theirs: np.ndarray, iou: np.ndarray, min_iou: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs among the candidate pairs (``mine``, ``theirs``) with their IoU:
    IoU ≥ ``min_iou``, total IoU maximal."""
    keep = iou >= min_iou
    mine, theirs, iou = mine[keep], theirs[keep], iou[keep]
    if not mine.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, ri = np.unique(mine, return_inverse=True)
    cols, ci = np.unique(theirs, return_inverse=True)
    score = np.zeros((rows.size, cols.size))
    score[ri, ci] = iou
    r, c = linear_sum_assignment(score, maximize=True)
    ok = (score[r, c] > 0) & (score[r, c] >= min_iou)  # the assignment may pair non-overlaps
    return rows[r[ok]], cols[c[ok]]


def planes_first(labels: np.ndarray, axis: int) -> np.ndarray:
    """``labels`` (…, Y, X) with stack axis ``axis`` moved to the front (a view); a clear
    ValueError for a single plane or an axis that is not a stack axis."""
    stack_dims = labels.ndim - 2
    if stack_dims < 1:
        raise ValueError(f"labels of shape {labels.shape} have no planes to link")
    if not -stack_dims <= axis < stack_dims:
        raise ValueError(f"axis {axis} is not a stack axis of labels {labels.shape}")
    return np.moveaxis(labels, axis % stack_dims, 0)


def link_planes(labels: np.ndarray, axis: int = 0, min_iou: float = MIN_IOU,
                return_map: bool = False, max_gap: int = 0):
    """Relabel a (…, Y, X) stack so that an object keeps one label along stack axis ``axis``
    (int32). Any numbering is accepted (each plane may count from 1); objects not linked to
    the previous plane get labels of their own — or the label of a track that ended at most
    ``max_gap`` planes before (gap closing; 0: off).

    With ``return_map``, also a lookup table old label → new label, for labels that were
    unique across the stack (as :mod:`napari_deepcens.inference.stack` numbers them), to
    carry boxes tied to labels along.
    """
    labels = np.asarray(labels)
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be 0 or more planes, got {max_gap}")
    stack_dims = labels.ndim - 2
    moved = planes_first(labels, axis)
    out = np.zeros(moved.shape, np.int32)  # a view's order: written plane by plane below
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64) if return_map else None
    next_id = 1
    for rest in np.ndindex(*moved.shape[1:-2]):
        previous = None
        gaps = _OpenTracks() if max_gap else None
        for k in range(moved.shape[0]):
            ids, inverse = np.unique(moved[(k, *rest)], return_inverse=True)
            inverse = inverse.reshape(moved.shape[-2:])
            first = 1 if ids[0] == 0 else 0  # background keeps 0
            new = np.zeros(ids.size, np.int64)
            fresh = next_id  # labels from here on are this plane's unlinked objects
            new[first:] = np.arange(next_id, next_id + ids.size - first)
            next_id += ids.size - first
            if next_id >= 2**31:
                raise ValueError("more than 2**31 objects: cannot be numbered in int32")
            current = new[inverse]
            # an unlinked object's label ``fresh + j`` sits at ``new[first + j]``
            if previous is not None and ids.size > first:
                mine, theirs = link_pair(previous, current, min_iou)
                if mine.size:
                    new[mine - fresh + first] = theirs
                    current = new[inverse]
            if previous is not None and gaps is not None:
                gaps.expire(k - 1 - max_gap)
                if ids.size > first:
                    mine, theirs = gaps.match(np.where(current >= fresh, current, 0), min_iou)
                    if mine.size:
                        new[mine - fresh + first] = theirs
                        current = new[inverse]
                gaps.update(previous, current, k - 1)
            if lut is not None:
                lut[ids[first:]] = new[first:]
            out[(k, *rest)] = current
            previous = current
    out = np.ascontiguousarray(np.moveaxis(out, 0, axis % stack_dims))
    return (out, lut) if return_map else out


class _OpenTracks:
    """Tracks that ended, each remembered by its last outline (flat pixel indices, kept apart:
    outlines of tracks that ended in different planes may overlap) and the plane it was seen
    in, for gap closing in :func:`link_planes`."""

    def __init__(self) -> None:
        self.tracks: dict[int, tuple[int, np.ndarray]] = {}

    def expire(self, oldest: int) -> None:
        """Forget the tracks last seen before plane ``oldest``."""
        for label in [label for label, (plane, _) in self.tracks.items() if plane < oldest]:
            del self.tracks[label]

    def match(self, unlinked: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (unlinked label, open track) as :func:`link_pair` makes them; the tracks
        matched are closed (they go on in this plane)."""
        if not self.tracks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        flat = unlinked.ravel()
        area = np.bincount(flat[flat > 0].astype(np.int64))
        mine, theirs, iou = [], [], []
        for label, (_, pixels) in self.tracks.items():
            under = flat[pixels]
            under = under[under > 0].astype(np.int64)
            if not under.size:
                continue
            ids, inter = np.unique(under, return_counts=True)
            mine.append(ids)
            theirs.append(np.full(ids.size, label, np.int64))
            iou.append(inter / (pixels.size + area[ids] - inter))
        if not mine:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        mine, theirs = _assign(np.concatenate(mine), np.concatenate(theirs), np.concatenate(iou),
                               min_iou)
        for label in theirs.tolist():
            del self.tracks[label]
        return mine, theirs

    def update(self, previous: np.ndarray, current: np.ndarray, plane: int) -> None:
        """Open the tracks of ``previous`` (plane ``plane``) that do not go on in ``current``."""
        ended = np.setdiff1d(np.unique(previous), np.unique(current))
        ended = ended[ended > 0]
        if not ended.size:
            return
        flat = previous.ravel()
        where = np.flatnonzero(np.isin(flat, ended))
        order = np.argsort(flat[where], kind="stable")
        where = where[order]
        starts = np.searchsorted(flat[where], ended)
        for label, pixels in zip(ended.tolist(), np.split(where, starts[1:]), strict=True):
            self.tracks[label] = (plane, pixels)
