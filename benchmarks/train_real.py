"""Train on the real labelled imagery in ../shared/data and score on held-out ground.

Prints one JSON line per run with the command's options, the chips per split, the best
epoch, the validation metric on held-out ground and the training time.

Kampala buildings (RGB drone, EPSG:3857, 7.5 cm; labels in EPSG:4326 with no class
field, one of them self-intersecting and repaired on reading): blocks A and B, split
spatially into square blocks of ``--val-block`` metres with a buffer of half a chip
between blocks; 20% of the labelled blocks (seed 0) are held out for validation::

    python benchmarks/train_real.py kampala --pretrained imagenet --epochs 12
    python benchmarks/train_real.py kampala --pretrained none --epochs 12

Flanders fields (Sentinel-2 B08/B04/B03 at 10 m, UTM): labels are complete only inside
the 640 m location squares; the model trains inside the squares marked ``train`` and is
scored inside those marked ``validation`` (``--split-layer``)::

    python benchmarks/train_real.py flanders --pretrained imagenet --epochs 40

The data stay outside the project (``--data`` defaults to ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from machine import machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]


def kampala(data: Path, args) -> dict:
    d = data / "kampala_buildings_oam_fair"
    return dict(images=[str(d / "kampala_block_A_z21.tif"), str(d / "kampala_block_B_z21.tif")],
                labels=str(d / "labels.geojson"), class_field=None, classes=["building"], tile=args.tile or 256,
                val_block=args.val_block or 60.0)


def flanders(data: Path, args) -> dict:
    d = data / "befl_fields_s2_orthoseg"
    return dict(images=[str(d / "BEFL-TEST-s2_2023-05-01_2023-07-01_B08-B04-B03_min_byte.tif")],
                labels=str(d / "fields_polygons_epsg32631.geojson"), class_field="label_name",
                aoi=str(d / "label_locations_epsg32631.geojson"),
                split_layer=str(d / "label_locations_epsg32631.geojson"), split_field="traindata_type",
                tile=args.tile or 32, chip_stride=8)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["kampala", "flanders"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pretrained", choices=["imagenet", "none"], default="imagenet")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-block", type=float, default=None)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    import geovision

    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"gv-train-{args.dataset}-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = (kampala if args.dataset == "kampala" else flanders)(args.data, args)
    images, labels = setup.pop("images"), setup.pop("labels")
    out = work / f"{args.dataset}_{args.pretrained}.safetensors"
    t0 = time.perf_counter()
    result = geovision.train(images, labels, out, arch=args.arch, encoder=args.encoder, pretrained=args.pretrained,
                             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, augment=args.augment,
                             overwrite=True, progress=False, **setup)
    seconds = time.perf_counter() - t0
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    record = {
        "dataset": args.dataset, "arch": args.arch, "encoder": args.encoder, "pretrained": args.pretrained,
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "val_iou_foreground": round(result.best_metric, 4) if result.best_metric is not None else None,
        "val_per_class": {k: round(v, 4) for k, v in best["per_class"].items()},
        "chips": result.chips, "train_seconds": round(seconds, 1), "tile": setup.get("tile"),
        "bundle": str(result.bundle), "report": str(result.report),
        **machine(),
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
