"""napari sample data: three small nucleus images from the DSB2018 validation split (CC0), and
a two-stain field of U2OS cells (nuclei + cytoplasm) for the cells + nuclei model."""

from __future__ import annotations

from importlib import resources

import numpy as np

_SOURCE = "DSB2018 stage-1 (BBBC038), CC0"


def _load(name: str) -> np.ndarray:
    import imageio.v3 as iio

    path = resources.files("napari_deepcens") / "sample_data" / f"{name}.png"
    with resources.as_file(path) as file:
        image = iio.imread(file)
    if image.ndim == 3 and image.shape[-1] == 4:  # drop the opaque alpha of DSB PNGs
        image = image[..., :3]
    return image


def _layer(name: str, title: str) -> list[tuple]:
    image = _load(name)
    return [(image, {"name": title, "rgb": image.ndim == 3, "metadata": {"source": _SOURCE}},
             "image")]


def fluorescence() -> list[tuple]:
    """Fluorescent nuclei (DAPI/Hoechst-like), 520×696."""
    return _layer("nuclei_fluorescence", "nuclei fluorescence")


def histology() -> list[tuple]:
    """H&E-stained tissue, nuclei dark purple, 256×320."""
    return _layer("nuclei_histology", "nuclei histology")


def brightfield() -> list[tuple]:
    """Brightfield nuclei, a 512×512 crop."""
    return _layer("nuclei_brightfield", "nuclei brightfield")


_U2OS = ("U2OS cells, Aits lab (github.com/Aitslab/imageanalysis, commit 1664791; cite the "
         "source), training split of the bundled cells + nuclei model")


def cells() -> list[tuple]:
    """U2OS cells, 640×640: a Hoechst (nuclei) and a cytoplasm layer, as napari opens a
    two-channel image; pick the first as image and the second as cytoplasm for the
    *Cells + nuclei* model."""
    image = _load("cells_u2os")
    return [(image[..., 0], {"name": "nuclei (Hoechst)", "colormap": "blue", "blending": "additive",
                             "metadata": {"source": _U2OS}}, "image"),
            (image[..., 1], {"name": "cytoplasm", "colormap": "green", "blending": "additive",
                             "metadata": {"source": _U2OS}}, "image")]
