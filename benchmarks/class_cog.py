"""What the class COG costs at the end of a run: GDAL's COG copy of a block-written class raster.

``predict`` writes class blocks into a tiled scratch GeoTIFF as they finish and copies it
into a COG (nearest overviews, deflate) after the raster's last tile, on a thread of its
own beside the vector writer's end. This times that copy alone, for a class raster like
the benchmark's untrained model gives (noisy two-class blobs, 512 px blocks), so it can
be set against the run's end-to-end time.

    python benchmarks/class_cog.py --size 4096 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from machine import machine

from geovision.io.raster import BLOCK_SIZE, BlockWriter, to_cog
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo


def write_classes(scratch: Path, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    info = RasterInfo(path="in.tif", height=size, width=size, count=1, dtype="uint8",
                      crs_wkt=rasterio.crs.CRS.from_epsg(32636).to_wkt(),
                      transform=tuple(Affine(0.3, 0, 450_000, 0, -0.3, 40_000))[:6], bands=(1,), nodata=None)
    writer = BlockWriter(scratch, info, count=1, dtype="uint8", nodata=255, descriptions=["class"],
                         colormap={0: (0, 0, 0, 255), 1: (200, 30, 40, 255)})
    grid = BlockGrid(size, size, BLOCK_SIZE)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            w = grid.window((r, c))
            noise = rng.random((w.height // 4 + 1, w.width // 4 + 1)) > 0.5  # 4 px blobs
            block = np.kron(noise, np.ones((4, 4), bool))[:w.height, :w.width].astype(np.uint8)
            writer.write(w, block)
    writer.close()


def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="raster edge in pixels")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory(prefix="gv-cog-") as work:
        for k in range(args.repeat):
            scratch, cog = Path(work) / f"s{k}.tif", Path(work) / f"c{k}.tif"
            write_classes(scratch, args.size)
            t0 = time.perf_counter()
            to_cog(scratch, cog, resampling="NEAREST")
            times.append(time.perf_counter() - t0)
    record = {**machine(), "size": args.size, "cog_copy_s_median": round(statistics.median(times), 3),
              "runs_s": [round(t, 3) for t in times]}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
