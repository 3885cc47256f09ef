"""Keep a stack's undo history when a program replaces some of its planes.

A re-run or a slider move on one frame of a time-lapse rewrites that frame only. Clearing the
layer's whole undo history then would take Ctrl+Z away from the corrections the user made on
every other frame; keeping it whole would let Ctrl+Z paint old pixels into the new frame. So
only the recorded changes that touch the replaced planes are dropped (or cut down to the
pixels outside them); the rest stay undoable and redoable, in their order.

napari keeps the history in private attributes (``_undo_history`` and ``_redo_history``,
deques of items, each a list of atoms: a ``(indices, before, after)`` tuple from
``data_setitem`` or a masked-paint atom with ``slice_key``, ``mask``, ``old_values`` and
``new_value``). Anything else found there makes this fall back to clearing the history, as
napari itself does when a layer's data is replaced.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable

import numpy as np

log = logging.getLogger(__name__)


#: id(atom) → (atom, the planes it changes): every slider move on a stack checks every atom,
#: and a Link planes edit of a long movie holds tens of millions of pixels; only atoms still
#: in a history are kept here (:func:`forget_planes` prunes)
_TOUCHED: dict[int, tuple[tuple, np.ndarray]] = {}


def _touched(atom: tuple, lead: int, leading: tuple[int, ...]) -> np.ndarray:
    """The flat indices of the planes an indexed atom changes (computed once per atom)."""
    hit = _TOUCHED.get(id(atom))
    if hit is not None and hit[0] is atom and hit[1].size and hit[1].max() < np.prod(leading):
        return hit[1]
    plane = np.ravel_multi_index(tuple(np.asarray(i) for i in atom[0][:lead]), leading)
    touched = np.flatnonzero(np.bincount(plane, minlength=int(np.prod(leading))))
    _TOUCHED[id(atom)] = (atom, touched)
    return touched


def _cut_indexed(atom: tuple, lead: int, leading: tuple[int, ...], gone: np.ndarray):
    """A ``(indices, before, after)`` atom without its pixels in the replaced planes."""
    if not np.isin(_touched(atom, lead, leading), gone).any():
        return atom
    indices, before, after = atom
    indices = tuple(np.asarray(i) for i in indices)
    plane = np.ravel_multi_index(indices[:lead], leading)
    keep = ~np.isin(plane, gone)
    if keep.all():
        return atom
    if not keep.any():
        return None
    before = np.asarray(before)
    before = before[keep] if before.ndim else before
    if isinstance(after, np.ndarray) and after.ndim:
        after = after[keep]
    return tuple(i[keep] for i in indices), before, after


def _cut_masked(atom, lead: int, leading: tuple[int, ...], gone: np.ndarray):
    """A masked-paint atom: kept as it is when its box misses the replaced planes, dropped
    when it lies inside them, otherwise turned into an indexed atom and cut."""
    box = [range(*s.indices(n)) for s, n in zip(atom.slice_key[:lead], leading, strict=True)]
    planes = np.array([np.ravel_multi_index(p, leading) for p in itertools.product(*box)])
    inside = np.isin(planes, gone)
    if not inside.any():
        return atom
    if inside.all():
        return None
    starts = [s.start or 0 for s in atom.slice_key]
    old = np.asarray(atom.old_values)
    mask = np.ones(old.shape, bool) if atom.mask is None else np.asarray(atom.mask)
    before = old[mask] if atom.mask is None else old
    indices = tuple(i + start for i, start in zip(np.nonzero(mask), starts, strict=True))
    return _cut_indexed((indices, before, atom.new_value), lead, leading, gone)


def _cut(atom, lead: int, leading: tuple[int, ...], gone: np.ndarray):
    if hasattr(atom, "slice_key") and hasattr(atom, "old_values"):
        return _cut_masked(atom, lead, leading, gone)
    if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
        return _cut_indexed(atom, lead, leading, gone)
    raise TypeError(f"unknown history atom {type(atom).__name__}")


def forget_planes(layer, planes: Iterable[tuple[int, ...]]) -> None:
    """Drop what ``layer``'s undo and redo histories record of ``planes`` (index tuples over
    the leading axes, e.g. ``(t,)``), keeping every change to the other planes."""
    planes = [tuple(int(i) for i in p) for p in planes]
    if not hasattr(layer, "_undo_history"):
        return
    try:
        lead = len(planes[0]) if planes else 0
        if not planes or lead == 0:  # the whole image was replaced
            raise ValueError("no planes")
        leading = tuple(int(n) for n in layer.data.shape[:lead])
        gone = np.array([np.ravel_multi_index(p, leading) for p in planes])
        histories = {}
        for name in ("_undo_history", "_redo_history"):
            old = getattr(layer, name)
            new = deque(maxlen=old.maxlen)
            for item in old:
                kept = [a for a in (_cut(atom, lead, leading, gone) for atom in item) if a is not None]
                if kept:
                    new.append(kept)
            histories[name] = new
    except (TypeError, ValueError, AttributeError) as error:
        log.debug("undo history cleared (%s)", error)
        layer._reset_history()
        return
    for name, new in histories.items():
        setattr(layer, name, new)
    live = {id(atom) for new in histories.values() for item in new for atom in item}
    for key in [k for k in _TOUCHED if k not in live]:  # no dropped edit kept alive here
        del _TOUCHED[key]


def history_max(layer) -> int:
    """The largest label that an undo or a redo of ``layer`` could write back: new objects
    numbered after it never share a label with an object Ctrl+Z restores."""
    top = 0
    for name in ("_undo_history", "_redo_history"):
        for item in getattr(layer, name, ()):
            for atom in item:
                if hasattr(atom, "old_values"):
                    values = (atom.old_values, atom.new_value)
                elif isinstance(atom, tuple) and len(atom) == 3:
                    values = atom[1:]
                else:
                    continue
                for v in values:
                    v = np.asarray(v)
                    if v.size:
                        top = max(top, int(v.max()))
    return top
