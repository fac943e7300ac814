"""Train the tree-crown detector shipped as ``geovision/data/sample_trees.safetensors``.

It uses the product's own pipeline end to end: synthetic sample scenes
(:mod:`geovision.sample`, seeds 1..N, each with its ``<stem>.trees.gpkg`` box
truth) are written side by side in UTM, :func:`geovision.workflows.train.train`
trains a detector on them (spatial train/validation split, chips read on the fly,
flips and 90° turns, the best validation epoch kept, the drift reference of the
training imagery recorded in the bundle), and the bundle is scored on held-out
scenes (seeds 100..102 by default, never trained on) with
:func:`geovision.workflows.predict.predict` and
:func:`geovision.workflows.evaluate.evaluate`: object precision, recall and F1 at
the default score threshold (0.5) and IoU 0.5, and AP@0.5 / COCO mAP from a run
at score threshold 0.05. The figures go into the bundle's provenance (``heldout``).

Run from the repository root::

    python scripts/train_sample_detector.py --threads 1      # about 18 minutes on one CPU core
    python scripts/train_sample_detector.py --scenes 1 --epochs 1 --out /tmp/quick.safetensors
    python scripts/train_sample_detector.py --evaluate-only   # re-score the shipped bundle, same weights
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch

from geovision.sample import BAND_NAMES, DEFAULT_ORIGIN, make_sample_scene

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "geovision" / "data" / "sample_trees.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle to write (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=6, help="training scenes, seeds 1..N (default 6)")
    p.add_argument("--scene-size", type=int, default=2048, help="training scene edge in pixels (0.3 m)")
    p.add_argument("--arch", default="fcos", help="detection architecture (fcos, retinanet, fasterrcnn)")
    p.add_argument("--encoder", default="tiny", help="backbone (tiny, resnet18, ...)")
    p.add_argument("--arch-params", type=json.loads, default={}, help="JSON arch_params for the detector")
    p.add_argument("--bands", default="1,2,3,4", help="1-based bands of the sample image (default all: R,G,B,NIR)")
    p.add_argument("--tile", type=int, default=256, help="training chip edge = the bundle's tile size")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up + cosine)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--augment", default="light", choices=["none", "light", "strong"])
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the chip sampler")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; use 1 on a busy 2-core machine)")
    p.add_argument("--eval-seeds", default="100,101,102", help="held-out scene seeds (never trained on)")
    p.add_argument("--eval-size", type=int, default=1024, help="edge of each held-out scene in pixels")
    p.add_argument("--workdir", type=Path, default=None, help="keep scenes, report and evaluation here")
    p.add_argument("--evaluate-only", action="store_true",
                   help="do not train: score --out on the held-out scenes and re-save it (same weights) with the "
                        "new figures in its provenance")
    return p.parse_args(argv)


def scene_origin(seed: int, size: int, pixel_m: float = 0.3) -> tuple[float, float]:
    """Upper-left corner of scene ``seed``: scenes sit side by side along x, 1 km apart or more, never overlapping."""
    step = (math.floor(size * pixel_m / 1000.0) + 1) * 1000.0
    return DEFAULT_ORIGIN[0] + seed * step, DEFAULT_ORIGIN[1]


def write_scenes(folder: Path, seeds: list[int], size: int) -> tuple[list[Path], Path]:
    """Sample scenes ``seeds`` side by side, and one labels file with all their tree boxes."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    folder.mkdir(parents=True, exist_ok=True)
    images, frames = [], []
    for seed in seeds:
        scene = make_sample_scene(folder / f"scene_{seed}.tif", size=size, seed=seed,
                                  origin=scene_origin(seed, size))
        images.append(scene.path)
        frames.append(scene.tree_truth())
    labels = folder / "trees.gpkg"
    merged = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    labels.unlink(missing_ok=True)
    pyogrio.write_dataframe(merged, labels, layer="trees", driver="GPKG")
    return images, labels


def evaluate_heldout(bundle: Path, seeds: list[int], size: int, workdir: Path) -> dict[str, Any]:
    """Predict the held-out scenes with geovision's predict and score them with its evaluate."""
    from geovision.workflows.evaluate import evaluate
    from geovision.workflows.predict import predict

    images, truth = write_scenes(workdir / "heldout", seeds, size)
    t0 = time.perf_counter()
    found = predict(images, bundle, workdir / "heldout_trees.gpkg", progress=False, overwrite=True)
    seconds = time.perf_counter() - t0
    at_default = evaluate(found.vector_path, truth, workdir / "eval_default", overwrite=True).metrics
    low = predict(images, bundle, workdir / "heldout_trees_low.gpkg", progress=False, overwrite=True,
                  score_threshold=0.05)
    ranked = evaluate(low.vector_path, truth, workdir / "eval_ranked", overwrite=True).metrics
    o = at_default["objects"]["overall"]
    ap = ranked["average_precision"]
    return {
        "seeds": seeds, "size": size, "score_threshold": 0.5, "iou": 0.5,
        "truth_trees": int(o["count_true"]), "predicted_trees": int(o["count_pred"]),
        "tp": int(o["tp"]), "fp": int(o["fp"]), "fn": int(o["fn"]),
        "precision": _round(o["precision"]), "recall": _round(o["recall"]), "f1": _round(o["f1"]),
        "mean_matched_iou": _round(o.get("mean_matched_iou")),
        "ap50": _round(ap["ap50"]), "ap75": _round(ap["ap75"]), "map": _round(ap["map"]),
        "predict_seconds": round(seconds, 1),
    }


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def report(heldout: dict[str, Any], out: Path) -> None:
    print(f"held-out scenes (seeds {heldout['seeds']}, {heldout['size']} px, score >= 0.5, IoU 0.5): "
          f"precision {heldout['precision']}, recall {heldout['recall']}, F1 {heldout['f1']} "
          f"({heldout['tp']}/{heldout['truth_trees']} trees found, {heldout['fp']} false); "
          f"AP@0.5 {heldout['ap50']}, mAP {heldout['map']}; predict {heldout['predict_seconds']} s")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


def evaluate_only(args: argparse.Namespace, eval_seeds: list[int]) -> int:
    """Score the bundle at ``args.out`` again and store the figures in its provenance (weights unchanged)."""
    from geovision.models.bundle import load_bundle, save_bundle

    config, state = load_bundle(args.out)
    assert not set(config.provenance.get("train_seeds", [])) & set(eval_seeds), "held-out seeds were trained on"
    with tempfile.TemporaryDirectory(prefix="geovision-trees-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        heldout = evaluate_heldout(args.out, eval_seeds, args.eval_size, workdir)
    heldout["threads"] = torch.get_num_threads()
    save_bundle(args.out, config.model_copy(update={"provenance": {**config.provenance, "heldout": heldout}}), state)
    report(heldout, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    from geovision.models.bundle import load_bundle, save_bundle
    from geovision.workflows.train import train

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluate_only:
        return evaluate_only(args, [int(s) for s in args.eval_seeds.split(",")])
    seeds = list(range(1, args.scenes + 1))
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    bands = [int(b) for b in args.bands.split(",")]
    assert not set(seeds) & set(eval_seeds), "held-out seeds must not be trained on"
    assert 0 not in seeds, "seed 0 is the demo scene"

    with tempfile.TemporaryDirectory(prefix="geovision-trees-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        images, labels = write_scenes(workdir / "train", seeds, args.scene_size)
        print(f"{len(seeds)} training scenes ({args.scene_size} px, seeds {seeds[0]}..{seeds[-1]}) in "
              f"{time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} torch thread(s)", flush=True)

        candidate = workdir / "trees.safetensors"
        t1 = time.perf_counter()
        result = train(images, labels, candidate, class_field="class_name", task="detection", arch=args.arch,
                       encoder=args.encoder, arch_params=args.arch_params, bands=bands, tile=args.tile,
                       epochs=args.epochs, batch_size=args.batch, lr=args.lr, patience=args.patience,
                       augment=args.augment, seed=args.seed, device="cpu", report=workdir / "report",
                       overwrite=True, progress=True)
        seconds = time.perf_counter() - t1
        print(f"training: {len(result.history)} epochs in {seconds:.1f} s ({seconds / 60:.1f} min); best epoch "
              f"{result.best_epoch}, validation F1@0.5 {result.best_metric}; chips {result.chips}", flush=True)

        config, state = load_bundle(candidate)
        provenance = {
            **{k: v for k, v in config.provenance.items() if k not in ("images", "labels", "created_by")},
            "created_by": "scripts/train_sample_detector.py (geovision.workflows.train)",
            "command": "python scripts/train_sample_detector.py "
                       + shlex.join(argv if argv is not None else sys.argv[1:]),
            "data": "geovision.sample scenes (synthetic, 0.3 m, UTM 36N) with their <stem>.trees.gpkg boxes",
            "train_seeds": seeds,
            "train_scene_size": args.scene_size,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "lr": args.lr,
            "augment": args.augment,
            "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        }
        names = [BAND_NAMES[b - 1] for b in bands]
        config = config.model_copy(update={"band_names": names, "provenance": provenance})
        save_bundle(candidate, config, state)
        heldout = evaluate_heldout(candidate, eval_seeds, args.eval_size, workdir)
        heldout["threads"] = torch.get_num_threads()
        provenance["heldout"] = heldout
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_bundle(args.out, config.model_copy(update={"provenance": provenance}), state)

    report(heldout, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
