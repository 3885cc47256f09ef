"""Linking the planes of a labels stack: one label per object across planes.

A z-stack's nucleus spans several planes and a time-lapse's nucleus lives over many frames;
segmented plane by plane, each plane numbers its own objects. Linking gives an object the
label of the object it overlaps most in the previous plane, one to one (the matching that
maximises the total IoU, ``scipy.optimize.linear_sum_assignment``), when that IoU reaches
``min_iou``. In a z-stack the linked pieces are 3-D objects; in a time-lapse they are tracks
of nuclei that move less than about half their size a frame (no division or gap handling:
a nucleus that divides or vanishes for a frame starts a new label).
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
    keep = iou >= min_iou
    pa, pb, iou = pa[keep], pb[keep], iou[keep]
    if not pa.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, ri = np.unique(pb, return_inverse=True)
    cols, ci = np.unique(pa, return_inverse=True)
    score = np.zeros((rows.size, cols.size))
    score[ri, ci] = iou
    r, c = linear_sum_assignment(score, maximize=True)
    ok = (score[r, c] > 0) & (score[r, c] >= min_iou)  # the assignment may pair non-overlaps
    return rows[r[ok]], cols[c[ok]]


def link_planes(labels: np.ndarray, axis: int = 0, min_iou: float = MIN_IOU,
                return_map: bool = False):
    """Relabel a (…, Y, X) stack so that an object keeps one label along stack axis ``axis``
    (int32). Any numbering is accepted (each plane may count from 1); objects not linked to
    the previous plane get labels of their own.

    With ``return_map``, also a lookup table old label → new label, for labels that were
    unique across the stack (as :mod:`napari_deepcens.inference.stack` numbers them), to
    carry boxes tied to labels along.
    """
    labels = np.asarray(labels)
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    stack_dims = labels.ndim - 2
    if stack_dims < 1:
        raise ValueError(f"labels of shape {labels.shape} have no planes to link")
    if not -stack_dims <= axis < stack_dims:
        raise ValueError(f"axis {axis} is not a stack axis of labels {labels.shape}")
    moved = np.moveaxis(labels, axis % stack_dims, 0)
    out = np.zeros(moved.shape, np.int32)  # a view's order: written plane by plane below
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64) if return_map else None
    next_id = 1
    for rest in np.ndindex(*moved.shape[1:-2]):
        previous = None
        for k in range(moved.shape[0]):
            ids, inverse = np.unique(moved[(k, *rest)], return_inverse=True)
            inverse = inverse.reshape(moved.shape[-2:])
            first = 1 if ids[0] == 0 else 0  # background keeps 0
            new = np.zeros(ids.size, np.int64)
            new[first:] = np.arange(next_id, next_id + ids.size - first)
            next_id += ids.size - first
            if next_id >= 2**31:
                raise ValueError("more than 2**31 objects: cannot be numbered in int32")
            current = new[inverse]
            if previous is not None and ids.size > first:
                mine, theirs = link_pair(previous, current, min_iou)
                if mine.size:  # ``new`` holds this plane's labels in order: remap them
                    where = np.searchsorted(new[first:], mine) + first
                    new[where] = theirs
                    current = new[inverse]
            if lut is not None:
                lut[ids[first:]] = new[first:]
            out[(k, *rest)] = current
            previous = current
    out = np.ascontiguousarray(np.moveaxis(out, 0, axis % stack_dims))
    return (out, lut) if return_map else out
