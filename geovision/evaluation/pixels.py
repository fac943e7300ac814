"""Pixel metrics of segmentation masks: pure functions (numpy only), no file I/O.

* :func:`confusion_matrix` counts ``(truth, prediction)`` class pairs, leaving out
  ignored and invalid pixels. Matrices of blocks add up, so a large raster can be
  counted block by block.
* :func:`pixel_metrics` turns a confusion matrix into per-class IoU, F1,
  precision, recall and area error (m²), and their means.

A metric that is undefined (precision of a class never predicted, recall of a
class with no truth, the IoU of a class absent from both) is ``None``: never
``0``, never ``NaN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from geovision.errors import ConfigError
from geovision.evaluation._common import _pct, _ratio

__all__ = ["confusion_matrix", "pixel_metrics"]


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
    ious: list[float] = []
    f1s: list[float] = []
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
        if k != background and iou is not None and f1 is not None:  # both None exactly when tp = fp = fn = 0
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
