"""The predictor for a bundle: picked by the bundle's task, and kept per bundle file for the process.

The top of :mod:`geovision.models`: it knows every task's predictor
(:class:`~geovision.models.segmentation.SegmentationPredictor`,
:class:`~geovision.models.detection.DetectionPredictor`), which know only their
base, :class:`~geovision.models.predictor.TilePredictor`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import torch

from geovision.models.bundle import load_bundle
from geovision.models.config import BundleConfig
from geovision.models.detection import DetectionPredictor
from geovision.models.predictor import TilePredictor
from geovision.models.segmentation import SegmentationPredictor

__all__ = ["PREDICTORS", "clear_shared_predictor", "load_predictor", "make_predictor", "shared_predictor"]

PREDICTORS: dict[str, type[TilePredictor]] = {
    SegmentationPredictor.task: SegmentationPredictor,
    DetectionPredictor.task: DetectionPredictor,
}
"""The predictor class of each task."""


def make_predictor(config: BundleConfig, state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> TilePredictor:
    """The predictor for the bundle's task (keyword arguments as :class:`TilePredictor`).

    Raises:
        BundleError: the weights do not fit the architecture.
        ConfigError: an invalid architecture, device or precision.
    """
    return PREDICTORS[config.task](config, state_dict, **kwargs)


def load_predictor(path: str | os.PathLike[str], **kwargs: Any) -> TilePredictor:
    """Load the bundle file at ``path`` and build the predictor for its task (keyword arguments as
    :class:`TilePredictor`; ``source`` defaults to the path).

    Raises:
        BundleError: the bundle is missing, invalid or modified, or its weights do not fit.
        BundleVersionError: the bundle's format version is not supported.
        ConfigError: an invalid architecture, device or precision.
    """
    config, state_dict = load_bundle(path)
    kwargs.setdefault("source", str(path))
    return make_predictor(config, state_dict, **kwargs)


#: the predictor of the bundle file used last, kept for the process: ``(file identity, options) -> predictor``
_KEPT_PREDICTOR: dict[tuple[Hashable, ...], TilePredictor] = {}
_kept_lock = threading.Lock()


def shared_predictor(path: str | os.PathLike[str], config: BundleConfig, state_dict: Mapping[str, torch.Tensor],
                     **kwargs: Any) -> TilePredictor:
    """:func:`make_predictor` for the bundle file at ``path``, kept for the process.

    A second call for the same file, unchanged (same inode, size and modification
    time), with the same keyword arguments returns the same predictor instead of
    building the model and tracing its graph again (``geovision.predict`` in a loop
    over rasters). Only the
    last one is kept. Predictors are safe to share between threads.
    """
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, tuple(sorted(kwargs.items())))
    with _kept_lock:
        found = _KEPT_PREDICTOR.get(key)
    if found is not None:
        return found
    predictor = make_predictor(config, state_dict, **kwargs)
    with _kept_lock:
        _KEPT_PREDICTOR.clear()
        _KEPT_PREDICTOR[key] = predictor
    return predictor


def clear_shared_predictor() -> None:
    """Forget the predictor kept by :func:`shared_predictor`."""
    with _kept_lock:
        _KEPT_PREDICTOR.clear()
