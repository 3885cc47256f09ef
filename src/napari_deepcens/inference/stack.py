"""Stacks (time-lapses, z-stacks, any (…, H, W) array): segmented plane by plane.

A microscope's time-lapse or z-series is many 2-D fields of the same sample, so the choices
that depend on the sample are made once, on one reference plane (the middle one), and kept
for every plane: nuclei brightness polarity (inversion, for one-channel models; colour models
never invert), whether the image is noisy enough to be denoised (with the same filter
strength), and the object size. A plane then never comes
out at another zoom than its neighbours, and a nucleus keeps its outline from frame to frame.
Each plane keeps its own intensity normalisation, so bleaching over time does not dim the
late frames.

Labels are numbered across the whole stack (plane after plane), so every object has one
identity in napari and in the exported file; a blank plane gives empty labels, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ..errors import DeepCeNSError, ImageError
from ..io.images import validate_image
from ..postprocess.centers import Detections
from .progress import drain, relay

log = logging.getLogger(__name__)

Progress = tuple[int, int]


def leading_shape(shape: tuple[int, ...], rgb: bool) -> tuple[int, ...]:
    """The stack axes of an array of ``shape``: everything before the plane (and before the
    colour axis when ``rgb``). ``()`` for a single image."""
    plane_dims = 3 if rgb else 2
    if len(shape) < plane_dims:
        raise ImageError(f"image has shape {tuple(shape)}: expected at least a 2-D image")
    return tuple(int(n) for n in shape[: len(shape) - plane_dims])


def is_rgb_array(image: np.ndarray) -> bool:
    """Whether the last axis of a ≥ 3-D array is colour (3 or 4 values, as napari guesses)."""
    return image.ndim >= 3 and image.shape[-1] in (3, 4)


def plane_indices(leading: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every plane's index, in C order (time, then z, …)."""
    return list(np.ndindex(*leading)) if leading else [()]


@dataclass
class StackResult:
    """Per-plane raw outputs and segmentations of a stack.

    ``planes``: plane index → :class:`~.predictor.Segmentation` (``None`` for a blank plane);
    ``raws``: plane index → :class:`~.predictor.RawOutput` (empty when not kept).
    """

    leading: tuple[int, ...]
    plane_shape: tuple[int, int]
    planes: dict[tuple[int, ...], object]
    raws: dict[tuple[int, ...], object] = field(default_factory=dict)
    diameter: float | None = None
    estimated: bool = False
    size_unrecognised: bool = False
    denoised: bool = False
    blank: list[tuple[int, ...]] = field(default_factory=list)
    #: How the maps were made (as :attr:`~.predictor.RawOutput.meta`: model, tta, sharpened…).
    meta: dict = field(default_factory=dict)
    #: The zoom every plane ran at (the size knob's effect; thresholds are tuned per zoom).
    scale: float = 1.0

    def class_names(self) -> list[str]:
        for seg in self.planes.values():
            if seg is not None:
                return list(seg.by_class())
        return []

    def stacked(self, link: bool = False, axis: int = 0, link_gap: int = 0
                ) -> dict[str, tuple[np.ndarray, list[tuple[tuple[int, ...], Detections, object]] | None]]:
        """Class name → (labels of the whole stack, int32; the boxes of each plane as
        (plane index, Detections, labels) or ``None`` for dense models).

        Labels are numbered across planes (box ``i`` of a plane ↔ label ``offset + i + 1``,
        the third item an int offset). ``link``: one label per object along stack axis
        ``axis`` (:func:`~napari_deepcens.postprocess.link.link_planes`: 3-D objects in a
        z-stack, tracks in a time-lapse, bridging up to ``link_gap`` planes where an object was
        missed: ``link.LINK_GAP`` suits time-lapses); the third item is then each box's label
        array.
        """
        out = {}
        for name in self.class_names() or ["nucleus"]:
            labels = np.zeros(self.leading + self.plane_shape, np.int32)
            boxes: list | None = None
            offset = 0
            for index, seg in self.planes.items():
                part = None if seg is None else seg.by_class().get(name)
                if part is None:
                    continue
                plane = part.labels
                n = int(plane.max())
                if n:
                    labels[index] = np.where(plane > 0, plane + offset, 0)
                if part.boxes is not None:
                    boxes = boxes if boxes is not None else []
                    boxes.append((index, part.boxes, offset))
                offset += n
            if link and len(self.leading):
                from ..postprocess.link import link_planes

                labels, lut = link_planes(labels, axis=axis, return_map=True, max_gap=link_gap)
                if boxes is not None:
                    boxes = [(i, d, lut[o + 1 + np.arange(len(d))]) for i, d, o in boxes]
            out[name] = (labels, boxes)
        return out

    def counts(self) -> dict[str, int]:
        """Objects per class over the whole stack."""
        totals: dict[str, int] = {}
        for seg in self.planes.values():
            if seg is None:
                continue
            for name, part in seg.by_class().items():
                totals[name] = totals.get(name, 0) + int(part.labels.max())
        return totals


def _blank(exc: ImageError) -> bool:
    """A plane with nothing in it (a dark frame, a NaN-padded slice): skipped, not an error."""
    return "same value" in str(exc) or "no finite values" in str(exc)


def _reference(planes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Planes to try as the reference, middle first (a time-lapse's first frame is often
    out of focus or before the stain, a z-stack's first slice above the cells)."""
    mid = len(planes) // 2
    order = [mid] + [i for k in range(1, len(planes)) for i in (mid + k, mid - k) if 0 <= i < len(planes)]
    return [planes[i] for i in order]


def segment_stack_iter(
    predictor,
    stack,
    planes: list[tuple[int, ...]] | None = None,
    rgb: bool | None = None,
    diameter: float | None = None,
    estimate: bool = True,
    params=None,
    tta: bool | None = None,
    denoise: bool | None = None,
    tile: int = 1024,
    keep_maps: bool = False,
    reference: tuple[int, ...] | None = None,
) -> Generator[Progress, None, StackResult]:
    """Segment the planes of ``stack`` (a NumPy or Dask array of (…, H, W) or (…, H, W, 3)),
    yielding (tiles done, tiles total) over all planes; return a :class:`StackResult`.

    ``planes``: which plane indices to segment (default: all). The sample-wide choices
    (inversion, denoising, object size) are made on ``reference`` (default: the middle plane
    of ``planes``). ``params``: thresholds for every plane, as for
    :meth:`~.predictor.Predictor.instances` (a dict changes only the thresholds it names;
    default: the model's tuned ones at the zoom chosen). ``keep_maps`` keeps each plane's
    raw network output, for live re-thresholding.
    """
    from .predictor import check_diameter

    rgb = is_rgb_array(stack) if rgb is None else rgb
    leading = leading_shape(stack.shape, rgb)
    plane_shape = tuple(int(n) for n in stack.shape[len(leading): len(leading) + 2])
    planes = plane_indices(leading) if planes is None else [tuple(p) for p in planes]
    if not planes:
        raise DeepCeNSError("no planes to segment")
    for index in planes:
        if len(index) != len(leading) or any(not 0 <= i < n for i, n in zip(index, leading, strict=True)):
            raise DeepCeNSError(f"plane {plane_name(index)} is outside the stack's "
                                f"{' × '.join(map(str, leading))} planes")
    diameter = check_diameter(diameter)

    def read(index: tuple[int, ...]) -> np.ndarray:
        return validate_image(np.asarray(stack[index]))

    # the sample-wide decisions, on the first reference plane that is not blank
    candidates = [reference] if reference is not None else []
    candidates += [p for p in _reference(planes) if p != reference]
    ref_plane = invert = ref_index = None
    for index in candidates:
        try:
            plain = predictor.prepare(read(index), invert=False)
        except ImageError as exc:
            if not _blank(exc):
                raise DeepCeNSError(f"plane {plane_name(index)}: {exc}") from exc
            continue
        if predictor.in_channels == 1:  # as to_plane decides it, once for the whole stack
            invert = bool(np.median(plain[:: max(1, plain.shape[0] // 512),
                                          :: max(1, plain.shape[1] // 512)]) > 0.5)
        ref_plane = predictor.prepare(read(index), invert=invert) if invert else plain
        ref_index = index
        break
    if ref_plane is None:
        what = "the plane is" if len(candidates) == 1 else "every plane of the stack is"
        raise ImageError(f"{what} blank (one value everywhere, or no finite values): nothing "
                         "to segment")
    ref_plane, decision = yield from relay(
        predictor.decide_iter(ref_plane, diameter, estimate, denoise), lambda _step: (0, len(planes)))
    result = StackResult(leading, plane_shape, {}, diameter=decision.diameter,
                         estimated=decision.estimated, size_unrecognised=decision.unrecognised,
                         denoised=decision.denoiser is not None, scale=decision.scale)
    per_plane = 1
    for k, index in enumerate(planes):
        if index == ref_index:  # prepared (and denoised) already
            plane = ref_plane
        else:
            try:
                plane = predictor.prepare(read(index), invert=invert)
            except ImageError as exc:
                if not _blank(exc):
                    raise DeepCeNSError(f"plane {plane_name(index)}: {exc}") from exc
                result.planes[index] = None
                result.blank.append(index)
                continue
        if decision.denoiser is not None and index != ref_index:
            plane = yield from relay(decision.denoiser.apply_iter(plane),
                                     lambda _block, k=k: (k * per_plane, len(planes) * per_plane))

        def overall(step: Progress, k: int = k) -> Progress:
            nonlocal per_plane
            per_plane = max(per_plane, step[1])
            return k * per_plane + step[0], len(planes) * per_plane

        raw = yield from relay(predictor.predict_iter(plane, normalised=True, decision=decision,
                                                      tta=tta, tile=tile), overall)
        result.meta = result.meta or dict(raw.meta)
        result.planes[index] = predictor.instances(raw, params)
        if keep_maps:
            result.raws[index] = raw
    return result


def segment_stack(predictor, stack, **kwargs) -> StackResult:
    """:func:`segment_stack_iter` drained, for scripts."""
    return drain(segment_stack_iter(predictor, stack, **kwargs))


def restack(predictor, result: StackResult, params=None) -> Generator[None, None, dict]:
    """Re-threshold every plane whose maps ``result`` kept (never runs the network); yields
    after each plane so a worker can stop between planes. Returns plane index → (the maps
    used, the new :class:`~.predictor.Segmentation`) and leaves ``result`` alone: the caller
    applies it only where those maps are still the current ones. ``params``: as for
    :meth:`~.predictor.Predictor.instances`."""
    done = {}
    for index, raw in list(result.raws.items()):
        done[index] = (raw, predictor.instances(raw, params))
        yield
    return done


def link_axis(axes: str) -> int:
    """The stack axis along which objects are linked: depth (Z) if the stack has one, else
    time (T), else the first. ``axes``: the stack axes' letters (e.g. ``"TZ"``)."""
    for letter in "ZT":
        if letter in axes:
            return axes.index(letter)
    return 0


def plane_name(index: tuple[int, ...]) -> str:
    """A plane index as people write it: ``2`` or ``2, 5`` (time, z)."""
    return ", ".join(str(i) for i in index)
