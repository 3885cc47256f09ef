"""Shared fixtures: small real images from the DSB2018 validation split (tests/data)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from napari_deepcens.io.images import read_image, read_labels
from napari_deepcens.io.layout import list_samples

DATA = Path(__file__).parent / "data"
DSB_VAL = DATA / "dsb_val"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# widgets autosave edited labels; tests must not write into the user's data folder
os.environ["NAPARI_DEEPCENS_AUTOSAVE_DIR"] = tempfile.mkdtemp(prefix="deepcens-autosave-")
os.environ["NAPARI_DEEPCENS_RESULTS_DIR"] = tempfile.mkdtemp(prefix="deepcens-results-")


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The messages logger ``name`` emits inside the block. Read from the logger itself:
    pytest's logging plugin (on in CI) keeps records off stderr, and caplog is not used."""
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    log = logging.getLogger(name)
    log.addHandler(handler)
    try:
        yield said
    finally:
        log.removeHandler(handler)


@pytest.fixture(scope="session")
def dsb_samples():
    """(id, image, labels, modality) of the bundled validation crops."""
    return [
        (s.id, read_image(s.image), read_labels(s.labels), s.modality)
        for s in list_samples(DSB_VAL)
    ]


@pytest.fixture(scope="session")
def fluorescence(dsb_samples):
    """A 256×256 fluorescence image with 53 nuclei and its labels."""
    return next((img, lab) for _id, img, lab, mod in dsb_samples
                if mod == "fluorescence" and img.shape == (256, 256))


@pytest.fixture(scope="session")
def predictor():
    """The bundled U-Net on the CPU (loaded once per session)."""
    from napari_deepcens import Predictor

    return Predictor.from_name("unet", device="cpu")


def disc_labels(shape, centres, radius) -> np.ndarray:
    """Label image of discs (label i+1 at centres[i])."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def shrunk_by_area(name: str, factor: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A val crop as a lower magnification sees it: each pixel averages its area (image) and
    the annotation sampled at pixel centres (labels)."""
    import torch
    import torch.nn.functional as F

    from napari_deepcens.io.images import to_plane

    sample = next(s for s in list_samples(DSB_VAL) if s.id.startswith(name))
    plane = to_plane(read_image(sample.image)).astype(np.float32)
    labels = read_labels(sample.labels)
    size = (round(plane.shape[0] * factor), round(plane.shape[1] * factor))
    img = F.interpolate(torch.from_numpy(plane)[None, None], size=size, mode="bilinear",
                        align_corners=False, antialias=True)[0, 0].numpy()
    lab = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=size,
                        mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return img, lab


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config):
    """Leave without the interpreter's teardown. Qt, dask's worker threads and torch free their
    objects there in no fixed order; once in CI (session 15) that crashed the process with a
    segmentation fault after every test had passed and the summary was printed, which turned
    a green run red. The result is reported first; the exit status is pytest's own."""
    import sys

    if not _EXIT_STATUS:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])


def boxes_and_wait(qtbot, correct) -> None:
    """Recompute rotated boxes runs in a thread worker (the GUI never waits for it): wait."""
    correct.update_boxes()
    qtbot.waitUntil(lambda: correct._boxes_worker is None, timeout=60_000)


def reports(correct) -> list[str]:
    """Every message the Correct tab reports from now on: its status line may be written by
    the autosaver a moment later ("autosaved …"), so tests read the reports themselves."""
    said: list[str] = []
    report, fail = correct._report, correct._fail
    def mine(message: str) -> None:
        if not message.startswith("autosaved "):  # the autosaver's, not the tool's
            said.append(message)
        report(message)

    correct._report = mine
    correct._fail = lambda exc: (said.append(str(exc)), fail(exc))
    return said
