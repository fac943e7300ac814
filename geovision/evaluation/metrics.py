"""Evaluation metrics for segmentation masks and detected objects: pure functions, no file I/O.

Pixels:

* :func:`confusion_matrix` counts ``(truth, prediction)`` class pairs, leaving out
  ignored and invalid pixels. Matrices of blocks add up, so a large raster can be
  counted block by block.
* :func:`pixel_metrics` turns a confusion matrix into per-class IoU, F1,
  precision, recall and area error (m²), and their means.

Objects (polygons, in any one coordinate system):

* :func:`match_objects` pairs predictions with truths one to one (the
  SpaceNet/solaris rule): predictions in order of descending score (input order
  without scores) each take the unmatched truth of their class with the highest
  IoU, if that IoU is at least the threshold. Candidate pairs come from a
  :class:`shapely.STRtree`, never from all ``N * M`` pairs.
* :func:`object_metrics` counts true/false positives and false negatives, and
  the count error, overall and per class.
* :func:`average_precision` is COCO's AP: greedy matching by score at each IoU
  threshold, the precision envelope sampled at 101 recall points. On axis-aligned
  boxes it equals ``pycocotools``' ``COCOeval`` (``iouType="bbox"``, area range
  ``"all"``, no crowd annotations, one image).
* :func:`confidence_bands` splits the predictions by score: how many of each band
  are right, and how much of the recall each band brings.

A metric that is undefined (precision with no predictions, recall with no truth,
the IoU of a class absent from both truth and prediction) is ``None``: never
``0``, never ``NaN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import ArrayLike

from geovision.errors import ConfigError

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_POINTS",
    "Matching",
    "average_precision",
    "confidence_bands",
    "confusion_matrix",
    "match_objects",
    "object_metrics",
    "pixel_metrics",
]

COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
"""COCO's IoU thresholds ``0.5, 0.55, ..., 0.95`` (the same floats as ``pycocotools``)."""

COCO_RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)
"""COCO's 101 recall points ``0, 0.01, ..., 1`` at which precision is sampled."""

_POLYGONAL = (3, 6)  # shapely type ids of Polygon, MultiPolygon
_COLLECTION = 7  # GeometryCollection


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` as a Python float, ``None`` when ``den`` is 0."""
    return float(num) / float(den) if den else None


def _pct(num: float, den: float) -> float | None:
    """``100 * num / den``, ``None`` when ``den`` is 0."""
    return 100.0 * float(num) / float(den) if den else None


# --- pixels -------------------------------------------------------------------------


def confusion_matrix(
    truth: ArrayLike,
    pred: ArrayLike,
    num_classes: int,
    *,
    ignore: int | None = 255,
    valid: ArrayLike | None = None,
) -> np.ndarray:
    """Count pixels by (true class, predicted class).

    Args:
        truth: integer class ids, any shape (for example ``(rows, cols)``).
        pred: integer class ids, the same shape as ``truth``.
        num_classes: number of classes ``C``; class ids are ``0 .. C-1``.
        ignore: a pixel where ``truth`` or ``pred`` equals this value is not
            counted (``None``: no such value).
        valid: bool, the same shape as ``truth``; pixels where it is ``False``
            (for example nodata) are not counted.

    Returns:
        ``(C, C)`` int64 counts: rows are the true class, columns the predicted
        class. Matrices of disjoint blocks of a raster add up to the matrix of
        the whole raster.

    Raises:
        ConfigError: ``num_classes`` is not a positive integer.
        ValueError: the arrays differ in shape, or a counted pixel has a class id
            outside ``0 .. C-1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer (e.g. 3), got {num_classes!r}.")
    c = int(num_classes)
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth has shape {truth.shape} but pred has shape {pred.shape}; they must match.")
    for name, array in (("truth", truth), ("pred", pred)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} has dtype {array.dtype}; pass integer class ids (e.g. uint8).")
    keep = np.ones(truth.shape, dtype=bool)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != truth.shape:
            raise ValueError(f"valid has shape {valid.shape} but truth has shape {truth.shape}; they must match.")
        keep &= valid.astype(bool)
    if ignore is not None:
        keep &= (truth != ignore) & (pred != ignore)
    t = truth[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    for name, values in (("truth", t), ("pred", p)):
        bad = (values < 0) | (values >= c)
        if bad.any():
            found = np.unique(values[bad])[:5].tolist()
            raise ValueError(
                f"{name} has class ids {found} outside 0..{c - 1} (num_classes={c}); "
                f"raise num_classes or mark those pixels with ignore={ignore!r} or valid=False."
            )
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def pixel_metrics(
    confusion: ArrayLike,
    class_names: Sequence[str],
    *,
    pixel_area_m2: float = 1.0,
    background: int | None = 0,
) -> dict[str, Any]:
    """Per-class and mean segmentation metrics from a confusion matrix.

    For class ``c`` with ``tp`` = ``confusion[c, c]``, ``fp`` = predicted ``c``
    but truly another class and ``fn`` = truly ``c`` but predicted another:
    ``iou = tp / (tp + fp + fn)``, ``f1 = 2 tp / (2 tp + fp + fn)``,
    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``; each is
    ``None`` where its denominator is 0 (so a class absent from both truth and
    prediction has ``None`` for all four, and a class never predicted has
    precision ``None``).

    Args:
        confusion: ``(C, C)`` counts, rows = truth, columns = prediction (from
            :func:`confusion_matrix`).
        class_names: ``C`` names, in class id order.
        pixel_area_m2: ground area of one pixel (m²), for the areas.
        background: class id left out of ``mean_iou`` and ``mean_f1`` (``None``:
            leave out none). It still has its entry in ``per_class``.

    Returns:
        ``{"per_class": {name: {"iou", "f1", "precision", "recall",
        "true_pixels", "pred_pixels", "true_area_m2", "pred_area_m2",
        "area_error_m2", "area_error_pct"}}, "mean_iou", "mean_f1",
        "overall_accuracy", "confusion", "confusion_normalized"}``.
        ``area_error_m2 = pred_area_m2 - true_area_m2``; ``area_error_pct`` is
        that relative to the true area (``None`` when the class has no true
        pixel). ``mean_iou``/``mean_f1`` average the non-background classes
        present in truth or prediction (``None`` if there is none).
        ``overall_accuracy`` is the share of counted pixels on the diagonal
        (``None`` when nothing was counted). ``confusion`` is the matrix as lists
        of ints; ``confusion_normalized`` divides each row by its truth count
        (rows of a class with no true pixel stay 0).

    Raises:
        ConfigError: ``class_names``, ``pixel_area_m2`` or ``background`` do not
            fit the matrix.
        ValueError: ``confusion`` is not a square matrix of non-negative counts.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion has shape {cm.shape}; expected a square (C, C) matrix from confusion_matrix().")
    if (cm < 0).any() or not np.array_equal(cm, np.round(cm)):
        raise ValueError("confusion must hold non-negative whole counts; pass the output of confusion_matrix().")
    cm = cm.astype(np.int64)
    c = cm.shape[0]
    names = list(class_names)
    if len(names) != c:
        raise ConfigError(f"class_names has {len(names)} names but the confusion matrix has {c} classes: {names!r}.")
    if len(set(names)) != c:
        raise ConfigError(f"class_names must be unique, got {names!r}.")
    if not (np.isfinite(pixel_area_m2) and pixel_area_m2 > 0):
        raise ConfigError(f"pixel_area_m2 must be a positive area in m² (e.g. 0.25), got {pixel_area_m2!r}.")
    if background is not None and not 0 <= background < c:
        raise ConfigError(f"background must be a class id in 0..{c - 1} or None, got {background!r}.")

    tp = np.diag(cm)
    true_pixels = cm.sum(axis=1)
    pred_pixels = cm.sum(axis=0)
    fp = pred_pixels - tp
    fn = true_pixels - tp
    per_class: dict[str, dict[str, Any]] = {}
    ious, f1s = [], []
    for k, name in enumerate(names):
        iou = _ratio(tp[k], tp[k] + fp[k] + fn[k])
        f1 = _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k])
        true_area = float(true_pixels[k]) * pixel_area_m2
        pred_area = float(pred_pixels[k]) * pixel_area_m2
        per_class[name] = {
            "iou": iou,
            "f1": f1,
            "precision": _ratio(tp[k], pred_pixels[k]),
            "recall": _ratio(tp[k], true_pixels[k]),
            "true_pixels": int(true_pixels[k]),
            "pred_pixels": int(pred_pixels[k]),
            "true_area_m2": true_area,
            "pred_area_m2": pred_area,
            "area_error_m2": pred_area - true_area,
            "area_error_pct": _pct(int(pred_pixels[k]) - int(true_pixels[k]), true_pixels[k]),
        }
        if k != background and iou is not None:
            ious.append(iou)
            f1s.append(f1)
    rows = true_pixels[:, None].astype(np.float64)
    normalized = np.divide(cm, rows, out=np.zeros((c, c)), where=rows > 0)
    return {
        "per_class": per_class,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "mean_f1": float(np.mean(f1s)) if f1s else None,
        "overall_accuracy": _ratio(tp.sum(), cm.sum()),
        "confusion": cm.tolist(),
        "confusion_normalized": normalized.tolist(),
    }


# --- objects: inputs ------------------------------------------------------------------


def _polygons(geoms: Sequence[shapely.Geometry] | np.ndarray, name: str) -> np.ndarray:
    """``(n,)`` object array of valid polygonal geometries (repaired with ``make_valid``).

    Raises:
        ValueError: a geometry is missing (``None``) or, not empty, has no area type.
    """
    seq = list(geoms)
    arr = np.empty(len(seq), dtype=object)
    arr[:] = seq
    if len(arr) == 0:
        return arr
    if not all(isinstance(g, shapely.Geometry) for g in seq):
        bad = next(k for k, g in enumerate(seq) if not isinstance(g, shapely.Geometry))
        raise ValueError(f"{name}[{bad}] is {seq[bad]!r}, not a shapely geometry; drop it or pass a polygon.")
    kind = shapely.get_type_id(arr)
    wrong = ~np.isin(kind, (*_POLYGONAL, _COLLECTION)) & ~shapely.is_empty(arr)
    if wrong.any():
        bad = int(np.flatnonzero(wrong)[0])
        raise ValueError(
            f"{name}[{bad}] is a {arr[bad].geom_type}; object IoU needs "
            "polygons. Buffer points or lines into polygons first."
        )
    invalid = ~shapely.is_valid(arr)
    if invalid.any():
        arr[invalid] = shapely.make_valid(arr[invalid])
    for k in np.flatnonzero(shapely.get_type_id(arr) == _COLLECTION):
        parts = shapely.get_parts(arr[k])
        parts = parts[np.isin(shapely.get_type_id(parts), _POLYGONAL)]
        arr[k] = shapely.union_all(parts) if len(parts) else shapely.Polygon()
    return arr


def _scores(pred_scores: ArrayLike | None, n: int, *, required: bool = False) -> np.ndarray | None:
    """``(n,)`` float64 scores, or ``None``."""
    if pred_scores is None:
        if required:
            raise ValueError("pred_scores is required: one score per prediction.")
        return None
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1) if n else np.zeros(0)
    if scores.shape != (n,):
        raise ValueError(f"pred_scores has {scores.size} values for {n} predictions; give one score per prediction.")
    if not np.isfinite(scores).all():
        raise ValueError("pred_scores has NaN or infinite values; give every prediction a finite score.")
    return scores


def _classes(pred_classes: ArrayLike | None, truth_classes: ArrayLike | None, n_pred: int, n_truth: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(n_pred,)`` and ``(n_truth,)`` int64 class ids (all 0 when neither is given)."""
    if (pred_classes is None) != (truth_classes is None):
        raise ConfigError("Give both pred_classes and truth_classes (class-aware) or neither (one class).")
    if pred_classes is None:
        return np.zeros(n_pred, np.int64), np.zeros(n_truth, np.int64)
    out = []
    for name, values, n in (("pred_classes", pred_classes, n_pred), ("truth_classes", truth_classes, n_truth)):
        array = np.asarray(values).reshape(-1)
        if array.shape != (n,):
            raise ValueError(f"{name} has {array.size} values for {n} geometries; give one class id per geometry.")
        if n and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} has dtype {array.dtype}; give integer class ids (names go in class_names).")
        out.append(array.astype(np.int64))
    return out[0], out[1]


def _rank(scores: np.ndarray | None, n: int) -> np.ndarray:
    """``(n,)`` int64 rank of each prediction: 0 for the highest score, ties and no scores in input order."""
    order = np.arange(n) if scores is None else np.argsort(-scores, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def _candidate_pairs(pred: np.ndarray, truth: np.ndarray, pred_classes: np.ndarray, truth_classes: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same-class (prediction, truth) pairs with positive IoU: ``(i, j, iou)``, found with an STRtree."""
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j = shapely.STRtree(truth).query(pred, predicate="intersects")
    same = pred_classes[i] == truth_classes[j]
    i, j = i[same].astype(np.int64), j[same].astype(np.int64)
    inter = shapely.area(shapely.intersection(pred[i], truth[j]))
    union = shapely.area(pred)[i] + shapely.area(truth)[j] - inter
    iou = np.divide(inter, union, out=np.zeros(len(i)), where=union > 0)
    iou = np.minimum(iou, 1.0)
    positive = iou > 0
    return i[positive], j[positive], iou[positive]


def _order_pairs(rank: np.ndarray, i: np.ndarray, j: np.ndarray, iou: np.ndarray, ties: Literal["first", "last"]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs in the order the greedy match visits them: by prediction rank, then IoU descending,
    then truth index (ascending for ``ties="first"``, descending for ``"last"``)."""
    order = np.lexsort((j if ties == "first" else -j, -iou, rank[i]))
    return i[order], j[order], iou[order]


def _greedy(i: np.ndarray, j: np.ndarray, n_pred: int) -> np.ndarray:
    """One-to-one greedy matching over pairs already in visiting order (see :func:`_order_pairs`)
    and above the threshold. Returns ``(n_pred,)`` int64: the truth each prediction took, or -1."""
    match = [-1] * n_pred
    taken: set[int] = set()
    for p, t in zip(i.tolist(), j.tolist()):
        if match[p] < 0 and t not in taken:
            match[p] = t
            taken.add(t)
    return np.asarray(match, dtype=np.int64)


# --- objects: matching ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Matching:
    """A one-to-one matching of predicted objects with true objects (see :func:`match_objects`).

    Attributes:
        pred_status: ``(N,)`` object array, ``"TP"`` or ``"FP"`` per prediction.
        truth_status: ``(M,)`` object array, ``"TP"`` or ``"FN"`` per truth.
        pairs: ``(K, 2)`` int64 ``(pred index, truth index)`` of the matched
            pairs, in matching order (highest-ranked prediction first).
        ious: ``(K,)`` float64 IoU of each pair.
        pred_iou: ``(N,)`` float64 IoU of each prediction with the truth it
            matched (0 for a false positive).
    """

    pred_status: np.ndarray
    truth_status: np.ndarray
    pairs: np.ndarray
    ious: np.ndarray
    pred_iou: np.ndarray

    @property
    def tp(self) -> int:
        """Number of matched pairs."""
        return len(self.pairs)

    @property
    def fp(self) -> int:
        """Number of unmatched predictions."""
        return len(self.pred_status) - len(self.pairs)

    @property
    def fn(self) -> int:
        """Number of unmatched truths."""
        return len(self.truth_status) - len(self.pairs)

    def __repr__(self) -> str:
        return f"Matching(tp={self.tp}, fp={self.fp}, fn={self.fn})"


def match_objects(
    pred: Sequence[shapely.Geometry],
    truth: Sequence[shapely.Geometry],
    *,
    iou_threshold: float = 0.5,
    pred_scores: ArrayLike | None = None,
    pred_classes: ArrayLike | None = None,
    truth_classes: ArrayLike | None = None,
) -> Matching:
    """Match predicted polygons with true polygons one to one (the SpaceNet/solaris rule).

    Predictions are visited in order of descending score (stable; input order
    when there are no scores). Each takes the still unmatched truth of its class
    with the highest IoU, if that IoU is at least ``iou_threshold``; among equal
    IoUs the truth that comes first. ``IoU = area(A ∩ B) / area(A ∪ B)``, after
    invalid geometries are repaired with ``shapely.make_valid`` (only their
    polygonal parts count). Candidate pairs come from a ``shapely.STRtree``.

    Args:
        pred: ``N`` predicted polygons (or multipolygons).
        truth: ``M`` true polygons, in the same coordinate system.
        iou_threshold: smallest IoU of a match, in ``(0, 1]``.
        pred_scores: ``(N,)`` scores; higher scores choose first.
        pred_classes: ``(N,)`` integer class ids; with ``truth_classes``, only
            pairs of the same class can match.
        truth_classes: ``(M,)`` integer class ids.

    Returns:
        The :class:`Matching`.

    Raises:
        ConfigError: ``iou_threshold`` is out of range, or only one of
            ``pred_classes`` / ``truth_classes`` is given.
        ValueError: a geometry is missing or not polygonal, or an array does not
            have one value per geometry.
    """
    if not 0 < iou_threshold <= 1:
        raise ConfigError(f"iou_threshold must be in (0, 1] (e.g. 0.5), got {iou_threshold!r}.")
    p = _polygons(pred, "pred")
    t = _polygons(truth, "truth")
    scores = _scores(pred_scores, len(p))
    pc, tc = _classes(pred_classes, truth_classes, len(p), len(t))
    i, j, iou = _order_pairs(_rank(scores, len(p)), *_candidate_pairs(p, t, pc, tc), ties="first")
    above = iou >= iou_threshold
    i, j, iou = i[above], j[above], iou[above]
    match = _greedy(i, j, len(p))
    chosen = match[i] == j
    pairs = np.stack([i[chosen], j[chosen]], axis=1).reshape(-1, 2)
    ious = iou[chosen]
    pred_iou = np.zeros(len(p))
    pred_iou[pairs[:, 0]] = ious
    pred_status = np.where(match >= 0, "TP", "FP").astype(object)
    truth_status = np.full(len(t), "FN", dtype=object)
    truth_status[pairs[:, 1]] = "TP"
    return Matching(pred_status, truth_status, pairs, ious, pred_iou)


# --- objects: counts --------------------------------------------------------------------


def _counts(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """tp/fp/fn, precision, recall, F1 and the count error of one group of objects."""
    n_pred, n_true = tp + fp, tp + fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "count_true": n_true,
        "count_pred": n_pred,
        "count_error": n_pred - n_true,
        "count_error_pct": _pct(n_pred - n_true, n_true),
    }


def _class_key(c: int, class_names: Sequence[str] | None) -> Any:
    """The key of class id ``c`` in per-class results: its name, or the id itself."""
    if class_names is None:
        return c
    if not 0 <= c < len(class_names):
        raise ConfigError(f"Class id {c} has no name in class_names {list(class_names)!r}; give one name per id.")
    return class_names[c]


def object_metrics(
    matching: Matching,
    *,
    pred_classes: ArrayLike | None = None,
    truth_classes: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Object counts, precision, recall, F1 and count error, overall and per class.

    ``precision = tp / (tp + fp)`` (``None`` with no predictions),
    ``recall = tp / (tp + fn)`` (``None`` with no truth),
    ``f1 = 2 tp / (2 tp + fp + fn)`` (``None`` with neither),
    ``count_error = count_pred - count_true`` and
    ``count_error_pct = 100 * count_error / count_true`` (``None`` with no truth).

    Args:
        matching: the result of :func:`match_objects`.
        pred_classes: ``(N,)`` integer class ids of the predictions (as given to
            :func:`match_objects`); with ``truth_classes``, adds ``per_class``.
        truth_classes: ``(M,)`` integer class ids of the truths.
        class_names: names of the class ids, used as ``per_class`` keys (default:
            the ids themselves).

    Returns:
        ``{"tp", "fp", "fn", "precision", "recall", "f1", "count_true",
        "count_pred", "count_error", "count_error_pct", "mean_matched_iou",
        "per_class"}``; ``per_class`` maps each class present in truth or
        prediction, in id order, to the same counts (without
        ``mean_matched_iou``), and is ``{}`` without classes.

    Raises:
        ConfigError: only one of ``pred_classes`` / ``truth_classes`` is given,
            or a class id has no name.
        ValueError: the class arrays do not fit the matching, or the matching
            paired objects of different classes (it was not class-aware).
    """
    n_pred, n_truth = len(matching.pred_status), len(matching.truth_status)
    pred_tp = matching.pred_status == "TP"
    truth_tp = matching.truth_status == "TP"
    result = _counts(int(pred_tp.sum()), int((~pred_tp).sum()), int((~truth_tp).sum()))
    result["mean_matched_iou"] = float(np.mean(matching.ious)) if len(matching.ious) else None
    result["per_class"] = {}
    if pred_classes is None and truth_classes is None:
        return result
    pc, tc = _classes(pred_classes, truth_classes, n_pred, n_truth)
    if len(matching.pairs) and (pc[matching.pairs[:, 0]] != tc[matching.pairs[:, 1]]).any():
        raise ValueError(
            "The matching pairs objects of different classes; match with pred_classes and truth_classes "
            "(class-aware) before asking for per-class metrics."
        )
    for c in np.unique(np.concatenate([pc, tc])).tolist():
        in_p, in_t = pc == c, tc == c
        tp = int((pred_tp & in_p).sum())
        result["per_class"][_class_key(c, class_names)] = _counts(
            tp, int((~pred_tp & in_p).sum()), int((~truth_tp & in_t).sum())
        )
    return result


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
