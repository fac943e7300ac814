"""Train the building model shipped as ``geovision/data/sample_buildings.safetensors``.

A compact, seeded training loop (``geovision train`` will replace it): a small
U-Net (timm ResNet-18 encoder cut after its second stage, so the bundle stays a
few MB) learns ``background``/``building`` from the RGB bands of synthetic
sample scenes (:mod:`geovision.sample`, seeds 1..N). Seed 0 is the demo scene:
it is never trained on, and the model is scored on it through
:func:`geovision.predict` with the bundle's tile size and the default overlap.

Run from the repository root::

    python scripts/train_sample_model.py            # about 5 minutes on 2 CPU cores
    python scripts/train_sample_model.py --steps 50 --out /tmp/quick.safetensors
    python scripts/train_sample_model.py --add-drift-reference   # same weights, drift reference added

The bundle records the per-band distribution of its training scenes (the drift
reference ``geovision predict`` scores new imagery against), sampled as
``geovision train`` samples its rasters (:func:`geovision.io.drift.sample_raster`,
a 256 x 256 grid per scene).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from geovision.models.bundle import load_bundle, save_bundle
from geovision.models.config import Normalization
from geovision.models.registry import build_model, init_bundle
from geovision.sample import make_sample_scene, render_scene

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "geovision" / "data" / "sample_buildings.safetensors"

ARCH = "unet"
ENCODER = "tu-resnet18"
ARCH_PARAMS = {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}
CLASSES = ["background", "building"]
IGNORE = 255  # truth value of nodata pixels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle to write (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=6, help="training scenes, seeds 1..N (default 6)")
    p.add_argument("--scene-size", type=int, default=2048, help="training scene edge in pixels")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--chip", type=int, default=256, help="training chip edge in pixels")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the chip sampler")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice; use 1 on a busy 2-core machine)")
    p.add_argument("--eval-size", type=int, default=2048, help="edge of the held-out scene (seed 0)")
    p.add_argument("--add-drift-reference", action="store_true",
                   help="do not train: re-save --out with its weights and config and the drift reference of its "
                        "training scenes (its provenance's train_seeds and train_scene_size)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


class ChipSampler:
    """Random ``chip``×``chip`` RGB chips with their truth, flipped and rotated at random.

    Chips with more than half nodata are drawn again.
    """

    def __init__(self, seeds: list[int], scene_size: int, chip: int, rng: np.random.Generator) -> None:
        self.images, self.truths = [], []
        for seed in seeds:
            scene = render_scene(scene_size, seed=seed)
            self.images.append(scene.image[:3])  # red, green, blue: the model's bands 1-3
            self.truths.append(scene.truth)
        self.chip, self.rng = chip, rng

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(n, 3, chip, chip)`` uint8 and ``(n, chip, chip)`` uint8 truth (0, 1, 255)."""
        c, rng = self.chip, self.rng
        xs, ys = [], []
        while len(xs) < n:
            k = int(rng.integers(len(self.images)))
            h, w = self.truths[k].shape
            r, col = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            y = self.truths[k][r:r + c, col:col + c]
            if (y == IGNORE).mean() > 0.5:
                continue
            x = self.images[k][:, r:r + c, col:col + c]
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y = np.rot90(x, turns, axes=(1, 2)), np.rot90(y, turns)
            if flip:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)


def chip_normalization(sampler: ChipSampler, chips: int = 256) -> Normalization:
    """Per-band mean and standard deviation over the valid pixels of ``chips`` training chips."""
    x, y = sampler.draw(chips)
    valid = y != IGNORE
    values = x.transpose(1, 0, 2, 3)[:, valid].astype(np.float64)  # (3, pixels)
    return Normalization(method="meanstd", mean=[round(float(v), 3) for v in values.mean(axis=1)],
                         std=[round(float(v), 3) for v in values.std(axis=1)])


def to_tensors(x: np.ndarray, y: np.ndarray, norm: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise like the predictor does: nodata pixels become 0 (the band mean)."""
    mean = np.asarray(norm.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(norm.std, np.float32).reshape(1, -1, 1, 1)
    xn = (x.astype(np.float32) - mean) / std
    xn[np.broadcast_to((y == IGNORE)[:, None], xn.shape)] = 0.0
    xt = torch.from_numpy(xn).contiguous(memory_format=torch.channels_last)
    return xt, torch.from_numpy(y.astype(np.int64))


# --------------------------------------------------------------------------- model


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice of the building class, ignoring nodata pixels."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    valid = target != IGNORE
    p = torch.softmax(logits, dim=1)[:, 1][valid]
    t = (target[valid] == 1).float()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + dice


def train(model: torch.nn.Module, sampler: ChipSampler, norm: Normalization, args: argparse.Namespace) -> float:
    """Train in place; returns the seconds spent."""
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    t0 = time.perf_counter()
    running = 0.0
    for step in range(1, args.steps + 1):
        x, y = to_tensors(*sampler.draw(args.batch), norm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = dice_ce_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step:4d}/{args.steps}  loss {running / (20 if step % 20 == 0 else step % 20):.4f}  "
                  f"{time.perf_counter() - t0:6.1f} s", flush=True)
            running = 0.0
    return time.perf_counter() - t0


def evaluate(bundle: Path, size: int, workdir: Path) -> dict[str, float | int]:
    """Predict the held-out seed-0 scene with geovision.predict and score it against the truth."""
    import rasterio

    from geovision.workflows.demo import score_buildings
    from geovision.workflows.predict import predict

    scene = make_sample_scene(workdir / "heldout.tif", size=size, seed=0)
    t0 = time.perf_counter()
    result = predict(scene.path, bundle, workdir / "heldout.gpkg", bands=[1, 2, 3], progress=False)
    seconds = time.perf_counter() - t0
    with rasterio.open(result.class_rasters[0]) as ds:
        classes = ds.read(1)
    score = score_buildings(classes, scene.truth(), building_class=CLASSES.index("building"))
    return {"seed": 0, "size": size, "tile": 512, "overlap": 64, "building_iou": round(score.iou, 4),
            "precision": round(score.precision, 4), "recall": round(score.recall, 4),
            "truth_buildings": score.truth_objects, "matched_buildings": score.matched_objects,
            "predict_seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- drift


def drift_reference(seeds: list[int], scene_size: int, bands: list[int], workdir: Path) -> dict:
    """The training scenes' per-band pixel distribution, sampled as ``geovision train`` does."""
    from geovision.io.drift import reference, sample_raster

    samples = []
    for seed in seeds:
        scene = make_sample_scene(workdir / f"drift_{seed}.tif", size=scene_size, seed=seed)
        samples.append(sample_raster(str(scene.path), bands, max_side=256))
    return reference(np.concatenate(samples, axis=1))


def add_drift_reference(path: Path) -> int:
    """Re-save the bundle at ``path`` with the same weights and config plus its training scenes' drift reference."""
    config, state = load_bundle(path)
    seeds, size = config.provenance["train_seeds"], config.provenance["train_scene_size"]
    with tempfile.TemporaryDirectory(prefix="geovision-drift-") as tmp:
        ref = drift_reference(seeds, size, list(config.bands), Path(tmp))
    provenance = {**config.provenance, "drift_reference": f"training scenes (seeds {seeds[0]}..{seeds[-1]}, "
                  f"{size} px), geovision.io.drift.sample_raster max_side 256, added by --add-drift-reference"}
    save_bundle(path, config.model_copy(update={"drift_reference": ref, "provenance": provenance}), state)
    print(f"{path}: drift reference of {ref['pixels']} pixels over bands {config.band_names} added; weights unchanged")
    return 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.add_drift_reference:
        return add_drift_reference(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    seeds = list(range(1, args.scenes + 1))
    assert 0 not in seeds, "seed 0 is the held-out demo scene"

    t0 = time.perf_counter()
    sampler = ChipSampler(seeds, args.scene_size, args.chip, rng)
    norm = chip_normalization(sampler)
    print(f"{len(seeds)} training scenes ({args.scene_size} px, seeds {seeds[0]}..{seeds[-1]}) in "
          f"{time.perf_counter() - t0:.1f} s; normalisation mean {norm.mean} std {norm.std}")

    with tempfile.TemporaryDirectory(prefix="geovision-train-") as tmp:
        workdir = Path(tmp)
        untrained = workdir / "untrained.safetensors"
        init_bundle(untrained, arch=ARCH, encoder=ENCODER, arch_params=ARCH_PARAMS, bands=[1, 2, 3],
                    band_names=["red", "green", "blue"], classes=CLASSES, normalization=norm,
                    tile_size=512, ground_resolution_m=0.3)
        config, _ = load_bundle(untrained)
        model = build_model(config)  # the same builder the predictor uses, so the bundle rebuilds it
        params = sum(p.numel() for p in model.parameters())
        print(f"{ARCH}/{ENCODER} {ARCH_PARAMS}: {params / 1e6:.2f} M parameters; "
              f"{args.steps} steps of {args.batch} x {args.chip}² chips, {torch.get_num_threads()} thread(s)")

        seconds = train(model, sampler, norm, args)
        model.eval()
        ref = drift_reference(seeds, args.scene_size, [1, 2, 3], workdir)
        provenance = {
            "created_by": "scripts/train_sample_model.py",
            "trained": True,
            "encoder_weights": None,
            "data": "geovision.sample.render_scene (synthetic, 0.3 m), red/green/blue bands",
            "train_seeds": seeds,
            "train_scene_size": args.scene_size,
            "steps": args.steps,
            "batch_size": args.batch,
            "chip_size": args.chip,
            "optimizer": f"AdamW lr {args.lr} one-cycle, weight decay 1e-4",
            "loss": "cross-entropy + building Dice",
            "augmentation": "rot90, flips",
            "precision": "bf16 autocast, channels_last",
            "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            "drift_reference": "training scenes, geovision.io.drift.sample_raster max_side 256",
        }
        state = {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        candidate = workdir / "trained.safetensors"
        config = config.model_copy(update={"drift_reference": ref})
        save_bundle(candidate, config.model_copy(update={"provenance": provenance}), state)
        heldout = evaluate(candidate, args.eval_size, workdir)
        provenance["heldout"] = heldout
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_bundle(args.out, config.model_copy(update={"provenance": provenance}), state)

    size_mb = args.out.stat().st_size / 1e6
    print(f"training: {args.steps} steps in {seconds:.1f} s ({seconds / 60:.1f} min)")
    print(f"held-out scene (seed 0, {args.eval_size} px, tile 512 / overlap 64): building IoU "
          f"{heldout['building_iou']:.4f} (precision {heldout['precision']:.3f}, recall {heldout['recall']:.3f}; "
          f"{heldout['matched_buildings']}/{heldout['truth_buildings']} buildings found), "
          f"predict {heldout['predict_seconds']} s")
    print(f"wrote {args.out} ({size_mb:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
