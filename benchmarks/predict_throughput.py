"""End-to-end segmentation throughput and memory against pure model time.

Prints one JSON line::

    {"size": N, "tiles": ..., "end_to_end_s": ..., "model_only_s": ..., "efficiency": ...,
     "peak_rss_mb": ..., "megapixels_per_second": ..., ...}

``end_to_end_s`` is ``geovision.predict`` (read, infer, stitch, COG, vectors, summary), in a
process that has already imported torch and segmentation-models-pytorch (``import_s``: paid
once per process, by the CLI too, but not per raster).
``model_only_s`` is the wall time of pure ``SegmentationPredictor.predict`` calls (normalise,
forward, softmax) over exactly the same tiles, run the way ``predict`` runs them (the same
``InferencePool`` plan: forward passes at once, threads per pass, tiles per pass), with
reading untimed. ``--sequential`` also times one pass at a time with all threads and 4 tiles
per pass (``model_only_sequential_s``, how geovision ran the model before the pool).
``--repeat N`` alternates N end-to-end and N model-only runs and reports their medians (and
every run), which keeps a shared machine's slow spells from deciding the ratio.
``efficiency = model_only_s / end_to_end_s``. ``peak_rss_mb`` is the process's peak
resident memory after the end-to-end run (the synthetic raster is written in strips
beforehand, so it never sits in memory).

Run on a synthetic 3-band uint8 raster with an untrained U-Net-ResNet18::

    python benchmarks/predict_throughput.py --size 4096

on the built-in sample scene (buildings, trees, roads, fields) with the shipped building
model, i.e. a realistic output with a realistic number of polygons::

    python benchmarks/predict_throughput.py --sample --size 8192

or on a real raster and bundle::

    python benchmarks/predict_throughput.py --raster R.tif --bundle B.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import rasterio
from affine import Affine
from machine import machine


def write_synthetic(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size`` x ``size`` 3-band uint8 UTM raster with smooth blobs, written in 512-row strips."""
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32631",
                   transform=Affine(0.3, 0, 500_000, 0, -0.3, 5_650_000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    cols = np.arange(size, dtype=np.float32)
    freqs = rng.uniform(0.002, 0.02, size=(3, 2)).astype(np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(size, r0 + 512), dtype=np.float32)[:, None]
            strip = np.empty((3, len(rows), size), dtype=np.uint8)
            for b in range(3):
                wave = np.sin(rows * freqs[b, 0]) * np.cos(cols * freqs[b, 1])
                noise = rng.normal(0, 12, size=(len(rows), size))
                strip[b] = np.clip(120 + 70 * wave + noise, 1, 255)
            ds.write(strip, window=rasterio.windows.Window(0, r0, size, len(rows)))
    return path


def untrained_bundle(path: Path, tile: int = 512) -> Path:
    """The benchmark's model: an untrained U-Net-ResNet18 (3 bands, 2 classes, seed 0)."""
    import torch

    from geovision.models.registry import init_bundle

    torch.manual_seed(0)
    init_bundle(path, arch="unet", encoder="resnet18", bands=3, classes=["background", "object"], tile_size=tile)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def model_only(raster: Path, bundle: Path, tile: int, overlap: int, batch_size: int | None, precision: str,
               bands: list[int] | None, streams: int | None = None) -> tuple[float, int, dict]:
    """Wall seconds of pure forward passes over the same tiles, run as predict runs them.

    The tiles are read beforehand (untimed) in chunks of 64; each chunk then goes
    through the same :class:`InferencePool` plan as ``predict`` (streams, threads per
    stream, tiles per pass), and only that is timed.
    """
    from geovision.models.inference import InferencePool, plan_inference
    from geovision.models.segmentation import SegmentationPredictor
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import open_raster, read_tiles
    from geovision.tiling.stream import batched

    predictor = SegmentationPredictor.from_bundle(bundle, precision=precision)
    plan = plan_inference(predictor.device, streams=streams, batch_size=batch_size)
    info = open_raster(str(raster), bands or predictor.config.bands, predictor.config.in_channels)
    grid = TileGrid(info.height, info.width, tile, overlap)
    total, tiles = 0.0, 0
    warm = False
    with InferencePool(predictor, plan) as pool:
        for chunk in batched(grid.tiles, 64):
            jobs = []
            for batch in batched(chunk, plan.batch_size):
                read, _ = read_tiles(info, batch, tile)
                if read:
                    jobs.append((None, np.stack([t.data for t in read]), np.stack([t.valid for t in read])))
                    tiles += len(read)
            if not warm and jobs:
                # untimed: the first pass traces the model's graph (see SegmentationPredictor); predict
                # pays that inside end_to_end_s, so leaving it out here only lowers the efficiency
                list(pool.map(jobs[:1]))
                warm = True
            t0 = time.perf_counter()
            for _ in pool.map(jobs):
                pass
            total += time.perf_counter() - t0
    return total, tiles, {"streams": plan.streams, "threads_per_stream": plan.threads,
                          "batch_size": plan.batch_size}


def model_only_sequential(raster: Path, bundle: Path, tile: int, overlap: int, batch_size: int, precision: str,
                          bands: list[int] | None) -> float:
    """Seconds of one forward pass at a time with all of torch's threads (geovision <= 0.3's way), for reference."""
    from geovision.models.segmentation import SegmentationPredictor
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import open_raster, read_tiles
    from geovision.tiling.stream import batched

    predictor = SegmentationPredictor.from_bundle(bundle, precision=precision)
    info = open_raster(str(raster), bands or predictor.config.bands, predictor.config.in_channels)
    grid = TileGrid(info.height, info.width, tile, overlap)
    total = 0.0
    for batch in batched(grid.tiles, batch_size):
        read, _ = read_tiles(info, batch, tile)
        if not read:
            continue
        data, valid = np.stack([t.data for t in read]), np.stack([t.valid for t in read])
        t0 = time.perf_counter()
        predictor.predict(data, valid)
        total += time.perf_counter() - t0
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="synthetic raster edge in pixels")
    parser.add_argument("--raster", type=Path, help="use this raster instead of a synthetic one")
    parser.add_argument("--sample", action="store_true",
                        help="use the built-in sample scene and the shipped building model")
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of an untrained U-Net-ResNet18")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: predict's)")
    parser.add_argument("--streams", type=int, default=None, help="forward passes at once (default: predict's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate end-to-end and model-only runs this many times and compare the medians")
    parser.add_argument("--sequential", action="store_true",
                        help="also time one pass at a time with all threads, batch 4 (the old model_only)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--bands", default=None, help="e.g. 1,2,3")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from geovision.workflows.predict import predict

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gv-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle
    if args.sample:
        import subprocess

        raster = work / f"sample_{args.size}.tif"
        # rendered in another process: the scene is drawn in memory and must not count here
        subprocess.run([sys.executable, "-c", "import sys; from geovision.sample import make_sample_scene; "
                        f"make_sample_scene(sys.argv[1], size={args.size})", str(raster)], check=True)
        from contextlib import ExitStack

        from geovision.workflows.demo import sample_bundle

        bundle = bundle or ExitStack().enter_context(sample_bundle())
    else:
        raster = args.raster or write_synthetic(work / f"synthetic_{args.size}.tif", args.size)
    if bundle is None:
        bundle = untrained_bundle(work / "unet_resnet18.safetensors", args.tile)
    bands = [int(b) for b in args.bands.split(",")] if args.bands else None
    # one-time imports (torch is imported above; segmentation-models-pytorch pulls in timm and
    # huggingface_hub, about 2 s; distributed and scipy.ndimage another 0.7 s) are paid once per
    # process, by the CLI too, not per raster: timed on their own
    t_import = time.perf_counter()
    import distributed  # noqa: F401
    import segmentation_models_pytorch  # noqa: F401
    import tqdm.auto  # noqa: F401

    import geovision.models.inference
    import geovision.models.segmentation
    import geovision.stitching.vectorize  # noqa: F401
    import_s = time.perf_counter() - t_import
    rss_before = peak_rss_mb()
    # end to end and model only alternate, args.repeat times each; the medians are compared, so a
    # shared machine's slow spell (CPU steal) weighs on both alike
    runs, models = [], []
    rss = None
    for _ in range(args.repeat):
        # the previous run's outputs go first, untimed: deleting them is not part of the job
        for old in work.glob("bench.*"):
            old.unlink()
        t0 = time.perf_counter()
        result = predict(raster, bundle, work / "bench.gpkg", tile=args.tile, overlap=args.overlap,
                         batch_size=args.batch_size, streams=args.streams, precision=args.precision, bands=bands,
                         progress=sys.stderr.isatty())
        runs.append(time.perf_counter() - t0)
        rss = rss if rss is not None else peak_rss_mb()  # the first run's peak, before any model-only pass
        model_s, tiles, plan = model_only(raster, bundle, args.tile, args.overlap, args.batch_size,
                                          args.precision, bands, args.streams)
        models.append(model_s)
    end_to_end, model_s = statistics.median(runs), statistics.median(models)
    sequential_s = (model_only_sequential(raster, bundle, args.tile, args.overlap, 4, args.precision, bands)
                    if args.sequential else None)
    with rasterio.open(raster) as ds:
        height, width = ds.height, ds.width
    record = {
        "raster": (f"sample scene {args.size}x{args.size}" if args.sample else str(args.raster) if args.raster
                   else f"synthetic {args.size}x{args.size} 3-band uint8"),
        "bundle": Path(bundle).name,
        "size": [height, width],
        "tiles": result.summary["tiles_processed"],
        "tiles_model_only": tiles,
        "features": result.summary["features"],
        "end_to_end_s": round(end_to_end, 2),
        "model_only_s": round(model_s, 2),
        "efficiency": round(model_s / end_to_end, 3),
        **({"end_to_end_runs_s": [round(r, 2) for r in runs], "model_only_runs_s": [round(m, 2) for m in models]}
           if args.repeat > 1 else {}),
        **({"model_only_sequential_s": round(sequential_s, 2)} if sequential_s is not None else {}),
        "import_s": round(import_s, 2),
        "peak_rss_mb": round(rss, 1),
        "rss_before_predict_mb": round(rss_before, 1),
        "megapixels_per_second": round(height * width / 1e6 / end_to_end, 3),
        "tile": args.tile, "overlap": args.overlap, **plan,
        "precision": args.precision, "torch_threads": torch.get_num_threads(),
        **machine(),
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
