"""Blend weights that taper towards a tile's edges.

Near its edge a tile sees little context (and padding), so its predictions
there are the least trustworthy. Each tile's probabilities are multiplied by a
weight that ramps linearly from nearly zero at the tile edge to one at
``ramp`` pixels inside it; the stitcher divides the weighted sum by the summed
weights. Where the raster itself ends, only one tile covers a pixel and the
division restores its value, so raster edges are not darkened.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def taper_weights(height: int, width: int, ramp: int) -> np.ndarray:
    """``(height, width)`` float32 weights in ``(0, 1]``, 1 in the interior.

    The weight of a pixel at distance ``d`` pixels from the nearest tile edge
    (``d = 0`` on the edge row/column) is ``min(1, (d + 1) / (ramp + 1))``.
    ``ramp = 0`` gives uniform weights.
    """
    if ramp <= 0:
        ones = np.ones((height, width), dtype=np.float32)
        ones.setflags(write=False)
        return ones

    def axis(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        d = np.minimum(i, n - 1 - i)
        return np.minimum(1.0, (d + 1.0) / (ramp + 1.0)).astype(np.float32)

    w: np.ndarray = np.minimum.outer(axis(height), axis(width))
    w.setflags(write=False)
    return w
