"""The engine's extension points, as typed protocols.

A run streams tiles through four kinds of part; each is a :class:`typing.Protocol`, so
a new implementation needs no base class, only the methods below (and passes the
contract test of its kind in ``tests/test_engine_contracts.py``):

* :class:`Backend`: an inference runtime; a batch of raw tiles in, one output per tile out.
  Implemented by the PyTorch predictors of :mod:`geovision.models`; another inference
  runtime (ONNX Runtime, OpenVINO) is one more implementation.
* :class:`TileConsumer`: takes each tile's output, in grid order, on the stitcher thread
  (:mod:`geovision.engine.segmentation`, :mod:`geovision.engine.detection`).
* :class:`FeatureSink`: where a consumer appends finished features during the run
  (:class:`geovision.io.vector.LayerSink`, :class:`geovision.engine.sinks.ReviewSink`).
* :class:`OutputTarget`: where the run's layers go once it has succeeded
  (:class:`geovision.io.targets.FileTarget`; a database or object store is another).

The stitcher receives :data:`StitchMessage` values: a :class:`TileResult` per tile
predicted, a :class:`TileSkipped` per tile that held only nodata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from geovision.types import Tile

if TYPE_CHECKING:
    import geopandas as gpd

    from geovision.io.vector import FeatureBatch

__all__ = [
    "Backend",
    "FeatureSink",
    "LayerSpec",
    "OutputTarget",
    "StitchMessage",
    "TileConsumer",
    "TileResult",
    "TileSkipped",
]


@dataclass(frozen=True, slots=True)
class TileResult:
    """One tile's model output, on its way to the stitcher.

    Attributes:
        tile: the tile (its window in raster pixels).
        output: segmentation: ``(classes, T, T)`` float32 probabilities; detection:
            ``(boxes_xyxy (n, 4) tile pixels, scores (n,), labels (n,))``.
        valid: ``(T, T)`` bool, False for nodata and padding (segmentation); ``None``
            for detection.
    """

    tile: Tile
    output: Any
    valid: np.ndarray | None


@dataclass(frozen=True, slots=True)
class TileSkipped:
    """A tile that was not predicted because every pixel of it is nodata."""

    tile: Tile


StitchMessage: TypeAlias = TileResult | TileSkipped
"""What the stitcher thread receives, per tile, in grid order."""


@runtime_checkable
class Backend(Protocol):
    """An inference backend: raw tiles in, one output per tile out.

    ``predict`` takes the tiles exactly as read (the raster's dtype; the backend
    normalises them with its own statistics) and may be called from several threads
    at once (the engine runs ``streams`` passes side by side).
    """

    @property
    def task(self) -> str:
        """``"segmentation"`` or ``"detection"``: which consumer takes the outputs."""
        ...

    def predict(self, tiles: np.ndarray, valid: np.ndarray) -> Sequence[Any]:
        """Outputs for ``(N, bands, T, T)`` tiles and their ``(N, T, T)`` validity; one per tile."""
        ...


@runtime_checkable
class TileConsumer(Protocol):
    """Turns tile outputs into finished features and rasters, on the stitcher thread.

    Each tile of the raster's grid arrives exactly once, in grid order, through
    :meth:`add` or :meth:`skip`. :meth:`finish` is called after the last tile of a run
    that succeeded; :meth:`close` always, last (after a failure without :meth:`finish`,
    it must drop whatever it was writing).
    """

    def add(self, tile: Tile, output: Any, valid: np.ndarray | None) -> None: ...

    def skip(self, tile: Tile) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class FeatureSink(Protocol):
    """A vector layer that features are appended to while the run goes on.

    ``count`` is the number of features appended; ``tally`` maps each ``class_name`` to
    ``[feature count, summed area_m2]``. :meth:`close` makes the layer complete (an empty
    layer when nothing came); :meth:`abort` drops what is not written and ends any
    writer thread.
    """

    @property
    def count(self) -> int: ...

    @property
    def tally(self) -> Mapping[str, Sequence[float]]: ...

    def append(self, features: gpd.GeoDataFrame | FeatureBatch) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """A layer of the run's scratch GeoPackage and the geometry type it has."""

    name: str
    geometry_type: str


@runtime_checkable
class OutputTarget(Protocol):
    """Where a run's vector layers go once every tile is done.

    The run writes its layers into a scratch GeoPackage; the target takes them from there.
    :meth:`write` may be called only once. Nothing written is visible at the destination
    before :meth:`commit`; after :meth:`abort` nothing of the run is left there.
    """

    def locations(self) -> dict[str, str]:
        """Layer name -> where it will be (a path, a URL), for the summary and messages."""
        ...

    def write(self, scratch: Path, layers: Sequence[LayerSpec]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...
