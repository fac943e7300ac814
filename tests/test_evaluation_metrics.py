"""Evaluation metrics (geovision.evaluation.metrics): every expected value worked out by hand."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import shapely
from shapely import box

from geovision.errors import ConfigError
from geovision.evaluation.metrics import (
    Matching,
    average_precision,
    confidence_bands,
    confusion_matrix,
    match_objects,
    object_metrics,
    pixel_metrics,
)

approx = pytest.approx


# --- confusion matrix and pixel metrics ------------------------------------------------

# 3 classes: 0 background, 1 building, 2 road; 255 = unlabelled.
TRUTH = np.array([
    [0, 0, 1, 1],
    [0, 1, 1, 2],
    [2, 2, 2, 255],
], dtype=np.uint8)
PRED = np.array([
    [0, 1, 1, 1],
    [0, 0, 1, 2],
    [2, 2, 0, 2],
], dtype=np.uint8)
# (truth, pred) per pixel, (2, 3) ignored:
#   row 0: (0,0) (0,1) (1,1) (1,1)
#   row 1: (0,0) (1,0) (1,1) (2,2)
#   row 2: (2,2) (2,2) (2,0)
# counts: (0,0)=2 (0,1)=1 (1,0)=1 (1,1)=3 (2,0)=1 (2,2)=3, 11 pixels in all.
CM = [[2, 1, 0],
      [1, 3, 0],
      [1, 0, 3]]
NAMES = ["background", "building", "road"]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(TRUTH, PRED, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == CM


def test_confusion_matrix_ignore_in_pred_and_valid_mask() -> None:
    pred = PRED.copy()
    pred[0, 0] = 255  # drops the (0,0) pixel: (0,0) count 2 -> 1
    valid = np.ones(TRUTH.shape, bool)
    valid[1, 3] = False  # drops a (2,2) pixel: 3 -> 2
    valid[2, 3] = False  # already ignored by truth
    assert confusion_matrix(TRUTH, pred, 3, valid=valid).tolist() == [[1, 1, 0], [1, 3, 0], [1, 0, 2]]
    # ignore=None: 255 is then a class id out of range
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(TRUTH, PRED, 3, ignore=None)


def test_confusion_matrix_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(TRUTH, PRED[:2], 3)
    with pytest.raises(ValueError, match=r"\[3\] outside 0..2"):
        confusion_matrix(TRUTH, np.full(TRUTH.shape, 3), 3)
    with pytest.raises(ValueError, match="valid has shape"):
        confusion_matrix(TRUTH, PRED, 3, valid=np.ones((2, 2), bool))
    with pytest.raises(ConfigError, match="num_classes"):
        confusion_matrix(TRUTH, PRED, 0)
    with pytest.raises(ValueError, match="dtype float"):
        confusion_matrix(TRUTH.astype(float), PRED, 3)


def test_confusion_matrices_of_blocks_add_up() -> None:
    whole = confusion_matrix(TRUTH, PRED, 3)
    parts = confusion_matrix(TRUTH[:, :2], PRED[:, :2], 3) + confusion_matrix(TRUTH[:, 2:], PRED[:, 2:], 3)
    assert (whole == parts).all()


def test_pixel_metrics_by_hand() -> None:
    m = pixel_metrics(np.array(CM), NAMES, pixel_area_m2=0.25)
    bg, bld, road = (m["per_class"][n] for n in NAMES)
    # background: tp 2, predicted 4 (column sum) -> fp 2, true 3 (row sum) -> fn 1
    assert bg["iou"] == approx(2 / 5) and bg["f1"] == approx(4 / 7)
    assert bg["precision"] == approx(0.5) and bg["recall"] == approx(2 / 3)
    # building: tp 3, predicted 4 -> fp 1, true 4 -> fn 1
    assert bld["iou"] == approx(3 / 5) and bld["f1"] == approx(6 / 8)
    assert bld["precision"] == approx(3 / 4) and bld["recall"] == approx(3 / 4)
    # road: tp 3, predicted 3 -> fp 0, true 4 -> fn 1
    assert road["iou"] == approx(3 / 4) and road["f1"] == approx(6 / 7)
    assert road["precision"] == approx(1.0) and road["recall"] == approx(3 / 4)
    # areas at 0.25 m² per pixel
    assert (bg["true_pixels"], bg["pred_pixels"]) == (3, 4)
    assert (bg["true_area_m2"], bg["pred_area_m2"], bg["area_error_m2"]) == approx((0.75, 1.0, 0.25))
    assert bg["area_error_pct"] == approx(100 / 3)
    assert (bld["true_area_m2"], bld["pred_area_m2"], bld["area_error_m2"], bld["area_error_pct"]) == approx(
        (1.0, 1.0, 0.0, 0.0))
    assert (road["true_area_m2"], road["pred_area_m2"], road["area_error_m2"]) == approx((1.0, 0.75, -0.25))
    assert road["area_error_pct"] == approx(-25.0)
    # means leave out background (class 0)
    assert m["mean_iou"] == approx((3 / 5 + 3 / 4) / 2)
    assert m["mean_f1"] == approx((6 / 8 + 6 / 7) / 2)
    assert m["overall_accuracy"] == approx(8 / 11)
    assert m["confusion"] == CM
    assert np.allclose(m["confusion_normalized"], [[2 / 3, 1 / 3, 0], [1 / 4, 3 / 4, 0], [1 / 4, 0, 3 / 4]])
    # background=None: all three classes in the mean
    assert pixel_metrics(np.array(CM), NAMES, background=None)["mean_iou"] == approx((2 / 5 + 3 / 5 + 3 / 4) / 3)


def test_pixel_metrics_class_absent_everywhere_is_none() -> None:
    cm = confusion_matrix(TRUTH, PRED, 4)  # class 3 "water" appears nowhere
    m = pixel_metrics(cm, [*NAMES, "water"])
    water = m["per_class"]["water"]
    assert (water["iou"], water["f1"], water["precision"], water["recall"]) == (None, None, None, None)
    assert (water["true_pixels"], water["pred_pixels"], water["area_error_m2"]) == (0, 0, 0.0)
    assert water["area_error_pct"] is None
    assert m["mean_iou"] == approx((3 / 5 + 3 / 4) / 2)  # unchanged: water is not averaged as 0
    assert m["confusion_normalized"][3] == [0.0, 0.0, 0.0, 0.0]


def test_pixel_metrics_empty_prediction() -> None:
    truth = np.where(TRUTH == 255, 2, TRUTH)  # 3 background, 4 building, 5 road
    m = pixel_metrics(confusion_matrix(truth, np.zeros_like(truth), 3), NAMES)
    bld, road = m["per_class"]["building"], m["per_class"]["road"]
    # never predicted: precision undefined, recall/IoU/F1 0, the whole area missed
    assert (bld["iou"], bld["f1"], bld["precision"], bld["recall"]) == (0.0, 0.0, None, 0.0)
    assert bld["area_error_m2"] == -4.0 and bld["area_error_pct"] == -100.0
    assert road["area_error_pct"] == -100.0
    assert m["mean_iou"] == 0.0 and m["mean_f1"] == 0.0
    assert m["per_class"]["background"]["precision"] == approx(3 / 12)
    assert m["overall_accuracy"] == approx(3 / 12)


def test_pixel_metrics_empty_truth() -> None:
    truth = np.zeros((2, 3), np.uint8)
    pred = np.array([[0, 1, 1], [0, 0, 0]], np.uint8)
    m = pixel_metrics(confusion_matrix(truth, pred, 3), NAMES, pixel_area_m2=0.25)
    bld, road = m["per_class"]["building"], m["per_class"]["road"]
    # building predicted on 2 background pixels: recall undefined, precision/IoU/F1 0
    assert (bld["iou"], bld["f1"], bld["precision"], bld["recall"]) == (0.0, 0.0, 0.0, None)
    assert bld["pred_area_m2"] == 0.5 and bld["area_error_m2"] == 0.5 and bld["area_error_pct"] is None
    assert road["iou"] is None  # absent everywhere
    assert m["mean_iou"] == 0.0  # only building is present
    # nothing but background anywhere: no class to average
    m = pixel_metrics(confusion_matrix(truth, truth, 3), NAMES)
    assert m["mean_iou"] is None and m["mean_f1"] is None and m["overall_accuracy"] == 1.0


def test_pixel_metrics_errors() -> None:
    with pytest.raises(ConfigError, match="2 names"):
        pixel_metrics(np.array(CM), NAMES[:2])
    with pytest.raises(ConfigError, match="pixel_area_m2"):
        pixel_metrics(np.array(CM), NAMES, pixel_area_m2=0)
    with pytest.raises(ConfigError, match="background"):
        pixel_metrics(np.array(CM), NAMES, background=3)
    with pytest.raises(ValueError, match="square"):
        pixel_metrics(np.zeros((2, 3)), NAMES)
    # nothing counted at all
    assert pixel_metrics(np.zeros((3, 3), np.int64), NAMES)["overall_accuracy"] is None


# --- object matching ----------------------------------------------------------------------


def test_match_exact_and_just_above_and_below_half() -> None:
    # A 10 x 10 truth and the same square shifted right by d: IoU = 10 (10 - d) / (10 (10 + d)).
    truth = [box(0, 0, 10, 10), box(100, 0, 110, 10), box(200, 0, 210, 10)]
    pred = [box(0, 0, 10, 10), box(103.3, 0, 113.3, 10), box(203.4, 0, 213.4, 10)]
    m = match_objects(pred, truth)
    assert list(m.pred_status) == ["TP", "TP", "FP"]
    assert list(m.truth_status) == ["TP", "TP", "FN"]
    assert m.pairs.tolist() == [[0, 0], [1, 1]] and m.pairs.dtype == np.int64
    assert m.ious == approx([1.0, 6.7 / 13.3], abs=1e-12)  # 0.50376 >= 0.5
    assert m.pred_iou == approx([1.0, 6.7 / 13.3, 0.0], abs=1e-12)  # the FP's IoU, 6.6 / 13.4 = 0.4925, is not kept
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    # IoU exactly 0.5 (2 x 1 inside 4 x 1) matches: the threshold is inclusive
    assert list(match_objects([box(0, 0, 2, 1)], [box(0, 0, 4, 1)]).pred_status) == ["TP"]
    # a lower threshold lets the 0.4925 pair match
    assert list(match_objects(pred, truth, iou_threshold=0.49).pred_status) == ["TP", "TP", "TP"]


def test_match_one_prediction_over_two_truths() -> None:
    pred = [box(0, 0, 10, 10)]
    truth = [box(0, 6, 10, 12), box(0, 0, 10, 6)]  # IoU 40 / 120 = 1/3 and 60 / 100 = 0.6
    m = match_objects(pred, truth, iou_threshold=0.3)
    assert m.pairs.tolist() == [[0, 1]]  # the better one; the other stays a miss
    assert list(m.truth_status) == ["FN", "TP"]
    assert m.ious == approx([0.6])
    # equal IoUs (9/11 each side): the first truth is taken
    m = match_objects([box(0, 0, 10, 10)], [box(1, 0, 11, 10), box(-1, 0, 9, 10)])
    assert m.pairs.tolist() == [[0, 0]] and m.ious == approx([9 / 11])


def test_match_greedy_by_score() -> None:
    truth = [box(0, 0, 10, 10)]
    pred = [box(0, 0, 10, 10), box(0, 1, 10, 11)]  # IoU 1 and 90 / 110
    # the better-scored prediction chooses first, even though the other fits perfectly
    m = match_objects(pred, truth, pred_scores=[0.3, 0.9])
    assert list(m.pred_status) == ["FP", "TP"] and m.pairs.tolist() == [[1, 0]]
    assert m.pred_iou == approx([0.0, 9 / 11])
    # no scores: input order
    m = match_objects(pred, truth)
    assert list(m.pred_status) == ["TP", "FP"]
    # equal scores: input order (stable)
    assert list(match_objects(pred, truth, pred_scores=[0.5, 0.5]).pred_status) == ["TP", "FP"]
    # a high-scored prediction takes its best truth, leaving the lower one without a match
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    pred = [box(0, 0, 10, 10), box(2, 0, 12, 10)]  # the second: IoU 80/120 = 2/3 with truth 0
    m = match_objects(pred, truth, pred_scores=[0.1, 0.8])
    assert m.pairs.tolist() == [[1, 0]] and list(m.truth_status) == ["TP", "FN"]


def test_match_is_class_aware() -> None:
    pred = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    m = match_objects(pred, truth, pred_classes=[1, 2], truth_classes=[1, 1])
    assert list(m.pred_status) == ["TP", "FP"] and list(m.truth_status) == ["TP", "FN"]
    # without classes they all match
    assert match_objects(pred, truth).tp == 2
    with pytest.raises(ConfigError, match="both"):
        match_objects(pred, truth, pred_classes=[1, 2])


def test_match_empty_inputs() -> None:
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    m = match_objects([], truth)
    assert list(m.truth_status) == ["FN", "FN"] and len(m.pred_status) == 0
    assert m.pairs.shape == (0, 2) and m.ious.shape == (0,) and m.pred_iou.shape == (0,)
    m = match_objects(truth, [], pred_scores=[0.2, 0.1])
    assert list(m.pred_status) == ["FP", "FP"] and len(m.truth_status) == 0
    assert m.pred_iou.tolist() == [0.0, 0.0]
    m = match_objects([], [])
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)


def test_match_repairs_invalid_geometry() -> None:
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-crossing: two triangles of 25 m²
    assert not bowtie.is_valid
    m = match_objects([bowtie], [box(0, 0, 10, 10)])
    assert m.ious == approx([0.5])  # 50 / 100
    assert m.tp == 1


def test_match_rejects_bad_geometry_and_options() -> None:
    with pytest.raises(ValueError, match="Point"):
        match_objects([shapely.Point(0, 0)], [box(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="not a shapely geometry"):
        match_objects([None], [box(0, 0, 1, 1)])
    with pytest.raises(ConfigError, match="iou_threshold"):
        match_objects([], [], iou_threshold=0)
    with pytest.raises(ValueError, match="pred_scores"):
        match_objects([box(0, 0, 1, 1)], [], pred_scores=[0.1, 0.2])


def _brute_force_match(pred: list, truth: list, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """The greedy rule over all pairs, one loop at a time."""
    taken: set[int] = set()
    pairs = []
    for p in np.argsort(-scores, kind="stable"):
        best, best_iou = -1, threshold
        for t, g in enumerate(truth):
            if t in taken:
                continue
            union = pred[p].union(g).area
            iou = pred[p].intersection(g).area / union if union else 0.0
            if iou > 0 and (iou > best_iou or (best < 0 and iou >= best_iou)):
                best, best_iou = t, iou
        if best >= 0:
            taken.add(best)
            pairs.append([int(p), best])
    return pairs


@pytest.mark.parametrize("seed", range(5))
def test_match_agrees_with_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = [box(x, y, x + w, y + h) for x, y, w, h in rng.uniform([0, 0, 2, 2], [60, 60, 12, 12], (30, 4))]
    pred = [box(x, y, x + w, y + h) for x, y, w, h in rng.uniform([0, 0, 2, 2], [60, 60, 12, 12], (40, 4))]
    scores = rng.random(40)
    m = match_objects(pred, truth, iou_threshold=0.1, pred_scores=scores)
    assert m.pairs.tolist() == _brute_force_match(pred, truth, scores, 0.1)


# --- object metrics ------------------------------------------------------------------------


def test_object_metrics_overall_and_per_class() -> None:
    names = ["road", "building", "tree", "car"]
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10), box(200, 0, 210, 10)]
    truth_classes = [0, 0, 1, 2]
    pred = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(41, 0, 51, 10), box(100, 100, 110, 110), box(300, 0, 310, 10)]
    pred_classes = [0, 1, 1, 1, 3]
    # pred 0 = truth 0 (class 0): TP; pred 1 on truth 1 but class 1 vs 0: FP and FN;
    # pred 2 ~ truth 2 (class 1, IoU 90/110): TP; pred 3 and pred 4: FP; truth 3 (class 2): FN.
    m = match_objects(pred, truth, pred_classes=pred_classes, truth_classes=truth_classes)
    r = object_metrics(m, pred_classes=pred_classes, truth_classes=truth_classes, class_names=names)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 3, 2)
    assert r["precision"] == approx(2 / 5) and r["recall"] == approx(2 / 4) and r["f1"] == approx(4 / 9)
    assert (r["count_true"], r["count_pred"], r["count_error"]) == (4, 5, 1)
    assert r["count_error_pct"] == approx(25.0)
    assert r["mean_matched_iou"] == approx((1 + 9 / 11) / 2)
    pc = r["per_class"]
    assert list(pc) == names
    # road: 1 prediction (TP), 2 truths -> 1 FN
    assert (pc["road"]["tp"], pc["road"]["fp"], pc["road"]["fn"]) == (1, 0, 1)
    assert pc["road"]["precision"] == 1.0 and pc["road"]["recall"] == 0.5 and pc["road"]["f1"] == approx(2 / 3)
    assert (pc["road"]["count_error"], pc["road"]["count_error_pct"]) == (-1, -50.0)
    # building: 3 predictions, 1 TP; 1 truth
    assert (pc["building"]["tp"], pc["building"]["fp"], pc["building"]["fn"]) == (1, 2, 0)
    assert pc["building"]["precision"] == approx(1 / 3) and pc["building"]["recall"] == 1.0
    assert pc["building"]["f1"] == approx(0.5) and pc["building"]["count_error_pct"] == approx(200.0)
    # tree: no prediction -> precision undefined
    assert pc["tree"]["precision"] is None and pc["tree"]["recall"] == 0.0 and pc["tree"]["f1"] == 0.0
    assert pc["tree"]["count_error_pct"] == -100.0
    # car: no truth -> recall and relative count error undefined
    assert pc["car"]["recall"] is None and pc["car"]["precision"] == 0.0 and pc["car"]["f1"] == 0.0
    assert pc["car"]["count_error"] == 1 and pc["car"]["count_error_pct"] is None


def test_object_metrics_undefined_and_errors() -> None:
    r = object_metrics(match_objects([], []))
    assert (r["precision"], r["recall"], r["f1"], r["count_error_pct"], r["mean_matched_iou"]) == (None,) * 5
    assert r["per_class"] == {}
    r = object_metrics(match_objects([], [box(0, 0, 1, 1)]))
    assert (r["precision"], r["recall"], r["f1"], r["count_error_pct"]) == (None, 0.0, 0.0, -100.0)
    # per-class metrics of a matching made without classes are refused when pairs cross classes
    pred, truth = [box(0, 0, 1, 1)], [box(0, 0, 1, 1)]
    with pytest.raises(ValueError, match="class-aware"):
        object_metrics(match_objects(pred, truth), pred_classes=[0], truth_classes=[1])
    with pytest.raises(ConfigError, match="no name"):
        object_metrics(match_objects(pred, truth), pred_classes=[5], truth_classes=[5], class_names=["a"])


# --- average precision ----------------------------------------------------------------------


def test_average_precision_by_hand() -> None:
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    a = box(0, 0, 10, 10)  # score 0.9: truth 0 exactly
    b = box(60, 0, 70, 10)  # score 0.8: nothing there
    c = box(21, 0, 31, 10)  # score 0.7: truth 1 at IoU 90/110 = 0.818
    d = box(0, 0, 10, 10)  # score 0.6: truth 0 again, already taken
    r = average_precision([d, c, a, b], truth, [0.6, 0.7, 0.9, 0.8])
    # IoU 0.5 .. 0.8: in score order a b c d = TP FP TP FP
    #   recall    1/3 1/3 2/3 2/3
    #   precision 1   1/2 2/3 1/2  -> envelope 1 2/3 2/3 1/2
    #   recall points 0.00..0.33 (34) -> 1, 0.34..0.66 (33) -> 2/3, 0.67..1.00 (34) -> 0
    #   AP = (34 + 33 * 2/3) / 101 = 56/101
    # IoU 0.85 .. 0.95: c misses too: TP FP FP FP -> (34 * 1) / 101
    assert r["ap50"] == approx(56 / 101, abs=1e-12)
    assert r["ap75"] == approx(56 / 101, abs=1e-12)
    assert r["map"] == approx((7 * 56 + 3 * 34) / (10 * 101), abs=1e-12)
    assert r["per_class"] == {0: {"ap50": approx(56 / 101), "ap75": approx(56 / 101), "map": approx(r["map"]),
                                  "count_true": 3, "count_pred": 4}}
    curve = r["pr_curve"][0]
    assert curve["recall"] == approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert curve["precision"] == approx([1, 1 / 2, 2 / 3, 1 / 2])
    assert curve["score"] == approx([0.9, 0.8, 0.7, 0.6])
    # one threshold only; ap75 is still reported
    r = average_precision([d, c, a, b], truth, [0.6, 0.7, 0.9, 0.8], iou_thresholds=[0.9])
    assert r["map"] == approx(34 / 101) and r["ap50"] == approx(56 / 101) and r["iou_thresholds"] == [0.9]


def test_average_precision_empty_and_per_class() -> None:
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    r = average_precision([], truth, [])
    assert (r["ap50"], r["ap75"], r["map"]) == (0.0, 0.0, 0.0)
    assert r["pr_curve"][0] == {"recall": [], "precision": [], "score": []}
    r = average_precision(truth, [], [0.5, 0.4])
    assert (r["ap50"], r["map"]) == (None, None) and r["per_class"][0]["map"] is None
    # class 0 found perfectly, class 1 missed, class 2 only predicted (no truth: left out of the mean)
    pred = [box(0, 0, 10, 10), box(100, 0, 110, 10)]
    r = average_precision(pred, truth, [0.9, 0.8], pred_classes=[0, 2], truth_classes=[0, 1],
                          class_names=["a", "b", "c"])
    assert r["per_class"]["a"]["map"] == 1.0 and r["per_class"]["b"]["map"] == 0.0
    assert r["per_class"]["c"] == {"ap50": None, "ap75": None, "map": None, "count_true": 0, "count_pred": 1}
    assert r["map"] == 0.5 and set(r["pr_curve"]) == {"a", "b"}
    with pytest.raises(ConfigError, match="iou_thresholds"):
        average_precision(pred, truth, [0.9, 0.8], iou_thresholds=[0.0])
    with pytest.raises(ValueError, match="pred_scores is required"):
        average_precision(pred, truth, None)  # type: ignore[arg-type]


def _coco_stats(boxes_t: np.ndarray, cls_t: np.ndarray, boxes_p: np.ndarray, cls_p: np.ndarray,
                scores: np.ndarray) -> tuple[float, float]:
    """pycocotools' mAP@[.5:.95] and AP@.5 for one image (xyxy boxes, class ids 0/1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: np.ndarray) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b),
             "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
            for k, (b, c) in enumerate(zip(boxes_t, cls_t))
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                         for b, c, s in zip(boxes_p, cls_p, scores)])
        ev = COCOeval(gt, dt, "bbox")
        assert max(np.bincount(cls_p)) <= ev.params.maxDets[-1]  # 100: stats[0] and stats[1] see every box
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.parametrize("integer", [True, False], ids=["integer", "float"])
@pytest.mark.parametrize("seed", range(6))
def test_average_precision_equals_pycocotools(seed: int, integer: bool) -> None:
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(seed)
    n_t = int(rng.integers(5, 25))
    xy = rng.uniform(0, 150, (n_t, 2))
    wh = rng.uniform(5, 30, (n_t, 2))
    boxes_t = np.concatenate([xy, xy + wh], axis=1)
    # predictions: jittered copies of most truths (some twice), plus strays
    src = rng.choice(n_t, int(n_t * 1.2))
    boxes_p = boxes_t[src] + rng.normal(0, 2, (len(src), 4))
    stray_xy = rng.uniform(0, 150, (8, 2))
    boxes_p = np.concatenate([boxes_p, np.concatenate([stray_xy, stray_xy + rng.uniform(5, 30, (8, 2))], axis=1)])
    if integer:  # integer boxes: ties in IoU happen, and both sides compute them exactly
        boxes_t, boxes_p = np.round(boxes_t), np.round(boxes_p)
    boxes_p[:, 2:] = np.maximum(boxes_p[:, 2:], boxes_p[:, :2] + 1)
    cls_t = rng.integers(0, 2, n_t)
    cls_p = np.concatenate([np.where(rng.random(len(src)) < 0.9, cls_t[src], 1 - cls_t[src]),
                            rng.integers(0, 2, 8)])
    # copies score higher than strays; one decimal: ties in score, broken by input order
    scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, len(src)), rng.uniform(0.0, 0.7, 8)]), 1)
    ours = average_precision([box(*b) for b in boxes_p], [box(*b) for b in boxes_t], scores,
                             pred_classes=cls_p, truth_classes=cls_t)
    coco_map, coco_ap50 = _coco_stats(boxes_t, cls_t, boxes_p, cls_p, scores)
    assert ours["map"] == approx(coco_map, abs=1e-6)
    assert ours["ap50"] == approx(coco_ap50, abs=1e-6)


def test_average_precision_breaks_iou_ties_like_pycocotools() -> None:
    # prediction 0 meets truths A and B at IoU 9/11 each; COCO gives it the later one (B), which
    # leaves A to prediction 1 (IoU 90/110); with A taken, prediction 1 would have B at only 70/130.
    truth = [box(1, 0, 11, 10), box(-1, 0, 9, 10)]
    pred = [box(0, 0, 10, 10), box(2, 0, 12, 10)]
    r = average_precision(pred, truth, [0.9, 0.8])
    # IoU 0.5 .. 0.8: both TP -> AP 1; 0.85 .. 0.95: neither -> AP 0
    assert r["ap50"] == 1.0 and r["ap75"] == 1.0 and r["map"] == approx(0.7)
    # match_objects follows solaris instead (the first truth): prediction 1 then fails at 0.55
    assert match_objects(pred, truth, iou_threshold=0.55).pairs.tolist() == [[0, 0]]
    pytest.importorskip("pycocotools")
    coco_map, coco_ap50 = _coco_stats(np.array([b.bounds for b in truth]), np.zeros(2, int),
                                      np.array([b.bounds for b in pred]), np.zeros(2, int), np.array([0.9, 0.8]))
    assert (r["map"], r["ap50"]) == approx((coco_map, coco_ap50), abs=1e-6)


# --- confidence bands -------------------------------------------------------------------------


def test_confidence_bands_by_hand() -> None:
    truth = [box(x, 0, x + 10, 10) for x in (0, 20, 40, 60, 80)]
    pred = [box(0, 0, 10, 10), box(500, 0, 510, 10), box(20, 0, 30, 10),
            box(600, 0, 610, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)]
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 1.0])
    m = match_objects(pred, truth, pred_scores=scores)
    assert list(m.pred_status) == ["TP", "FP", "TP", "FP", "TP", "TP"]  # truth 80 is missed
    bands = confidence_bands(m, scores)
    # [0, 0.3): 0.1 TP, 0.2 FP | [0.3, 0.6): 0.3 TP, 0.5 FP | [0.6, 1.0]: 0.6 TP, 1.0 TP (the last band holds 1.0)
    assert [(b["lo"], b["hi"], b["n_pred"], b["tp"], b["fp"]) for b in bands] == [
        (0.0, 0.3, 2, 1, 1), (0.3, 0.6, 2, 1, 1), (0.6, 1.0, 2, 2, 0)]
    assert [b["precision"] for b in bands] == approx([0.5, 0.5, 1.0])
    assert [b["recall_contribution"] for b in bands] == approx([1 / 5, 1 / 5, 2 / 5])
    assert sum(b["recall_contribution"] for b in bands) == approx(4 / 5)  # the overall recall
    # an empty band has no precision; n_truth=0 leaves recall undefined
    bands = confidence_bands(m, scores, bands=[(0.0, 0.05), (0.05, 1.0)], n_truth=0)
    assert bands[0]["n_pred"] == 0 and bands[0]["precision"] is None
    assert bands[1]["n_pred"] == 6 and bands[1]["precision"] == approx(4 / 6)
    assert bands[1]["recall_contribution"] is None
    with pytest.raises(ConfigError, match="lo < hi"):
        confidence_bands(m, scores, bands=[(0.5, 0.5)])
    with pytest.raises(ValueError, match="pred_scores"):
        confidence_bands(m, scores[:3])


def test_matching_is_a_frozen_value() -> None:
    m = match_objects([box(0, 0, 1, 1)], [box(0, 0, 1, 1)])
    assert isinstance(m, Matching) and repr(m) == "Matching(tp=1, fp=0, fn=0)"
    with pytest.raises(AttributeError):
        m.pairs = np.zeros((0, 2))  # type: ignore[misc]
