"""Crop stress on real Sentinel-2 fields: NDVI and per-field statistics for Flanders.

The raster (``../shared/data/befl_fields_s2_orthoseg``) is a May-June 2023 minimum
composite of Sentinel-2 B08, B04, B03 (NIR, red, green) at 10 m in UTM 31N, stretched to
bytes: the NDVI is computed on the byte values (scale 1, offset 0), so it ranks pixels
correctly but is not a reflectance NDVI, and the water test (NDVI < 0 and NDWI > 0)
catches bare soil too. The default run therefore turns the water mask off; ``--water``
runs with it. Prints one JSON line; the outputs stay in ``--out``::

    python benchmarks/stress_flanders.py --out /tmp/flanders-stress
    python benchmarks/stress_flanders.py --out /tmp/flanders-stress-water --water
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", default="percentile")
    parser.add_argument("--water", action="store_true", help="keep the water mask on")
    args = parser.parse_args()

    import pandas as pd

    from geovision.workflows.stress import stress

    d = args.data / "befl_fields_s2_orthoseg"
    raster = d / "BEFL-TEST-s2_2023-05-01_2023-07-01_B08-B04-B03_min_byte.tif"
    fields = d / "fields_BEFL-s2-fields-2023_polygons.gpkg"
    t0 = time.perf_counter()
    result = stress(raster, fields, args.out / "fields.gpkg", bands="nir=1,red=2,green=3", index="ndvi",
                    method=args.method, water=args.water, overwrite=True, progress=False)
    elapsed = time.perf_counter() - t0
    table = pd.read_csv(result.csv_path)
    inside = table[table["observed_ha"] > 0]
    edge_share = float(((inside["observed_ha"] - inside["area_ha"]).abs() < 1e-6).mean())
    s = result.summary
    print(json.dumps({
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "method": args.method, "water_mask": args.water, "elapsed_s": round(elapsed, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pixels": s["pixels"], "index_mean": s["index"]["mean"], "fields": s["fields"]["count"],
        "fields_with_data": s["fields"]["with_data"], "fields_wholly_inside": round(edge_share * len(inside)),
        "valid_ha": s["fields"]["valid_ha"], "water_ha": s["fields"]["water_ha"],
        "classes_ha": {k: v["area_ha"] for k, v in s["classes"].items()},
        "classes_pct": {k: v["percent_of_valid"] for k, v in s["classes"].items()},
        "field_ndvi_median_of_medians": round(float(inside["ndvi_median"].median()), 4),
        "stress_polygons": s["stress_polygons"],
        "quicklook": str(result.quicklook_path),
    }))


if __name__ == "__main__":
    main()
