"""geovision: find, count and measure things in large georeferenced imagery.

``geovision.predict``, ``geovision.train`` and ``geovision.stress`` are the
workflows' own functions (:mod:`geovision.workflows.predict` and so on). They are
imported on first use (PEP 562 ``__getattr__``), so ``import geovision`` stays
cheap and no module below the workflows imports them by importing the package.
Modules inside geovision take the version from :mod:`geovision._version`, never
from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geovision._version import __version__

if TYPE_CHECKING:
    from geovision.workflows.predict import predict
    from geovision.workflows.stress import stress
    from geovision.workflows.train import train

__all__ = ["__version__", "predict", "stress", "train"]


def __getattr__(name: str) -> Any:
    """The workflow functions, imported when first asked for."""
    match name:
        case "predict":
            from geovision.workflows.predict import predict

            return predict
        case "train":
            from geovision.workflows.train import train

            return train
        case "stress":
            from geovision.workflows.stress import stress

            return stress
    raise AttributeError(f"module 'geovision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
