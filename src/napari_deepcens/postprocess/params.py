"""The post-processing knobs shared by every model (each model uses the ones it needs).

* ``fg_threshold``: probability above which a pixel belongs to some object.
* ``seed_threshold``: U-Net only — how far a peak of the distance map must rise above its
  surroundings to seed an object of its own (lower splits more, higher merges more).
* ``score_threshold``: objects scoring below it are dropped: CenterUNet/DeepCeNS detections,
  and U-Net objects when its weights carry an object scorer (0 keeps every object).
* ``min_size``: objects smaller than this many pixels are dropped.
* ``outline_threshold``: models whose weights outline a class on a stain (the cells of the
  two-stain model): where a cell's outline is drawn, from the background (0) to the cell's
  own median brightness (1) in that stain (:mod:`.outlines`); 0 keeps the network's outline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import DeepCeNSError


@dataclass(frozen=True)
class PostprocessParams:
    """Thresholds applied to cached network outputs (cheap to change)."""

    fg_threshold: float = 0.5
    seed_threshold: float = 0.1
    min_size: int = 10
    score_threshold: float = 0.3
    outline_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "seed_threshold", "score_threshold", "outline_threshold",
                     "min_size"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0 or not isinstance(
                    np.asarray(value).item() if hasattr(value, "__array__") else value, (int, float)):
                raise DeepCeNSError(f"{name} must be a number, got {value!r}")
        for name in ("fg_threshold", "seed_threshold", "score_threshold", "outline_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DeepCeNSError(f"{name} must lie in [0, 1], got {value}")
        if not 0 <= self.min_size < float("inf"):  # NaN fails too
            raise DeepCeNSError(f"min_size must be a size ≥ 0 in pixels, got {self.min_size}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PostprocessParams:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
