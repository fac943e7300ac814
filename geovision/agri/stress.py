"""Crop-stress classes: the rules that turn index values into healthy / moderate / severe.

Pure numpy: nothing here opens a file. Every method comes down to two cut-offs in
index units per field, ``severe_below`` and ``moderate_below``; a valid pixel of the
field is *severe* when its index is below the first, *moderate* when below the
second, *healthy* otherwise:

``absolute``
    the same cut-offs everywhere (``--thresholds 0.4,0.6`` for NDVI: below 0.4
    severe, below 0.6 moderate). Simple, but a field sown late reads as stressed.
``percentile``
    relative to the field's own reference, its ``reference_percentile``-th percentile
    (default the 90th: what the best part of this field reaches at this growth
    stage). ``--thresholds 0.30,0.15`` flags pixels 30% (severe) or 15% (moderate)
    below that reference. A uniform field, healthy or young, has nothing flagged;
    a ranking rule ("the bottom 10% of each field") would flag a fixed share of
    every field, so it could not say how many hectares are affected.
``zscore``
    relative to the field's mean and standard deviation: ``--thresholds -2,-1``
    flags pixels 2 (severe) or 1 (moderate) standard deviations below the mean. The
    deviation is floored at ``min_std`` index units (default 0.05) so that sensor
    noise in a uniform field is not called stress.
``model``
    a segmentation bundle whose classes are named healthy / moderate / severe
    decides per pixel; no cut-offs.

Field statistics (:class:`FieldStats`) are weighted: each pixel counts by the share
of it inside the field times its ground area, so edge pixels and pixels of unequal
area (geographic rasters) count as they should. Quantiles come from a weighted
histogram of :data:`HISTOGRAM_BINS` bins over the index's valid range (0.001 index
units wide for NDVI, a few kB per field, whatever the field's size); mean and
standard deviation are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from geovision.agri.indices import INDICES
from geovision.errors import ConfigError

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DEFAULT_THRESHOLDS",
    "HEALTHY",
    "HISTOGRAM_BINS",
    "MASKED",
    "METHODS",
    "MODERATE",
    "NO_CLASS",
    "SEVERE",
    "WATER",
    "FieldStats",
    "StressRule",
    "classify",
]

Method = Literal["absolute", "percentile", "zscore", "model"]
METHODS: tuple[str, ...] = ("percentile", "zscore", "absolute", "model")

# Codes of the stress-class raster.
NO_CLASS, HEALTHY, MODERATE, SEVERE, WATER, MASKED = 0, 1, 2, 3, 4, 5
CLASS_NAMES: tuple[str, ...] = ("none", "healthy", "moderate", "severe", "water", "masked")
"""Name of each stress-class code; code 0 (outside the fields, or no data) is the raster's nodata."""
CLASS_COLORS: dict[int, str] = {HEALTHY: "#1a9850", MODERATE: "#fdae61", SEVERE: "#d73027",
                                WATER: "#4575b4", MASKED: "#bdbdbd"}

DEFAULT_ABSOLUTE: dict[str, tuple[float, float]] = {
    # (severe below, moderate below) for a crop in full growth; set --thresholds for yours
    "ndvi": (0.4, 0.6),
    "gndvi": (0.35, 0.5),
    "ndre": (0.15, 0.25),
    "savi": (0.25, 0.4),
    "evi": (0.25, 0.4),
    "msavi2": (0.25, 0.4),
}
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {"percentile": (0.30, 0.15), "zscore": (-2.0, -1.0)}
"""(severe, moderate) for the relative methods; ``absolute`` defaults per index in ``DEFAULT_ABSOLUTE``."""

HISTOGRAM_BINS = 2000


@dataclass(frozen=True, slots=True)
class StressRule:
    """How index values become stress classes; see the module docs for the methods.

    Attributes:
        method: ``"percentile"``, ``"zscore"``, ``"absolute"`` or ``"model"``.
        index: the index the thresholds apply to.
        severe: the severe threshold (index value, relative deficit or z-score by method).
        moderate: the moderate threshold, milder than ``severe``.
        reference_percentile: the field's reference for ``percentile`` (0-100).
        min_std: floor of the field's standard deviation for ``zscore`` (index units).
    """

    method: str
    index: str
    severe: float
    moderate: float
    reference_percentile: float = 90.0
    min_std: float = 0.05

    @classmethod
    def make(cls, method: str = "percentile", index: str = "ndvi",
             thresholds: tuple[float, float] | list[float] | str | None = None, *,
             reference_percentile: float = 90.0, min_std: float = 0.05) -> StressRule:
        """Check and complete a rule: default thresholds, right order, sane ranges.

        Args:
            method: one of :data:`METHODS`.
            index: an index name (for the ``absolute`` defaults).
            thresholds: ``(severe, moderate)`` or ``"severe,moderate"``; ``None`` for the defaults.
            reference_percentile: see the class.
            min_std: see the class.

        Raises:
            ConfigError: unknown method, thresholds that are not two numbers or in the wrong order.
        """
        method = method.lower()
        if method not in METHODS:
            raise ConfigError(f"unknown stress method {method!r}; use one of {', '.join(METHODS)}.")
        index = index.lower()
        if method == "model":
            return cls(method, index, math.nan, math.nan)
        if thresholds is None:
            severe, moderate = DEFAULT_ABSOLUTE.get(index, (0.4, 0.6)) if method == "absolute" \
                else DEFAULT_THRESHOLDS[method]
        else:
            if isinstance(thresholds, str):
                try:
                    thresholds = [float(t) for t in thresholds.split(",")]
                except ValueError:
                    thresholds = []
            if len(thresholds) != 2 or not all(math.isfinite(float(t)) for t in thresholds):
                raise ConfigError(f"thresholds must be two numbers 'SEVERE,MODERATE', got {thresholds!r}; e.g. "
                                  + {"absolute": "--thresholds 0.4,0.6", "percentile": "--thresholds 0.30,0.15",
                                     "zscore": "--thresholds -2,-1"}[method] + ".")
            severe, moderate = (float(t) for t in thresholds)
        milder = {"absolute": severe < moderate, "percentile": severe > moderate > 0, "zscore": severe < moderate < 0}
        if not milder[method]:
            rule = {"absolute": "severe < moderate (index values: below severe is severe)",
                    "percentile": "severe > moderate > 0 (deficits below the field's reference, e.g. 0.30,0.15)",
                    "zscore": "severe < moderate < 0 (standard deviations below the field mean, e.g. -2,-1)"}[method]
            raise ConfigError(f"{method} thresholds {severe},{moderate} are in the wrong order: need {rule}.")
        if not 0 < reference_percentile <= 100:
            raise ConfigError(f"reference_percentile must be in (0, 100], got {reference_percentile}.")
        if min_std < 0:
            raise ConfigError(f"min_std must be >= 0 index units, got {min_std}.")
        return cls(method, index, severe, moderate, float(reference_percentile), float(min_std))

    def cutoffs(self, stats: FieldStats, field: int) -> tuple[float, float]:
        """``(severe_below, moderate_below)`` in index units for ``field``; NaN without valid pixels."""
        match self.method:
            case "absolute":
                return self.severe, self.moderate
            case "percentile":
                ref = stats.quantile(field, self.reference_percentile / 100.0)
                return ref - self.severe * abs(ref), ref - self.moderate * abs(ref)
            case "zscore":
                mean, std = stats.mean(field), max(stats.std(field), self.min_std)
                return mean + self.severe * std, mean + self.moderate * std
        return math.nan, math.nan

    def describe(self) -> str:
        """One line for the summary and the quicklook."""
        match self.method:
            case "absolute":
                return f"{self.index} < {self.severe:g} severe, < {self.moderate:g} moderate"
            case "percentile":
                return (f"{self.index} more than {self.severe:.0%} (severe) or {self.moderate:.0%} (moderate) below "
                        f"the field's p{self.reference_percentile:g}")
            case "zscore":
                return (f"{self.index} z-score within the field < {self.severe:g} severe, < {self.moderate:g} "
                        f"moderate (std floored at {self.min_std:g})")
        return "classes from a segmentation model"


def classify(values: np.ndarray, severe_below: float, moderate_below: float) -> np.ndarray:
    """Stress codes of ``values``: :data:`SEVERE`, :data:`MODERATE`, :data:`HEALTHY`; NaN gives :data:`NO_CLASS`."""
    out = np.full(values.shape, HEALTHY, np.uint8)
    out[values < moderate_below] = MODERATE
    out[values < severe_below] = SEVERE
    out[~np.isfinite(values)] = NO_CLASS
    return out


class FieldStats:
    """Weighted statistics of index values per field, accumulated block by block.

    Args:
        n_fields: how many fields (ids ``0 .. n_fields - 1``).
        value_range: ``(low, high)`` of the index (histogram range; values outside are clipped into it).
        bins: histogram bins.
    """

    def __init__(self, n_fields: int, value_range: tuple[float, float], bins: int = HISTOGRAM_BINS) -> None:
        self.low, self.high = float(value_range[0]), float(value_range[1])
        self.bins = bins
        self._width = (self.high - self.low) / bins
        self.weight = np.zeros(n_fields)
        self._sum = np.zeros(n_fields)
        self._sum2 = np.zeros(n_fields)
        self._hist: dict[int, np.ndarray] = {}

    @classmethod
    def for_index(cls, index: str, n_fields: int) -> FieldStats:
        return cls(n_fields, INDICES[index.lower()].valid_range)

    def add(self, field: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add finite ``values`` with ``weights`` (coverage × pixel area) to ``field``."""
        keep = np.isfinite(values) & (weights > 0)
        if not keep.any():
            return
        v = values[keep].astype(np.float64)
        w = weights[keep].astype(np.float64)
        self.weight[field] += w.sum()
        self._sum[field] += (w * v).sum()
        self._sum2[field] += (w * v * v).sum()
        idx = np.clip(((v - self.low) / self._width).astype(np.int64), 0, self.bins - 1)
        hist = self._hist.get(field)
        if hist is None:
            hist = self._hist[field] = np.zeros(self.bins)
        hist += np.bincount(idx, weights=w, minlength=self.bins)

    def mean(self, field: int) -> float:
        w = self.weight[field]
        return float(self._sum[field] / w) if w > 0 else math.nan

    def std(self, field: int) -> float:
        w = self.weight[field]
        if w <= 0:
            return math.nan
        mean = self._sum[field] / w
        return float(math.sqrt(max(self._sum2[field] / w - mean * mean, 0.0)))

    def quantile(self, field: int, q: float) -> float:
        """The weighted ``q`` quantile (0-1), linear within the histogram bin; NaN without data."""
        hist = self._hist.get(field)
        if hist is None:
            return math.nan
        cum = np.cumsum(hist)
        target = q * cum[-1]
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.bins - 1)
        before = cum[i - 1] if i > 0 else 0.0
        inside = (target - before) / hist[i] if hist[i] > 0 else 0.0
        return float(self.low + (i + inside) * self._width)
