"""Drift check: does new imagery look like the imagery the model was trained on?

A trained bundle records, per band, the distribution of its training pixels
(:func:`reference`: quantile bin edges and the share of pixels in each bin).
``predict`` samples every input raster on a coarse grid (:func:`sample_raster`,
a decimated read: it never loads the raster) and scores each band with the
population stability index, PSI = Σ (a − e) · ln(a / e) over the bins, where e
and a are the reference and the new shares. PSI below 0.1 means no real change,
0.1–0.25 some, above 0.25 a shift large enough to distrust the predictions
(the usual reading of PSI): then ``predict`` warns, naming the file, the bands
and what to check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio

from geovision.errors import warn

__all__ = ["PSI_SHIFT", "check_drift", "psi", "reference", "sample_raster"]

PSI_SHIFT = 0.25
"""PSI above which a band counts as shifted."""

_FLOOR = 1e-4  # share given to empty bins, so the logarithm stays finite


def sample_raster(path: str, bands: Sequence[int], *, max_side: int = 512) -> np.ndarray:
    """Valid pixels of ``bands`` read on a grid of at most ``max_side`` x ``max_side``: ``(B, n)`` float64."""
    from geovision.tiling.reader import gdal_env

    with gdal_env(), rasterio.open(path) as ds:
        step = max(1, math.ceil(max(ds.height, ds.width) / max_side))
        shape = (len(bands), max(1, ds.height // step), max(1, ds.width // step))
        data = ds.read(list(bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        masks = ds.read_masks(list(bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    return data[:, valid].astype(np.float64)


def reference(samples: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """The per-band reference distribution of ``(B, n)`` training pixels.

    Returns:
        ``{"edges": B lists of interior bin edges (quantiles), "proportions": B lists of the
        pixel share in each bin, "pixels": n}``: what a bundle stores as ``drift_reference``.
    """
    samples = np.asarray(samples, dtype=np.float64)
    edges, props = [], []
    for band in samples:
        inner = np.unique(np.quantile(band, np.linspace(0, 1, bins + 1)[1:-1])) if band.size else np.zeros(0)
        counts = np.bincount(np.searchsorted(inner, band, side="right"), minlength=len(inner) + 1)
        edges.append([float(e) for e in inner])
        props.append([float(c) / max(1, band.size) for c in counts])
    return {"edges": edges, "proportions": props, "pixels": int(samples.shape[1]) if samples.ndim == 2 else 0}


def psi(ref: dict[str, Any], samples: np.ndarray) -> list[float]:
    """Population stability index of each band of ``(B, n)`` samples against ``ref``."""
    out = []
    for edges, expected, band in zip(ref["edges"], ref["proportions"], np.asarray(samples, dtype=np.float64)):
        counts = np.bincount(np.searchsorted(np.asarray(edges), band, side="right"), minlength=len(expected))
        actual = np.maximum(counts / max(1, band.size), _FLOOR)
        e = np.maximum(np.asarray(expected), _FLOOR)
        out.append(float(np.sum((actual - e) * np.log(actual / e))))
    return out


def check_drift(path: str, bands: Sequence[int], band_names: Sequence[str], ref: dict[str, Any]) -> dict[str, Any]:
    """Score a raster against the bundle's reference; warn when a band has shifted.

    Returns:
        ``{"psi": {band name: PSI}, "shifted": [band names with PSI > PSI_SHIFT]}`` for the summary.
    """
    scores = psi(ref, sample_raster(path, bands))
    result = {"psi": {n: round(v, 4) for n, v in zip(band_names, scores)},
              "shifted": [n for n, v in zip(band_names, scores) if v > PSI_SHIFT]}
    if result["shifted"]:
        shown = ", ".join(f"{n} (PSI {result['psi'][n]:.2f})" for n in result["shifted"])
        warn(
            f"{path}: looks unlike the model's training imagery in band(s) {shown}; PSI above {PSI_SHIFT} means "
            "the predictions may not be trustworthy. Check the band order (--bands), the radiometric scaling "
            "(bit depth, reflectance scale) and the season/sensor, or retrain on similar imagery."
        )
    return result
