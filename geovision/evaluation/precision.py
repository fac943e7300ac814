"""Score-ranked object metrics: COCO-style average precision and per-confidence-band statistics.

Pure functions (numpy and shapely only), no file I/O; objects are polygons in any
one coordinate system.

* :func:`average_precision` is COCO's AP: greedy matching by score at each IoU
  threshold, the precision envelope sampled at 101 recall points. On axis-aligned
  boxes it equals ``pycocotools``' ``COCOeval`` (``iouType="bbox"``, area range
  ``"all"``, no crowd annotations, one image).
* :func:`confidence_bands` splits the predictions by score: how many of each band
  are right, and how much of the recall each band brings.

Both build on the matching machinery of :mod:`geovision.evaluation.matching`.
An undefined metric (AP of a class with no truth, precision of an empty band)
is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike

from geovision.errors import ConfigError
from geovision.evaluation._common import _ratio
from geovision.evaluation.matching import (
    Matching,
    _candidate_pairs,
    _class_key,
    _classes,
    _greedy,
    _order_pairs,
    _polygons,
    _rank,
    _scores,
)

__all__ = ["COCO_IOU_THRESHOLDS", "COCO_RECALL_POINTS", "average_precision", "confidence_bands"]

COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
"""COCO's IoU thresholds ``0.5, 0.55, ..., 0.95`` (the same floats as ``pycocotools``)."""

COCO_RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)
"""COCO's 101 recall points ``0, 0.01, ..., 1`` at which precision is sampled."""


# --- objects: average precision -----------------------------------------------------------


def _ap_101(hits: np.ndarray, n_true: int) -> tuple[float, np.ndarray, np.ndarray]:
    """COCO's 101-point interpolated AP of detections sorted by descending score.

    Args:
        hits: ``(n,)`` bool, whether each detection (best score first) is a true positive.
        n_true: number of true objects (> 0).

    Returns:
        ``(ap, recall, precision)``: the AP and the raw ``(n,)`` recall and
        precision after each detection.
    """
    tp = np.cumsum(hits).astype(np.float64)
    fp = np.cumsum(~hits).astype(np.float64)
    recall = tp / n_true
    precision = tp / np.maximum(tp + fp, 1.0)
    if len(hits) == 0:
        return 0.0, recall, precision
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    sampled = np.zeros(len(COCO_RECALL_POINTS))
    inside = at < len(hits)
    sampled[inside] = envelope[at[inside]]
    return float(np.mean(sampled)), recall, precision


def average_precision(
    pred: Sequence[shapely.Geometry],
    truth: Sequence[shapely.Geometry],
    pred_scores: ArrayLike,
    *,
    pred_classes: ArrayLike | None = None,
    truth_classes: ArrayLike | None = None,
    iou_thresholds: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """COCO-style average precision of scored polygons (one scene, no crowd objects).

    For each class and IoU threshold ``t``: predictions in order of descending
    score (stable) each take the unmatched truth of their class with the highest
    IoU ``>= min(t, 1 - 1e-10)`` (among equal IoUs the truth that comes last, as
    ``pycocotools`` does); the precision after each prediction is replaced by its
    best value at any higher recall, sampled at the 101 recalls ``0, 0.01, ..., 1``
    (0 beyond the highest recall reached), and averaged. On axis-aligned boxes
    this is ``COCOeval`` with ``iouType="bbox"``, area range ``"all"`` and enough
    ``maxDets``: ``map`` is its ``stats[0]`` and ``ap50`` its ``stats[1]``.

    Args:
        pred: ``N`` predicted polygons.
        truth: ``M`` true polygons, in the same coordinate system.
        pred_scores: ``(N,)`` scores.
        pred_classes: ``(N,)`` integer class ids (with ``truth_classes``; neither:
            one class, id 0).
        truth_classes: ``(M,)`` integer class ids.
        iou_thresholds: IoU thresholds in ``(0, 1]``; default
            :data:`COCO_IOU_THRESHOLDS` (``0.5:0.05:0.95``).
        class_names: names of the class ids, used as keys (default: the ids).

    Returns:
        ``{"ap50", "ap75", "map", "iou_thresholds", "per_class", "pr_curve"}``.
        ``map`` averages the AP over ``iou_thresholds`` and over the classes that
        have truth; ``ap50``/``ap75`` average the AP at IoU 0.5/0.75 over those
        classes (each ``None`` when no class has truth; 0.5 and 0.75 are
        evaluated even when not among ``iou_thresholds``). ``per_class`` maps
        every class present in truth or prediction to ``{"ap50", "ap75", "map",
        "count_true", "count_pred"}`` (APs ``None`` for a class with no truth).
        ``pr_curve`` maps each class with truth to ``{"recall", "precision",
        "score"}``: lists, one value after each of its predictions in score
        order, matched at IoU 0.5 (not interpolated).

    Raises:
        ConfigError: a threshold is out of range, or only one of the class
            arrays is given.
        ValueError: a geometry or an array is malformed (see the message).
    """
    p = _polygons(pred, "pred")
    t = _polygons(truth, "truth")
    scores = _scores(pred_scores, len(p), required=True)
    assert scores is not None
    pc, tc = _classes(pred_classes, truth_classes, len(p), len(t))
    thresholds = COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, np.float64).reshape(-1)
    if thresholds.size == 0 or not ((thresholds > 0) & (thresholds <= 1)).all():
        raise ConfigError(f"iou_thresholds must be values in (0, 1] (e.g. 0.5, 0.75), got {thresholds.tolist()!r}.")
    extra = [x for x in (0.5, 0.75) if not np.isclose(thresholds, x, rtol=0, atol=1e-12).any()]
    evaluated = np.concatenate([thresholds, extra])
    at50 = int(np.flatnonzero(np.isclose(evaluated, 0.5, rtol=0, atol=1e-12))[0])
    at75 = int(np.flatnonzero(np.isclose(evaluated, 0.75, rtol=0, atol=1e-12))[0])

    rank = _rank(scores, len(p))
    i, j, iou = _order_pairs(rank, *_candidate_pairs(p, t, pc, tc), ties="last")
    order = np.argsort(rank)  # prediction indices, best score first
    classes = np.unique(np.concatenate([pc, tc])).tolist()
    ap = np.full((len(classes), len(evaluated)), np.nan)
    curves: dict[Any, dict[str, list[float]]] = {}
    for k, threshold in enumerate(evaluated):
        above = iou >= min(threshold, 1 - 1e-10)
        hit = (_greedy(i[above], j[above], len(p)) >= 0)[order]
        for row, c in enumerate(classes):
            n_true = int((tc == c).sum())
            if n_true == 0:
                continue
            mine = pc[order] == c
            ap[row, k], recall, precision = _ap_101(hit[mine], n_true)
            if k == at50:
                curves[_class_key(c, class_names)] = {
                    "recall": recall.tolist(), "precision": precision.tolist(), "score": scores[order][mine].tolist(),
                }

    with_truth = ~np.isnan(ap[:, 0])
    n_given = len(thresholds)

    def mean(values: np.ndarray) -> float | None:
        return float(np.mean(values)) if values.size else None

    per_class = {}
    for row, c in enumerate(classes):
        has = bool(with_truth[row])
        per_class[_class_key(c, class_names)] = {
            "ap50": float(ap[row, at50]) if has else None,
            "ap75": float(ap[row, at75]) if has else None,
            "map": float(np.mean(ap[row, :n_given])) if has else None,
            "count_true": int((tc == c).sum()),
            "count_pred": int((pc == c).sum()),
        }
    return {
        "ap50": mean(ap[with_truth, at50]),
        "ap75": mean(ap[with_truth, at75]),
        "map": mean(ap[with_truth, :n_given]),
        "iou_thresholds": thresholds.tolist(),
        "per_class": per_class,
        "pr_curve": curves,
    }


# --- objects: confidence bands ------------------------------------------------------------


def confidence_bands(
    matching: Matching,
    pred_scores: ArrayLike,
    bands: Sequence[tuple[float, float]] = ((0.0, 0.3), (0.3, 0.6), (0.6, 1.0)),
    n_truth: int | None = None,
) -> list[dict[str, Any]]:
    """How many predictions of each score band are right, and how much recall each band brings.

    Args:
        matching: the result of :func:`match_objects`.
        pred_scores: ``(N,)`` scores of the predictions.
        bands: ``(lo, hi)`` score bands, each ``lo <= score < hi``; the last band
            also holds ``score == hi``. A score in no band is counted in none.
        n_truth: number of true objects for the recall contribution (default: the
            number of truths in ``matching``).

    Returns:
        One dict per band, in order: ``{"lo", "hi", "n_pred", "tp", "fp",
        "precision", "recall_contribution"}``; ``precision = tp / n_pred``
        (``None`` with no prediction in the band), ``recall_contribution =
        tp / n_truth`` (``None`` when ``n_truth`` is 0); the contributions of
        disjoint bands covering every score add up to the recall.

    Raises:
        ConfigError: a band has ``lo >= hi``, or ``n_truth`` is negative.
        ValueError: ``pred_scores`` does not have one finite value per prediction.
    """
    scores = _scores(pred_scores, len(matching.pred_status), required=True)
    assert scores is not None
    bands = [(float(lo), float(hi)) for lo, hi in bands]
    for lo, hi in bands:
        if not lo < hi:
            raise ConfigError(f"Each confidence band needs lo < hi (e.g. (0.3, 0.6)), got {(lo, hi)!r}.")
    if n_truth is None:
        n_truth = len(matching.truth_status)
    if n_truth < 0:
        raise ConfigError(f"n_truth must be >= 0, got {n_truth!r}.")
    tp_mask = matching.pred_status == "TP"
    out = []
    for k, (lo, hi) in enumerate(bands):
        last = k == len(bands) - 1
        inside = (scores >= lo) & ((scores <= hi) if last else (scores < hi))
        n = int(inside.sum())
        tp = int((inside & tp_mask).sum())
        out.append({
            "lo": lo, "hi": hi, "n_pred": n, "tp": tp, "fp": n - tp,
            "precision": _ratio(tp, n), "recall_contribution": _ratio(tp, n_truth),
        })
    return out
