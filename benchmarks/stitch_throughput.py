"""Stitching alone: the segmentation consumer fed the same model outputs again and again.

Runs the model once over a raster (untimed), keeps the tile probabilities, then times
``predict``'s segmentation consumer on them: blending into blocks, the class
GeoTIFF, vectorising with seam merging and the GeoPackage. Prints one JSON line::

    {"raster": ..., "tiles": ..., "features": ..., "stitch_s_min": ..., "stitch_s_median": ..., ...}

On 2 cores every CPU second of stitching is taken from the model, so this is the
number that separates ``predict_throughput.py``'s end-to-end time from its model time
on noisy output::

    python benchmarks/stitch_throughput.py --size 2048 --repeat 5

The probabilities are held in memory (8 MB per 512 px tile of 2 classes): keep the
raster small.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from predict_throughput import write_synthetic


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="synthetic raster edge in pixels")
    parser.add_argument("--raster", type=Path, help="use this raster instead of a synthetic one")
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of an untrained U-Net-ResNet18")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from geovision.engine.pipeline import heap_frozen
    from geovision.engine.segmentation import RasterFiles, segmentation_consumer
    from geovision.engine.sinks import RunLayers
    from geovision.models.bundle import load_bundle
    from geovision.models.registry import init_bundle
    from geovision.models.segmentation import SegmentationPredictor
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import open_raster, read_tiles
    from geovision.tiling.stream import batched

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gv-stitch-"))
    work.mkdir(parents=True, exist_ok=True)
    raster = args.raster or write_synthetic(work / f"synthetic_{args.size}.tif", args.size)
    bundle = args.bundle
    if bundle is None:
        torch.manual_seed(0)
        bundle = work / "unet_resnet18.safetensors"
        init_bundle(bundle, arch="unet", encoder="resnet18", bands=3, classes=["background", "object"],
                    tile_size=args.tile)
    config, state = load_bundle(bundle)
    info = open_raster(str(raster), config.bands, config.in_channels)
    grid = TileGrid(info.height, info.width, args.tile, args.overlap)
    predictor = SegmentationPredictor(config, state)
    outputs = []
    for batch in batched(grid.tiles, 4):
        read, _ = read_tiles(info, batch, args.tile)
        if read:
            probs = predictor.predict(np.stack([t.data for t in read]), np.stack([t.valid for t in read]))
            outputs += [(t.tile, p, t.valid) for t, p in zip(read, probs)]

    def stitch() -> tuple[float, int]:
        out = work / "stitch"
        out.mkdir(exist_ok=True)
        for f in out.glob("*"):
            f.unlink()
        layers = RunLayers.open(out / "s.scratch.gpkg", config, info.crs)
        with heap_frozen():  # as predict runs it
            t0 = time.perf_counter()
            consumer = segmentation_consumer(info, grid, config, layers.main, overlap=args.overlap,
                                             classes=RasterFiles(out / "s.cog.tif", out / "s.scratch.tif"))
            for tile, probs, valid in outputs:
                consumer.add(tile, probs, valid)
            consumer.finish()
            consumer.close()
            layers.close()
            return time.perf_counter() - t0, layers.main.count

    stitch()  # warm-up: imports, first allocations
    times = []
    for _ in range(args.repeat):
        seconds, features = stitch()
        times.append(seconds)
    record = {
        "raster": str(args.raster) if args.raster else f"synthetic {args.size}x{args.size} 3-band uint8",
        "bundle": Path(bundle).name, "size": [info.height, info.width], "tiles": len(outputs),
        "features": features, "stitch_s_min": round(min(times), 3),
        "stitch_s_median": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
