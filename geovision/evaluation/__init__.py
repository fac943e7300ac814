"""Evaluation: honest metrics for segmentation masks and detected objects.

Pure functions (numpy and shapely only, no file I/O), by family:

* :mod:`~geovision.evaluation.pixels`: pixel confusion matrices and per-class
  IoU/F1/precision/recall and area error.
* :mod:`~geovision.evaluation.matching`: one-to-one object matching (the
  SpaceNet/solaris rule) and object counts with precision/recall/F1.
* :mod:`~geovision.evaluation.precision`: COCO-style average precision and
  per-confidence-band statistics.
* :mod:`~geovision.evaluation.metrics`: re-exports every public name above, so
  ``from geovision.evaluation.metrics import X`` works for all of them.

Import order: ``_common <- pixels``, ``_common <- matching <- precision``, and
``metrics`` on top of all three. An undefined metric (for example precision with
no predictions) is ``None``, never ``0`` or ``NaN``.
"""
