"""The segmentation consumer: tile probabilities to blended blocks, class rasters and polygons.

Per tile, :class:`~geovision.stitching.accumulate.BlockAccumulator` adds the
taper-weighted probabilities to the 512 px blocks the tile covers; a block is finished
when its last covering tile has arrived. A finished block's classes go to a scratch
GeoTIFF (and its probabilities to another, on request) and to the
:class:`~geovision.stitching.vectorize.PolygonCollector`, whose complete polygons go to
the run's feature sink. The scratch GeoTIFFs become COGs after the raster's last tile
(:func:`finish_rasters`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from geovision.engine.protocols import FeatureSink
from geovision.io.raster import BLOCK_SIZE, BlockWriter, hex_to_rgba, probability_to_uint8, to_cog
from geovision.models.config import BundleConfig
from geovision.stitching.accumulate import CLASS_NODATA, BlockAccumulator, FinishedBlock
from geovision.stitching.vectorize import PolygonCollector
from geovision.tiling.grid import BlockGrid, TileGrid
from geovision.tiling.reader import RasterInfo
from geovision.types import Tile

__all__ = ["RasterFiles", "SegmentationConsumer", "empty_polygons", "finish_rasters", "segmentation_consumer"]


@dataclass(frozen=True, slots=True)
class RasterFiles:
    """A raster output's temporary COG and the scratch GeoTIFF written block by block before it."""

    cog: Path
    scratch: Path


class SegmentationConsumer:
    """Blends tile probabilities into blocks, writes them and vectorises them (a ``TileConsumer``)."""

    def __init__(self, accumulator: BlockAccumulator, classes: BlockWriter, probabilities: BlockWriter | None,
                 collector: PolygonCollector, sink: FeatureSink) -> None:
        self.accumulator, self.classes, self.probabilities = accumulator, classes, probabilities
        self.collector, self.sink = collector, sink

    def add(self, tile: Tile, output: Any, valid: np.ndarray | None) -> None:
        assert valid is not None, "segmentation outputs come with their validity"
        for block in self.accumulator.add(tile, output, valid):
            self._write(block)

    def skip(self, tile: Tile) -> None:
        for block in self.accumulator.skip(tile):
            self._write(block)

    def finish(self) -> None:
        self.accumulator.check_complete()
        self.sink.append(self.collector.finish_batch())

    def close(self) -> None:
        self.classes.close()
        if self.probabilities is not None:
            self.probabilities.close()

    def _write(self, block: FinishedBlock) -> None:
        self.classes.write(block.window, block.classes)
        if self.probabilities is not None:
            self.probabilities.write(block.window, probability_to_uint8(block.probabilities, block.valid))
        self.sink.append(self.collector.add_block_batch(block.window, block.classes, block.probabilities))


def segmentation_consumer(info: RasterInfo, grid: TileGrid, config: BundleConfig, sink: FeatureSink, *,
                          overlap: int, classes: RasterFiles, probabilities: RasterFiles | None = None,
                          simplify_m: float | None = None, min_area_m2: float | None = None) -> SegmentationConsumer:
    """The consumer of one raster: blocks of :data:`~geovision.io.raster.BLOCK_SIZE`, class and probability scratch.

    Args:
        info: the input raster.
        grid: its tile grid.
        config: the bundle's configuration (classes, colours, background class).
        sink: the layer polygons go to.
        overlap: tile overlap in pixels (the blending ramp).
        classes: where the class raster goes.
        probabilities: where the probability raster goes, or ``None`` for none.
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: polygons under this ground area are dropped.
    """
    blocks = BlockGrid(info.height, info.width, BLOCK_SIZE)
    accumulator = BlockAccumulator(blocks, grid.tiles, len(config.classes), ramp=overlap)
    class_names = config.class_names
    class_writer = BlockWriter(
        classes.scratch, info, count=1, dtype="uint8", nodata=CLASS_NODATA, descriptions=["class"],
        colormap={i: hex_to_rgba(c.color) for i, c in enumerate(config.classes)},
    )
    prob_writer = None
    if probabilities is not None:
        prob_writer = BlockWriter(
            probabilities.scratch, info, count=len(class_names), dtype="uint8", nodata=255,
            descriptions=[f"p({n})" for n in class_names], scale=1 / 254,
        )
    skip = () if config.background_class is None else (config.background_class,)
    collector = PolygonCollector(
        class_names=class_names, skip_classes=skip, raster_height=info.height, raster_width=info.width,
        transform=info.affine, crs=info.crs, nodata=CLASS_NODATA, simplify_m=simplify_m,
        min_area_m2=min_area_m2, source=Path(info.path).name,
    )
    return SegmentationConsumer(accumulator, class_writer, prob_writer, collector, sink)


def finish_rasters(classes: RasterFiles | None, probabilities: RasterFiles | None) -> None:
    """Copy the block-written scratch GeoTIFFs into COGs with overviews (GDAL's COG driver).

    Classes take nearest-neighbour overviews (a class is never averaged), probabilities
    averaged ones.
    """
    if classes is not None:
        to_cog(classes.scratch, classes.cog, resampling="NEAREST")
    if probabilities is not None:
        to_cog(probabilities.scratch, probabilities.cog, resampling="AVERAGE")


def empty_polygons(class_names: Sequence[str], crs: CRS) -> Any:
    """An empty polygon layer with the segmentation layer's columns and dtypes."""
    return PolygonCollector(
        class_names=class_names, skip_classes=(), raster_height=1, raster_width=1,
        transform=Affine.identity(), crs=crs,
    ).empty()
