"""Weights files: one safetensors file holding the tensors and, in its metadata, the model's
name, architecture config, training scale, default thresholds and provenance.

One self-describing file is what users pass around; loading checks every part of it and says
plainly what is wrong (not a weights file, corrupt, another model, another architecture).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .registry import MODELS, build_model, get_preset

FORMAT = "napari-deepcens/1"
_KEY = "deepcens"


@dataclass
class WeightsInfo:
    """Everything in a weights file besides the tensors."""

    model: str
    config: dict[str, Any]
    median_diameter: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Dense models: the object scorer fitted on the model's own predictions
    #: (postprocess.object_score.ObjectScorer.to_dict); empty when there is none.
    object_scorer: dict[str, Any] = field(default_factory=dict)
    #: Diameter (pixels) objects are zoomed to before the network runs; 0: ``median_diameter``.
    #: Measured, not trained: a network may separate nuclei best a little larger than the
    #: median of its training data (``deepcens tune --working-diameter``).
    working_diameter: float = 0.0
    #: Measured, not trained: whether images enlarged ×2.5 or more (nuclei of a few pixels)
    #: are unsharp-masked before the network runs, because that made this network find
    #: more of them (``inference/sharpen.py``; ``deepcens tune --sharpen-enlarged``).
    sharpen_enlarged: bool = False
    #: Measured, not trained: class name → input channel whose stain that class's outlines
    #: are moved onto after the network (``postprocess/outlines.py``; the cells of the
    #: two-stain model follow its cytoplasm channel; ``deepcens tune --stain-outlines``).
    stain_outlines: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        # an empty scorer, an unset working diameter, sharpening off and no stain outlines are
        # left out, so weights without them stay readable by versions that predate them
        optional = ("object_scorer", "working_diameter", "sharpen_enlarged", "stain_outlines")
        fields = {k: v for k, v in self.__dict__.items() if k not in optional or v}
        return json.dumps({"format": FORMAT, **fields}, sort_keys=True)

    @property
    def zoom_diameter(self) -> float:
        """The diameter objects are zoomed to: the working diameter, else the training median."""
        return self.working_diameter or self.median_diameter


def file_sha256(path: str | Path) -> str:
    """Hash of a weights file, recorded in exports as provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(path: str | Path, model: nn.Module, info: WeightsInfo, half: bool = True,
                 overwrite: bool = True) -> Path:
    """Write ``model``'s tensors (fp16 floats by default) and ``info`` atomically to ``path``.
    ``overwrite=False``: refuse if ``path`` exists when the file is put in place (a file made
    there while a long run worked is never replaced)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"not saved: {name} holds numbers that are not finite (the "
                               "training diverged)")
        if half and tensor.is_floating_point():
            small = tensor.half()
            # fp16 ends at 65504: a running variance beyond it would load as inf
            tensor = small if torch.isfinite(small).all() else tensor.float()
        tensors[name] = tensor.contiguous()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_KEY: info.to_json()})
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                raise WeightsError(f"not saved: {path} appeared while this ran; nothing was "
                                   "replaced (choose another file name)") from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise WeightsError(f"not saved: {path} appeared while this ran") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_info(path: str | Path) -> WeightsInfo:
    """Read and check the metadata of a weights file, without building the model."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:
        raise WeightsError(
            f"{path.name} is not a valid safetensors weights file (corrupt or another format)"
        ) from exc
    if _KEY not in metadata:
        raise WeightsError(f"{path.name} is a safetensors file but not napari-deepcens weights")
    try:
        raw = json.loads(metadata[_KEY])
        if raw.pop("format") != FORMAT:
            raise ValueError("format")
        info = WeightsInfo(**raw)
    except Exception as exc:
        raise WeightsError(f"{path.name}: unreadable napari-deepcens metadata") from exc
    for name in ("median_diameter", "working_diameter"):
        value = getattr(info, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise WeightsError(f"{path.name}: its {name.replace('_', ' ')} ({value!r}) is not a "
                               "size in pixels")
    if info.working_diameter and not (info.median_diameter > 0 and 0.5 <= info.working_diameter
                                      / info.median_diameter <= 2.0):
        raise WeightsError(f"{path.name}: its working diameter ({info.working_diameter!r} px) "
                           f"must lie within ×0.5–×2 of its training median "
                           f"({info.median_diameter!r} px), as `deepcens tune` sets it")
    if not isinstance(info.sharpen_enlarged, bool):
        raise WeightsError(f"{path.name}: its sharpen_enlarged ({info.sharpen_enlarged!r}) is not "
                           "true or false")
    if not isinstance(info.model, str) or info.model not in MODELS:  # an architecture, never a preset
        raise WeightsError(f"{path.name}: unknown model {info.model!r}: it must be one of "
                           f"{', '.join(MODELS)}")
    problem = stain_outline_problem(info.stain_outlines, info)
    if problem:
        raise WeightsError(f"{path.name}: its {problem}")
    try:  # refused now, not after a whole epoch of fine-tuning
        from ..postprocess.params import PostprocessParams

        PostprocessParams.from_dict(info.thresholds)
    except Exception as exc:
        raise WeightsError(f"{path.name}: its stored thresholds ({info.thresholds!r}) are not "
                           f"usable: {exc}") from exc
    return info


def stain_outline_problem(outlines: Any, info: WeightsInfo) -> str | None:
    """What is wrong with ``outlines`` (class → input channel) for the model ``info``
    describes, or ``None``: stain outlines are for DeepCeNS and name its classes and channels.
    Shared by :func:`read_info` and ``deepcens tune --stain-outlines``."""
    if isinstance(outlines, dict) and not outlines:
        return None
    try:
        classes = tuple(info.config.get("classes", ("nucleus",)))
        channels = int(info.config.get("in_channels", 1))
    except (AttributeError, TypeError, ValueError):
        return "the model configuration is unreadable"
    if info.model != "deepcens" or not isinstance(outlines, dict) or any(
            not isinstance(c, str) or c not in classes or isinstance(k, bool)
            or not isinstance(k, int) or not 0 <= k < channels for c, k in outlines.items()):
        return (f"stain outlines ({outlines!r}) must map classes of a DeepCeNS model "
                f"({', '.join(map(str, classes))}) to its input channels (0–{channels - 1})")
    return None


def load_weights(
    path: str | Path, expected_model: str | None = None
) -> tuple[nn.Module, WeightsInfo]:
    """Build the network described by ``path`` and load its tensors (as float32).

    Raises :class:`WeightsError` when the file is for another model than ``expected_model`` or
    its tensors do not fit the architecture it declares.
    """
    from safetensors.torch import load_file

    path = Path(path)
    info = read_info(path)
    if expected_model is not None and info.model != get_preset(expected_model).model:
        raise WeightsError(
            f"{path.name} holds weights for model {info.model!r}, not {expected_model!r}: "
            f"choose the {info.model!r} model or other weights"
        )
    try:
        model = build_model(info.model, info.config)
    except Exception as exc:  # hand-edited or foreign metadata: wrong types, unknown keys
        raise WeightsError(f"{path.name}: its model settings {info.config} cannot build a "
                           f"{info.model!r} network ({exc})") from exc
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path.name}: the tensors cannot be read (corrupt file)") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a NaN in a DeepCeNS kills the process in torchvision's deformable convolution
        raise WeightsError(f"{path.name}: {len(broken)} tensor(s) hold numbers that are not "
                           f"finite ({broken[0]}, …): the file is damaged or its training diverged")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path.name}: tensors do not fit the {info.model!r} architecture it declares"
        ) from exc
    return model.eval(), info
