"""Detection throughput, the share of time spent merging tiles, and the count error.

Prints one JSON line::

    {"size": N, "objects_true": ..., "objects_found": ..., "count_error": ...,
     "end_to_end_s": ..., "model_only_s": ..., "merge_s": ..., "merge_share": ...,
     "objects_found_twice": ..., "miss_rate_on_tile_edges": ..., "miss_rate_elsewhere": ..., ...}

The count is checked one-to-one at IoU 0.5: an object found twice, or misses gathering
on tile edges, would mean the merge failed; misses spread evenly are the detector's.

The raster is ``size`` x ``size`` pixels (3-band uint8, UTM, 0.5 m) with bright
squares of 12-20 px on a jittered 40 px lattice (about 26 000 objects at 8192²),
written in strips. The detector is the test suite's FCOS on the tiny backbone,
trained here for 600 steps on random chips (about a minute; not timed),
unless ``--bundle`` names another. ``merge_s`` is the time spent inside the
:class:`~geovision.stitching.boxes.DetectionMerger` (reported by ``predict`` as
``merge_seconds``), ``merge_share = merge_s / end_to_end_s``; ``model_only_s``
is the sum of pure ``DetectionPredictor.predict`` calls over the same tiles.

``--arch-times`` adds the forward time per 512 px tile of the torchvision
architectures (untrained, 3 bands, batch 4) for comparison::

    python benchmarks/detect_throughput.py --size 8192 --arch-times
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from affine import Affine  # noqa: E402
from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def lattice_boxes(size: int, seed: int = 0, spacing: int = 40) -> np.ndarray:
    """``(N, 4)`` non-overlapping square boxes ``xyxy`` (pixels) on a jittered lattice."""
    rng = np.random.default_rng(seed)
    centres = np.arange(spacing // 2, size - spacing // 2, spacing)
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    n = cy.size
    side = rng.integers(12, 21, size=n)
    jitter = rng.integers(-(spacing - 22) // 2, (spacing - 22) // 2 + 1, size=(n, 2))
    x0 = cx.ravel() + jitter[:, 0] - side // 2
    y0 = cy.ravel() + jitter[:, 1] - side // 2
    keep = rng.random(n) < 0.65  # leave gaps, so the scene is not a perfect lattice
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)[keep]


def write_scene(path: Path, size: int, boxes: np.ndarray, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed + 1)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32631",
                   transform=Affine(0.5, 0, 500_000, 0, -0.5, 5_650_000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 512):
            r1 = min(size, r0 + 512)
            strip = rng.normal(30, 8, size=(3, r1 - r0, size))
            inside = boxes[(boxes[:, 3] > r0) & (boxes[:, 1] < r1)]
            for x0, y0, x1, y1 in inside.tolist():
                strip[:, max(y0, r0) - r0:min(y1, r1) - r0, x0:x1] = 200 + rng.normal(0, 8, size=(
                    3, min(y1, r1) - max(y0, r0), x1 - x0))
            ds.write(strip.clip(0, 255).astype(np.uint8), window=rasterio.windows.Window(0, r0, size, r1 - r0))
    return path


def score_against_truth(found_gpkg: Path, truth: np.ndarray, size: int, tile: int, overlap: int) -> dict:
    """One-to-one check at IoU 0.5, and whether misses gather on tile edges (a merging fault would)."""
    import pyogrio
    import shapely

    from geovision.tiling.grid import axis_starts

    b = pyogrio.read_dataframe(found_gpkg).geometry.bounds.to_numpy()
    px = np.stack([(b[:, 0] - 500_000) / 0.5, (5_650_000 - b[:, 3]) / 0.5,
                   (b[:, 2] - 500_000) / 0.5, (5_650_000 - b[:, 1]) / 0.5], axis=1)
    t_geoms, f_geoms = shapely.box(*truth.T.astype(float)), shapely.box(*px.T)
    ti, fi = shapely.STRtree(f_geoms).query(t_geoms, predicate="intersects")
    inter = shapely.area(shapely.intersection(t_geoms[ti], f_geoms[fi]))
    ok = inter / (shapely.area(t_geoms[ti]) + shapely.area(f_geoms[fi]) - inter) >= 0.5
    per_truth = np.bincount(ti[ok], minlength=len(truth))
    per_found = np.bincount(fi[ok], minlength=len(px))
    starts = axis_starts(size, tile, overlap)
    edges = np.array(sorted((set(starts) | {s + tile for s in starts}) - {0, size}))

    def on_edge(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return ((edges[None] >= lo[:, None] - 2) & (edges[None] <= hi[:, None] + 2)).any(axis=1)

    edge = on_edge(truth[:, 0], truth[:, 2]) | on_edge(truth[:, 1], truth[:, 3])
    missed = per_truth == 0
    return {
        "true_positives": int((per_truth > 0).sum()),
        "false_positives": int((per_found == 0).sum()),
        "objects_found_twice": int((per_truth > 1).sum()),
        "objects_on_tile_edges": int(edge.sum()),
        "miss_rate_on_tile_edges": round(float(missed[edge].mean()), 4),
        "miss_rate_elsewhere": round(float(missed[~edge].mean()), 4),
        "missed_by_side_px": {int(k): int(v) for k, v in zip(*np.unique(truth[missed, 2] - truth[missed, 0],
                                                                        return_counts=True))},
    }


def model_only(raster: Path, bundle: Path, tile: int, overlap: int, batch_size: int) -> float:
    from geovision.models.detection import DetectionPredictor
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import open_raster, read_tiles
    from geovision.tiling.stream import batched

    predictor = DetectionPredictor.from_bundle(bundle)
    info = open_raster(str(raster), predictor.config.bands, predictor.config.in_channels)
    total = 0.0
    for batch in batched(TileGrid(info.height, info.width, tile, overlap).tiles, batch_size):
        read, _ = read_tiles(info, batch, tile)
        data, valid = np.stack([t.data for t in read]), np.stack([t.valid for t in read])
        t0 = time.perf_counter()
        predictor.predict(data, valid)
        total += time.perf_counter() - t0
    return total


def arch_times(work: Path) -> dict[str, float]:
    """Seconds per 512 px tile (batch of 4, after one warm-up batch) of untrained torchvision detectors."""
    from geovision.models.detection import DetectionPredictor
    from geovision.models.registry import init_bundle

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, size=(4, 3, 512, 512)).astype(np.uint8)
    out = {}
    for arch, encoder in [("fasterrcnn", "resnet50"), ("retinanet", "resnet50"), ("fcos", "resnet50"),
                          ("fasterrcnn", "resnet18"), ("fasterrcnn", "mobilenet_v3_large"), ("fcos", "tiny")]:
        path = work / f"{arch}_{encoder}.safetensors"
        init_bundle(path, task="detection", arch=arch, encoder=encoder, bands=3, classes=["object"])
        predictor = DetectionPredictor.from_bundle(path)
        predictor.predict(tiles)
        t0 = time.perf_counter()
        predictor.predict(tiles)
        out[f"{arch}/{encoder}"] = round((time.perf_counter() - t0) / 4, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--bundle", type=Path, help="a detection bundle; default: train the tiny square detector")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=600, help="steps for the default square detector")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--arch-times", action="store_true", help="also time the torchvision architectures")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from geovision.workflows.predict import predict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gv-detbench-"))
    work.mkdir(parents=True, exist_ok=True)
    truth = lattice_boxes(args.size)
    raster = write_scene(work / f"squares_{args.size}.tif", args.size, truth)
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from detection_util import train_square_detector

        bundle = train_square_detector(work / "squares.safetensors", steps=args.train_steps)
    t0 = time.perf_counter()
    result = predict(raster, bundle, work / "objects.gpkg", tile=args.tile, overlap=args.overlap,
                     batch_size=args.batch_size, score_threshold=args.score_threshold, overwrite=True,
                     progress=sys.stderr.isatty())
    end_to_end = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model_s = model_only(raster, bundle, args.tile, args.overlap, args.batch_size)
    summary = result.summary
    found = summary["features"]
    record = {
        "raster": f"synthetic squares {args.size}x{args.size} 3-band uint8",
        "bundle": Path(bundle).name,
        "size": args.size,
        "tiles": summary["tiles_processed"],
        "objects_true": int(len(truth)),
        "objects_found": int(found),
        "count_error": int(found - len(truth)),
        "end_to_end_s": round(end_to_end, 2),
        "model_only_s": round(model_s, 2),
        "merge_s": summary["merge_seconds"],
        "merge_share": round(summary["merge_seconds"] / end_to_end, 4),
        "efficiency": round(model_s / end_to_end, 3),
        "megapixels_per_second": round(args.size**2 / 1e6 / end_to_end, 3),
        "peak_rss_mb": round(rss, 1),
        "score_threshold": args.score_threshold,
        "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), **machine(),
    }
    record.update(score_against_truth(work / "objects.gpkg", truth, args.size, args.tile, args.overlap))
    if args.arch_times:
        record["seconds_per_512_tile"] = arch_times(work)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
