"""Tiled prediction against one whole-raster tile, with a trained model on real imagery.

Prints one JSON line: the share of valid pixels whose class agrees between a tiled run
(``--tile``, ``--overlap``) and a run whose single tile covers the whole raster, and the
polygon counts of both::

    python benchmarks/tiled_vs_whole.py RASTER BUNDLE --tile 256 --overlap 64

The raster must be small enough for one tile (its larger side rounded up to 32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raster", type=Path)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import rasterio

    import geovision

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gv-tiled-"))
    with rasterio.open(args.raster) as ds:
        whole = 32 * math.ceil(max(ds.height, ds.width) / 32)
    tiled = geovision.predict(args.raster, args.bundle, work / "tiled.gpkg", tile=args.tile, overlap=args.overlap,
                              overwrite=True, progress=False)
    single = geovision.predict(args.raster, args.bundle, work / "whole.gpkg", tile=whole, overlap=0, overwrite=True,
                               progress=False)
    with rasterio.open(tiled.class_rasters[0]) as a, rasterio.open(single.class_rasters[0]) as b:
        ca, cb = a.read(1), b.read(1)
    valid = (ca != 255) & (cb != 255)
    record = {
        "raster": str(args.raster), "bundle": args.bundle.name, "tile": args.tile, "overlap": args.overlap,
        "whole_tile": whole, "valid_pixels": int(valid.sum()),
        "agreement": round(float((ca[valid] == cb[valid]).mean()), 5),
        "features_tiled": tiled.summary["features"], "features_whole": single.summary["features"],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
