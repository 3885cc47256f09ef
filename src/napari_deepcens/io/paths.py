"""Folders of the user's data folder where the plugin keeps what it makes for the user."""

from __future__ import annotations

import os
from pathlib import Path


def results_root() -> Path:
    """Where the napari widget writes whole-slide results: ``$NAPARI_DEEPCENS_RESULTS_DIR``,
    else the user's data folder. Not the temp folder, which the system empties on reboot: a
    slide's segmentation can take hours."""
    if os.environ.get("NAPARI_DEEPCENS_RESULTS_DIR"):
        return Path(os.environ["NAPARI_DEEPCENS_RESULTS_DIR"]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-deepcens", appauthor=False)) / "results"
