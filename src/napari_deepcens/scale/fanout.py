"""``deepcens segment`` over folders, globs and thousands of files, one task per file.

Every file is one task on the Dask client (the same local cluster or scheduler the chunked
path uses); large images and Zarr stores go through :mod:`.chunked` instead, one after the
other, each spread over the whole cluster. Outputs are written atomically and existing ones
skipped, so a killed run started again resumes where it stopped; a file that cannot be read
is reported and the run goes on.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeepCeNSError
from ..io.images import IMAGE_SUFFIXES
from ..wording import count_of, counts_of

log = logging.getLogger(__name__)

#: Images with more pixels than this go through the chunked path (64 MP: 8k × 8k).
CHUNKED_ABOVE = 64_000_000


def _stem(path: Path) -> str:
    """The name without its image suffix (``.ome.tif`` and ``.ome.zarr`` as one): dots
    inside a name (``2021.05.03_well1.tif``) belong to it."""
    name = path.name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name[: -len(path.suffix)] if path.suffix else name


def _is_input(path: Path) -> bool:
    """An image to segment: not a label image, one of our own outputs, nor a hidden file
    (macOS's ``._name.png`` companions, editors' backups)."""
    if path.name.startswith("."):
        return False
    stem = _stem(path)
    return not (stem == "labels" or stem.startswith("labels_") or stem.endswith("_labels"))


def _tree(root: Path) -> list[Path]:
    """Every file and folder below ``root``, sorted, following linked folders (each real
    folder once: a link loop ends), not entering hidden folders or Zarr stores."""
    from .lazy import is_zarr

    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [base / d for d in dirnames] + [base / f for f in filenames]
        dirnames[:] = sorted(d for d in dirnames if not (d.endswith(".zarr") or is_zarr(base / d)))
    return sorted(found)


def expand_inputs(items: Iterable[Path], outputs: Path | None = None) -> list[Path]:
    """Files, folders (searched recursively; ``.zarr`` stores count as one image) and glob
    patterns → the images, sorted, each once. A pattern or folder matching nothing is an error.
    Folders and patterns skip label images, our own outputs and anything inside ``outputs``
    (the output folder, when it lies inside an input folder: a rerun resumes, it does not
    segment its own results)."""
    from .lazy import is_zarr

    skip = Path(outputs).resolve() if outputs is not None else None

    def wanted(p: Path, base: Path) -> bool:
        if not (((p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or is_zarr(p)) and _is_input(p)):
            return False
        if p.name.endswith(".zarr") and p.with_name(p.name[: -len(".zarr")] + "_objects.csv").is_file():
            return False  # <stem>.zarr beside <stem>_objects.csv: a chunked run's output
        # an output folder inside the scanned one holds results, not images to segment
        return not (skip is not None and skip != base.resolve() and p.resolve().is_relative_to(skip))

    found: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir() and not is_zarr(item):
            tree = _tree(item)
            hits = [p for p in tree if wanted(p, item)]
            if not hits:
                raise DeepCeNSError(f"no images in folder {item}")
            found.extend(hits)
            _say_left_out(tree, skip)
        elif not item.exists() and any(ch in str(item) for ch in "*?["):
            hits = [p for p in map(Path, sorted(glob.glob(str(item), recursive=True)))
                    if wanted(p, p.parent)]
            if not hits:
                raise DeepCeNSError(f"no images match {item}")
            found.extend(hits)
        else:
            found.append(item)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p, None)
    return list(unique)


def _say_left_out(tree: list[Path], outputs: Path | None) -> None:
    """Images named ``<name>_labels.*`` are left out of a folder as label images; one
    without its ``<name>.*`` beside it may be the user's own image (``DAPI_labels.tif``): say
    so, rather than leave it out unseen."""
    def base(stem: str) -> str:
        return stem[: -len(".ome")] if stem.endswith(".ome") else stem

    stems = {(p.parent, base(_stem(p))) for p in tree if p.suffix.lower() in IMAGE_SUFFIXES}

    def has_image(p: Path) -> bool:  # x_labels.tif, or a class's x_cell_labels.tif, beside x.*
        name = _stem(p)[: -len("_labels")]
        return any((p.parent, base(n)) in stems for n in (name, name.rsplit("_", 1)[0]))

    alone = [p for p in tree if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
             and _stem(p).endswith("_labels") and not has_image(p)
             and not (outputs is not None and p.resolve().is_relative_to(outputs))]
    if alone:
        names = ", ".join(p.name for p in alone[:3]) + (", …" if len(alone) > 3 else "")
        log.warning("left out %d file(s) named like label images, with no image of their name "
                    "beside them (%s): give such a file by name to segment it", len(alone), names)


def needs_chunks(path: Path, above: int = CHUNKED_ABOVE) -> bool:
    """Whether ``path`` goes through the chunked path: a Zarr store, or a TIFF above ``above``
    pixels (read from its header only). Unreadable files answer False and fail later, alone."""
    from .lazy import is_zarr, open_tiff

    if is_zarr(path):
        return True
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        try:
            return open_tiff(path).pixels > above
        except DeepCeNSError:
            return False
    return False


@dataclass(frozen=True)
class FileJob:
    """One small file for a worker."""

    path: str
    stem: str
    output: str
    diameter: float | None
    tile: int
    overrides: tuple[tuple[str, float], ...]
    overwrite: bool
    channel: int | None = None
    link: bool = False
    cyto_channel: int | None = None
    link_gap: int | None = None


def segment_file(spec, job: FileJob) -> tuple[str, bool, str]:
    """Task: read, segment and write one file. Returns (path, ok, message); user errors come
    back as messages (the run goes on), so workers log no tracebacks for a corrupt file."""
    from ..inference.stack import segment_stack
    from ..io.export import write_segmentation, write_stack_segmentation
    from ..io.images import check_stains, read_stack
    from ..postprocess.params import PostprocessParams
    from .chunked import _limit_torch_threads

    name = Path(job.path).name
    try:
        _limit_torch_threads()
        predictor = spec.load()
        stack = read_stack(job.path, job.channel, job.cyto_channel)
        check_stains(stack, predictor.in_channels, Path(job.path).name)
        if stack.leading:  # a time-lapse or z-stack: plane by plane, one labels stack
            result = segment_stack(predictor, stack.data, rgb=stack.rgb, diameter=job.diameter,
                                   params=dict(job.overrides) or None, tta=spec.tta,
                                   denoise=spec.denoise, tile=job.tile)
            objects: dict[str, int] = {}
            written = write_stack_segmentation(job.output, job.stem, result, stack.axes,
                                               overwrite=job.overwrite, link=job.link,
                                               objects=objects, link_gap=job.link_gap)
            counts = counts_of(result.counts())
            if job.link:
                counts = ", ".join(f"{result.counts()[c]} {c} pieces linked into {count_of(n, 'object')}"
                                   for c, n in objects.items())
            noisy = " (denoised)" if result.denoised else ""
            return job.path, True, (f"{name}: {len(result.planes)} planes: {counts}{noisy} -> "
                                    f"{written[-1].parent}")
        raw = predictor.predict(stack.data, diameter=job.diameter, tile=job.tile, tta=spec.tta,
                                denoise=spec.denoise)
        params = PostprocessParams(**{**predictor.default_params(raw.scale).to_dict(), **dict(job.overrides)})
        seg = predictor.instances(raw, params)
        written = write_segmentation(job.output, job.stem, seg, overwrite=job.overwrite)
        counts = counts_of({n: int(p.labels.max()) for n, p in seg.by_class().items()})
        noisy = " (denoised)" if raw.meta.get("denoised") else ""
        return job.path, True, f"{name}: {counts}{noisy} -> {written[-1].parent}"
    except DeepCeNSError as exc:
        return job.path, False, str(exc)
    except MemoryError:
        return job.path, False, "out of memory: segment it alone, or it goes through the chunked path"


def run_files(client, spec, jobs: list[FileJob]):
    """Submit every job; yield (path, ok, message) as they finish (any order)."""
    from distributed import as_completed

    futures = {client.submit(segment_file, spec, job, pure=False): job for job in jobs}
    try:
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # a worker died, or a bug: report it, keep going
                yield job.path, False, f"unexpected error ({type(exc).__name__}): {exc}"
    finally:
        client.cancel([f for f in futures if not f.done()])
