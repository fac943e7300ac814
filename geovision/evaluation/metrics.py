"""All evaluation metrics in one namespace: re-exports of the public names of the evaluation modules.

The functions live by family in :mod:`geovision.evaluation.pixels` (confusion
matrix, pixel metrics), :mod:`geovision.evaluation.matching` (one-to-one object
matching, object counts) and :mod:`geovision.evaluation.precision` (COCO AP,
confidence bands). ``from geovision.evaluation.metrics import match_objects``
and ``from geovision.evaluation import metrics as m; m.match_objects`` keep
working; new code may import from either place.
"""

from __future__ import annotations

from geovision.evaluation.matching import Matching as Matching
from geovision.evaluation.matching import match_objects as match_objects
from geovision.evaluation.matching import object_metrics as object_metrics
from geovision.evaluation.pixels import confusion_matrix as confusion_matrix
from geovision.evaluation.pixels import pixel_metrics as pixel_metrics
from geovision.evaluation.precision import COCO_IOU_THRESHOLDS as COCO_IOU_THRESHOLDS
from geovision.evaluation.precision import COCO_RECALL_POINTS as COCO_RECALL_POINTS
from geovision.evaluation.precision import average_precision as average_precision
from geovision.evaluation.precision import confidence_bands as confidence_bands

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
