"""Folders of the user's data folder where the plugin keeps what it makes for the user:
never the temp folder, which the system empties on reboot."""

from __future__ import annotations

import os
from pathlib import Path


def _user_folder(env: str, name: str) -> Path:
    """``$env`` when set, else ``<user data folder>/napari-deepcens/<name>`` (per OS)."""
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-deepcens", appauthor=False)) / name


def autosave_root() -> Path:
    """Autosaved versions of hand-corrected labels (``$NAPARI_DEEPCENS_AUTOSAVE_DIR``)."""
    return _user_folder("NAPARI_DEEPCENS_AUTOSAVE_DIR", "autosave")


def results_root() -> Path:
    """Whole-slide results of the napari widget (``$NAPARI_DEEPCENS_RESULTS_DIR``): a slide's
    segmentation can take hours."""
    return _user_folder("NAPARI_DEEPCENS_RESULTS_DIR", "results")
