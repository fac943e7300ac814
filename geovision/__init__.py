"""geovision: find, count and measure things in large georeferenced imagery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from geovision.workflows.predict import PredictResult


def predict(rasters: Any, model: Any, out: Any, **options: Any) -> PredictResult:
    """Segment rasters with a model bundle; see :func:`geovision.workflows.predict.predict`."""
    from geovision.workflows.predict import predict as _predict

    return _predict(rasters, model, out, **options)


__all__ = ["__version__", "predict"]
