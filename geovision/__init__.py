"""geovision: find, count and measure things in large georeferenced imagery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from geovision.workflows.predict import PredictResult
    from geovision.workflows.stress import StressResult
    from geovision.workflows.train import TrainResult


def predict(rasters: Any, model: Any, out: Any, **options: Any) -> PredictResult:
    """Segment, or detect objects in, rasters with a model bundle; see :func:`geovision.workflows.predict.predict`."""
    from geovision.workflows.predict import predict as _predict

    return _predict(rasters, model, out, **options)


def train(images: Any, labels: Any, out: Any, *, class_field: str | None = None, **options: Any) -> TrainResult:
    """Train a model bundle from rasters and vector labels; see :func:`geovision.workflows.train.train`."""
    from geovision.workflows.train import train as _train

    return _train(images, labels, out, class_field=class_field, **options)


def stress(raster: Any, fields: Any, out: Any, **options: Any) -> StressResult:
    """Map crop stress and summarise it per field; see :func:`geovision.workflows.stress.stress`."""
    from geovision.workflows.stress import stress as _stress

    return _stress(raster, fields, out, **options)


__all__ = ["__version__", "predict", "stress", "train"]
