"""Evaluation: honest metrics for segmentation masks and detected objects.

:mod:`geovision.evaluation.metrics` holds pure functions (numpy and shapely
only, no file I/O): pixel confusion matrices and per-class IoU/F1/area error,
one-to-one object matching (the SpaceNet/solaris rule), object counts and
precision/recall/F1, COCO-style average precision and per-confidence-band
statistics. An undefined metric (for example precision with no predictions)
is ``None``, never ``0`` or ``NaN``.
"""
