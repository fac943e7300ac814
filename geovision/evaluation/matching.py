"""One-to-one matching of predicted with true objects, and object counts: pure functions, no file I/O.

Objects are polygons, in any one coordinate system.

* :func:`match_objects` pairs predictions with truths one to one (the
  SpaceNet/solaris rule): predictions in order of descending score (input order
  without scores) each take the unmatched truth of their class with the highest
  IoU, if that IoU is at least the threshold. Candidate pairs come from a
  :class:`shapely.STRtree`, never from all ``N * M`` pairs.
* :func:`object_metrics` counts true/false positives and false negatives, and
  the count error, overall and per class.

The private helpers here (input checks, candidate pairs, the greedy match,
per-class keys) are shared with :mod:`geovision.evaluation.precision`, which
runs the same greedy match at many IoU thresholds. An undefined metric
(precision with no predictions, recall with no truth) is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import ArrayLike

from geovision.errors import ConfigError
from geovision.evaluation._common import _pct, _ratio

__all__ = ["Matching", "match_objects", "object_metrics"]

_POLYGONAL = (3, 6)  # shapely type ids of Polygon, MultiPolygon
_COLLECTION = 7  # GeometryCollection


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
