"""Autosaved copies of hand-corrected labels, so a crash or a closed window loses nothing.

Corrections are hours of a biologist's work. napari keeps them in memory only; this store
writes each edited Labels layer to a private folder (never next to the user's own files, so
nothing the user saved is touched) as a compressed TIFF carrying its metadata, written
atomically (temporary file + rename: a crash mid-write leaves the previous version intact).

Layout: ``<root>/<session>/<layer>__<time>.tif``, one folder per napari session so a new
session never rotates away the versions of a crashed one; the newest ``keep`` versions of
each layer are kept, and sessions older than ``max_age_days`` are removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import tifffile

log = logging.getLogger(__name__)

ENV_DIR = "NAPARI_DEEPCENS_AUTOSAVE_DIR"
SUFFIX = ".tif"
_TIME_FORMAT = "%Y%m%d-%H%M%S-%f"


def default_root() -> Path:
    """``$NAPARI_DEEPCENS_AUTOSAVE_DIR``, else the user's data folder (per OS conventions)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-deepcens", appauthor=False)) / "autosave"


def _safe(name: str) -> str:
    """A file-name-safe version of a layer name (kept readable)."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name, flags=re.UNICODE).strip(" .")
    return (cleaned or "labels")[:80]


def _compact(labels: np.ndarray) -> np.ndarray:
    """The smallest unsigned type that holds the labels (what Fiji and QuPath read)."""
    if labels.size == 0 or labels.dtype.kind not in "iu" or labels.min() < 0:
        return labels
    top = int(labels.max())
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    return labels


@dataclass(frozen=True)
class AutosaveEntry:
    """One autosaved version of one layer."""

    path: Path
    layer: str
    saved: float  # seconds since the epoch
    session: str
    shape: tuple[int, ...]
    n_objects: int
    dtype: str = "uint32"  # the layer's own dtype, restored on load
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def when(self) -> str:
        """Local date and time of the save."""
        return datetime.fromtimestamp(self.saved).strftime("%Y-%m-%d %H:%M:%S")

    def describe(self) -> str:
        """What the user sees in the restore list."""
        size = "×".join(str(s) for s in self.shape)
        return f"{self.when} · {self.layer} · {self.n_objects} objects · {size}"


class AutosaveStore:
    """Versions of edited labels on disk, per session and layer.

    Parameters
    ----------
    root : the folder (default :func:`default_root`).
    keep : versions kept per layer and session; older ones are deleted as new ones arrive.
    max_age_days : whole sessions older than this are deleted when a store opens.
    session : this session's folder name (default: start time and process id).
    """

    def __init__(self, root: str | Path | None = None, keep: int = 10,
                 max_age_days: float = 14.0, session: str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.keep = max(1, int(keep))
        self.max_age_days = float(max_age_days)
        self.session = session or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    @property
    def folder(self) -> Path:
        return self.root / self.session

    # ------------------------------------------------------------------ writing
    def save(self, layer: str, labels: np.ndarray, meta: dict | None = None) -> AutosaveEntry:
        """Write one version of ``labels`` (atomically) and drop this layer's oldest ones."""
        labels = np.asarray(labels)
        now = time.time()
        stamp = datetime.fromtimestamp(now).strftime(_TIME_FORMAT)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{_safe(layer)}__{stamp}{SUFFIX}"
        n_objects = int(np.unique(labels[labels != 0]).size) if labels.size else 0
        info = {"layer": layer, "saved": now, "session": self.session, "dtype": str(labels.dtype),
                "shape": list(labels.shape), "n_objects": n_objects, "meta": meta or {}}
        tmp = path.with_name(path.name + ".part")
        tifffile.imwrite(tmp, _compact(labels), compression="zlib", metadata=None,
                         description=json.dumps(info, default=str))
        os.replace(tmp, path)
        self._rotate(layer)
        return AutosaveEntry(path, layer, now, self.session, tuple(labels.shape), n_objects,
                             str(labels.dtype), info["meta"])

    def _rotate(self, layer: str) -> None:
        prefix = f"{_safe(layer)}__"
        versions = sorted(p for p in self.folder.glob(f"*{SUFFIX}") if p.name.startswith(prefix)
                          and re.fullmatch(r"\d{8}-\d{6}-\d{6}", p.stem[len(prefix):]))
        for old in versions[: -self.keep]:
            old.unlink(missing_ok=True)

    def prune(self) -> int:
        """Delete sessions older than ``max_age_days`` (never this one); returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - self.max_age_days * 86400
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.name != self.session:
                newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
                if newest < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed

    # ------------------------------------------------------------------ reading
    def entries(self, session: str | None = None) -> list[AutosaveEntry]:
        """Every readable version (of one session, or all), newest first; broken files skipped."""
        if not self.root.is_dir():
            return []
        folders = [self.root / session] if session else [
            p for p in self.root.iterdir() if p.is_dir()]
        found = []
        for folder in folders:
            for path in folder.glob(f"*{SUFFIX}"):
                entry = read_entry(path)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: e.saved, reverse=True)

    @staticmethod
    def load(entry: AutosaveEntry) -> np.ndarray:
        """The labels of one version, in the dtype they were edited in."""
        return tifffile.imread(entry.path).astype(entry.dtype, copy=False)


def read_entry(path: Path) -> AutosaveEntry | None:
    """The entry of one autosave file, or None when it is not one (or is damaged)."""
    try:
        with tifffile.TiffFile(path) as tif:
            info = json.loads(tif.pages[0].description)
        return AutosaveEntry(Path(path), str(info["layer"]), float(info["saved"]),
                             str(info["session"]), tuple(int(s) for s in info["shape"]),
                             int(info["n_objects"]), str(info["dtype"]), dict(info.get("meta") or {}))
    except Exception as exc:  # a damaged or foreign file must not stop the listing
        log.warning("skipping %s: not a readable autosave (%s)", path, exc)
        return None
