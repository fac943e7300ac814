"""Drift check: does new imagery look like the imagery the model was trained on?

A trained bundle records, per band, the distribution of its training pixels
(:func:`reference`: quantile bin edges and the share of pixels in each bin).
``predict`` counts a thinned-out share of the pixels of every tile it reads anyway
(:class:`DriftMonitor`: no extra reading, whatever the raster's size; on a
cluster, where the pixels stay on the workers, it samples the raster instead,
:func:`sample_raster`) and scores each band with the
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

__all__ = ["PSI_SHIFT", "DriftMonitor", "check_drift", "psi", "reference", "sample_raster"]

PSI_SHIFT = 0.25
"""PSI above which a band counts as shifted."""

_FLOOR = 1e-4  # share given to empty bins, so the logarithm stays finite


def sample_raster(path: str, bands: Sequence[int], *, max_side: int = 512) -> np.ndarray:
    """Valid pixels of ``bands`` read on a grid of at most ``max_side`` x ``max_side``: ``(B, n)`` float64.

    A decimated read: it never holds the raster, but without overviews GDAL
    decompresses every block of it, which is why ``predict`` counts the tiles it
    reads anyway (:class:`DriftMonitor`) where it can.
    """
    from geovision.tiling.reader import gdal_env

    with gdal_env(), rasterio.open(path) as ds:
        step = max(1, math.ceil(max(ds.height, ds.width) / max_side))
        shape = (len(bands), max(1, ds.height // step), max(1, ds.width // step))
        data = ds.read(list(bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        masks = ds.read_masks(list(bands), out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    return data[:, valid].astype(np.float64)


class DriftMonitor:
    """Counts, per band, a thinned-out share of the pixels of the tiles ``predict`` reads.

    Every ``stride``-th row and column of a tile goes into the reference's bins; at
    the end :meth:`result` scores the counts as :func:`check_drift` does, with no
    reading of its own.

    Args:
        ref: the bundle's ``drift_reference``.
        band_names: the bundle's band names, for the summary and the warning.
        stride: sampling step in pixels.
    """

    def __init__(self, ref: dict[str, Any], band_names: Sequence[str], stride: int = 8) -> None:
        self.ref = ref
        self.band_names = list(band_names)
        self.stride = stride
        self._edges = [np.asarray(e, dtype=np.float64) for e in ref["edges"]]
        self._counts = [np.zeros(len(p), dtype=np.int64) for p in ref["proportions"]]

    def add(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Count one tile: ``(B, h, w)`` values and its ``(h, w)`` validity."""
        s = self.stride
        sub = data[:, ::s, ::s]
        keep = valid[::s, ::s] & np.all(np.isfinite(sub), axis=0)
        for edges, counts, band in zip(self._edges, self._counts, sub):
            counts += np.bincount(np.searchsorted(edges, band[keep], side="right"), minlength=len(counts))

    def result(self, path: str) -> dict[str, Any]:
        """PSI per band from the counts so far; warns (naming ``path``) when a band has shifted."""
        return _report(path, self.band_names, [_psi_counts(e, c) for e, c in zip(self.ref["proportions"],
                                                                                 self._counts)])


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
        out.append(_psi_counts(expected, counts))
    return out


def _psi_counts(expected: Sequence[float], counts: np.ndarray) -> float:
    actual = np.maximum(counts / max(1, int(counts.sum())), _FLOOR)
    e = np.maximum(np.asarray(expected), _FLOOR)
    return float(np.sum((actual - e) * np.log(actual / e)))


def check_drift(path: str, bands: Sequence[int], band_names: Sequence[str], ref: dict[str, Any]) -> dict[str, Any]:
    """Score a raster against the bundle's reference; warn when a band has shifted.

    Returns:
        ``{"psi": {band name: PSI}, "shifted": [band names with PSI > PSI_SHIFT]}`` for the summary.
    """
    return _report(path, band_names, psi(ref, sample_raster(path, bands)))


def _report(path: str, band_names: Sequence[str], scores: Sequence[float]) -> dict[str, Any]:
    result: dict[str, Any] = {"psi": {n: round(v, 4) for n, v in zip(band_names, scores)},
                              "shifted": [n for n, v in zip(band_names, scores) if v > PSI_SHIFT]}
    if result["shifted"]:
        shown = ", ".join(f"{n} (PSI {result['psi'][n]:.2f})" for n in result["shifted"])
        warn(
            f"{path}: looks unlike the model's training imagery in band(s) {shown}; PSI above {PSI_SHIFT} means "
            "the predictions may not be trustworthy. Check the band order (--bands), the radiometric scaling "
            "(bit depth, reflectance scale) and the season/sensor, or retrain on similar imagery."
        )
    return result
