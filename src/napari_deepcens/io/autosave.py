"""Autosaved copies of hand-corrected labels, so a crash or a closed window loses nothing.

Corrections are hours of a biologist's work. napari keeps them in memory only; this store
writes each edited Labels layer to a private folder (never next to the user's own files, so
nothing the user saved is touched) as a compressed TIFF carrying its metadata, written
atomically (temporary file + rename: a crash mid-write leaves the previous version intact).

Layout: ``<root>/<session>/<layer name>-<layer key>__<time>.tif``, one folder per napari
session so a new session never rotates away the versions of a crashed one, and one key per
layer object so two layers of one name keep their own versions; the newest ``keep`` versions
of each layer are kept, plus one per ``spacing_s`` before those, and sessions older than
``max_age_days`` are removed (only folders that are sessions of this store).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import tifffile

from .paths import autosave_root

log = logging.getLogger(__name__)

SUFFIX = ".tif"
_TIME_FORMAT = "%Y%m%d-%H%M%S-%f"


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


_SESSION = re.compile(r"\d{8}-\d{6}-\d{6}-\d+")
_VERSION = re.compile(r"(?P<key>.+)__(?P<stamp>\d{8}-\d{6}-\d{6})")


class AutosaveStore:
    """Versions of edited labels on disk, per session and layer.

    Parameters
    ----------
    root : the folder (default :func:`~napari_deepcens.io.paths.autosave_root`).
    keep : the newest versions kept per layer; of older ones, one per ``spacing_s`` seconds
        is kept as well (at most ``keep`` more), so an edit regretted an hour later can
        still be undone from here.
    max_age_days : whole sessions older than this are deleted when a store opens.
    session : this session's folder name (default: start time to the microsecond and
        process id).
    """

    def __init__(self, root: str | Path | None = None, keep: int = 10,
                 max_age_days: float = 14.0, session: str | None = None,
                 spacing_s: float = 600.0) -> None:
        self.root = Path(root) if root is not None else autosave_root()
        self.keep = max(1, int(keep))
        self.max_age_days = float(max_age_days)
        self.spacing_s = float(spacing_s)
        self.session = session or f"{datetime.now().strftime(_TIME_FORMAT)}-{os.getpid()}"
        self._cache: dict[Path, tuple[float, AutosaveEntry | None]] = {}

    @property
    def folder(self) -> Path:
        return self.root / self.session

    # ------------------------------------------------------------------ writing
    def save(self, layer: str, labels: np.ndarray, meta: dict | None = None,
             key: str | None = None) -> AutosaveEntry:
        """Write one version of ``labels`` (atomically) and thin out older ones.

        ``key``: identifies one layer object (default: its name). Two layers of the same
        name, e.g. a deleted "Labels" and the next new "Labels", must not rotate each
        other's versions away.
        """
        labels = np.asarray(labels)
        now = time.time()
        stamp = datetime.fromtimestamp(now).strftime(_TIME_FORMAT)
        self.folder.mkdir(parents=True, exist_ok=True)
        base = _safe(layer) + (f"-{key}" if key else "")
        path = self.folder / f"{base}__{stamp}{SUFFIX}"
        n_objects = int(np.unique(labels[labels != 0]).size) if labels.size else 0
        info = {"layer": layer, "saved": now, "session": self.session, "dtype": str(labels.dtype),
                "shape": list(labels.shape), "n_objects": n_objects, "meta": meta or {}}
        tmp = path.with_name(path.name + ".part")
        tifffile.imwrite(tmp, _compact(labels), compression="zlib", metadata=None,
                         description=json.dumps(info, default=str))
        os.replace(tmp, path)
        self._rotate(base)
        return AutosaveEntry(path, layer, now, self.session, tuple(labels.shape), n_objects,
                             str(labels.dtype), info["meta"])

    def _rotate(self, base: str) -> None:
        versions = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            match = _VERSION.fullmatch(path.stem)
            if match and match["key"] == base:
                stamp = datetime.strptime(match["stamp"], _TIME_FORMAT).timestamp()
                versions.append((stamp, path))
        versions.sort(reverse=True)  # newest first
        kept, buckets = 0, set()
        for stamp, path in versions[self.keep:]:
            bucket = int(stamp // self.spacing_s)
            if bucket not in buckets and kept < self.keep:  # one per spacing, older history
                buckets.add(bucket)
                kept += 1
            else:
                path.unlink(missing_ok=True)

    def prune(self) -> int:
        """Delete sessions older than ``max_age_days`` (never this one); returns how many.

        Only folders that are autosave sessions (named so, holding nothing but autosave
        files) are touched, whatever else the folder holds.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - self.max_age_days * 86400
        removed = 0
        for folder in self.root.iterdir():
            if not (folder.is_dir() and _SESSION.fullmatch(folder.name)) or folder == self.folder:
                continue
            try:
                files = list(folder.iterdir())
                ours = all(f.is_file() and _VERSION.fullmatch(f.name.removesuffix(".part")
                                                              .removesuffix(SUFFIX)) for f in files)
                newest = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
            except OSError:  # another napari pruning or saving there now
                continue
            if ours and newest < cutoff:
                for f in files:
                    f.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError:
                    continue
                removed += 1
        return removed

    # ------------------------------------------------------------------ reading
    def entries(self, session: str | None = None) -> list[AutosaveEntry]:
        """Every readable version (of one session, or all), newest first; broken files skipped.
        Each file's header is read once (cached by modification time)."""
        if not self.root.is_dir():
            return []
        folders = [self.root / session] if session else [
            p for p in self.root.iterdir() if p.is_dir() and _SESSION.fullmatch(p.name)]
        found = []
        for folder in folders:
            for path in folder.glob(f"*{SUFFIX}"):
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue
                cached = self._cache.get(path)
                if cached is None or cached[0] != mtime:
                    cached = self._cache[path] = (mtime, read_entry(path))
                if cached[1] is not None:
                    found.append(cached[1])
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
