"""Edges restored on images enlarged for nuclei of a few pixels.

Such an image is enlarged three to eight times to the network's working size. A microscope at
low magnification (or binning) averages each pixel's area, so, enlarged, its nuclei are
blurrier than any the network learnt from, and it loses them: val shrunk ×0.25 by area
averaging, U-Net AP@0.5 0.674 against 0.735 shrunk by point sampling. An unsharp mask on the
small grid before enlarging restores the edges (0.705; DSB 0.422 → 0.466). Images that are
sharp already (point sampled) lose a little (0.735 → 0.729). Letting the network choose, by
how sure it is of each input on a crop, did no better (0.727 / 0.705) for two more passes.
Below ×2.5 nothing changes: the unscaled validation images enlarge up to ×2.3, and there the
mask made no difference worth having. Weights opt in (``WeightsInfo.sharpen_enlarged``): the
gain is measured per network. The size estimate's ladder sees its crops unsharpened, as it
was measured (estimated / true diameter 1.13 on area-shrunk ×0.25).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Zoom from which enlarged images are sharpened.
SHARPEN_FROM = 2.5
#: Unsharp mask: ``x + AMOUNT·(x − G_σ * x)``, σ in pixels of the small (unenlarged) image.
AMOUNT = 0.5
SIGMA = 1.0


def unsharp(plane: np.ndarray, amount: float = AMOUNT, sigma: float = SIGMA) -> np.ndarray:
    """``plane`` (H, W) or (C, H, W) with its edges steepened; a constant field stays constant."""
    lead = (0,) * (plane.ndim - 2)
    smooth = ndi.gaussian_filter(plane.astype(np.float32, copy=False), (*lead, sigma, sigma),
                                 mode="nearest")
    return (plane + amount * (plane - smooth)).astype(np.float32)
