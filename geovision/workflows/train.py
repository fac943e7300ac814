"""``geovision train``: rasters + vector labels in, a model bundle and a training report out.

Steps::

    open_raster (every image, one CRS, one band layout)
    read_labels (training/labels): class field, reprojection, repairs, AOI, overlap checks
    spatial_split (training/split): blocks of --val-block metres, a buffer between them
    plan_chips (training/chips): windows inside one block each, nodata-heavy ones skipped
    band_statistics -> the bundle's normalisation
    build_model (+ ImageNet weights, or --init BUNDLE) -> fit (training/loop)
    -> bundle (best validation epoch) + report folder (metrics, curves, config, split layer)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from geovision.errors import BandMismatchError, ConfigError, OutputExistsError, TaskMismatchError, warn
from geovision.training.loop import EpochRecord

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geovision.models.config import BundleConfig
    from geovision.tiling.reader import RasterInfo
    from geovision.training.chips import Chip, ChipDataset
    from geovision.training.split import PolygonSplit, SpatialSplit

__all__ = ["TrainOptions", "TrainResult", "run_train", "train"]


class TrainOptions(BaseModel):
    """Everything ``train`` needs; the CLI only fills this in. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1)
    labels: str
    class_field: str | None = None
    out: str
    task: Literal["segmentation", "detection"] = "segmentation"
    aoi: str | None = None
    classes: list[str] | None = None
    bands: list[int] | None = None
    arch: str | None = None
    encoder: str | None = None
    arch_params: dict[str, Any] = Field(default_factory=dict)
    pretrained: Literal["imagenet", "none"] = "none"
    init: str | None = None
    epochs: int = Field(default=30, ge=1)
    tile: int = Field(default=256, description="chip edge in pixels (multiple of 32)")
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    augment: Literal["none", "light", "strong"] = "light"
    augment_params: dict[str, Any] = Field(default_factory=dict)
    loss: Literal["dice_ce", "ce", "focal", "dice_focal"] = "dice_ce"
    class_weights: Literal["none", "auto"] = "none"
    val_block: float | None = Field(default=None, gt=0, description="metres; default 4 chips")
    val_buffer: float | None = Field(default=None, ge=0, description="metres; default half a chip")
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_layer: str | None = Field(default=None, description="polygons drawing the split (instead of blocks)")
    split_field: str = "split"
    chip_stride: int | None = Field(default=None, ge=1, description="pixels between candidate chips; default tile/2")
    test_fraction: float = Field(default=0.0, ge=0, lt=1)
    positive_fraction: float | None = Field(default=0.7, gt=0, le=1)
    class_balanced: bool = False
    max_nodata: float = Field(default=0.5, ge=0, le=1)
    patience: int = Field(default=5, ge=1)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(default=0, ge=0)
    resume: bool = False
    report: str | None = None
    overwrite: bool = False
    progress: bool = False
    #: called after each epoch with its record (epoch, train_loss, val_loss, metric, ...) as a dict
    on_epoch: Any = None

    @field_validator("labels", "out", "aoi", "init", "report", "split_layer", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("images", mode="before")
    @classmethod
    def _paths_to_str(cls, v: Any) -> Any:
        if isinstance(v, (str, os.PathLike)):
            v = [v]
        return [os.fspath(p) for p in v]

    @field_validator("tile")
    @classmethod
    def _tile_multiple_of_32(cls, v: int) -> int:
        if v <= 0 or v % 32:
            raise ValueError(f"tile must be a positive multiple of 32 (the models downsample by 32), got {v}")
        return v


@dataclass
class TrainResult:
    """What ``train`` wrote."""

    bundle: Path
    report: Path
    best_epoch: int
    best_metric: float | None
    history: list[dict[str, Any]]
    chips: dict[str, int]


def train(images: str | os.PathLike[str] | list[str | os.PathLike[str]], labels: str | os.PathLike[str],
          out: str | os.PathLike[str], *, class_field: str | None = None, **options: Any) -> TrainResult:
    """Train a segmentation or detection model from rasters and vector labels.

    Args:
        images: training raster(s) (one CRS, same bands).
        labels: vector labels (GeoPackage, GeoJSON, Shapefile, ...): polygons for
            segmentation, polygons or boxes for detection.
        out: the bundle to write (``.safetensors``).
        class_field: the labels' field holding the class name; ``None`` when every label
            is of one class (named by ``classes=["building"]``, else ``"object"``).
        **options: any field of :class:`TrainOptions` (task, aoi, arch, encoder,
            pretrained, init, epochs, tile, batch_size, augment, val_block, resume, ...).

    Returns:
        The bundle and report paths, the best epoch and metric, the history.

    Raises:
        GeovisionError: a subclass naming the file and the fix, for every bad input.
    """
    # validated as the constructor would (the path fields take os.PathLike too, see _path_to_str)
    opts = TrainOptions.model_validate({"images": images, "labels": labels, "out": out, "class_field": class_field,
                                        **options})
    return run_train(opts)


def _open_images(opts: TrainOptions) -> list[RasterInfo]:
    import rasterio

    from geovision.tiling.reader import gdal_env, open_raster

    infos = []
    for path in opts.images:
        if opts.bands:
            bands = opts.bands
        else:
            from geovision.errors import RasterReadError

            try:
                with gdal_env(), rasterio.open(path) as ds:
                    count = ds.count
            except rasterio.errors.RasterioError as exc:
                raise RasterReadError(f"{path}: cannot open as a raster ({exc}). Check the path.") from exc
            bands = list(range(1, count + 1))
        infos.append(open_raster(path, bands, len(bands)))
    first = infos[0]
    for info in infos[1:]:
        if len(info.bands) != len(first.bands):
            raise BandMismatchError(
                f"{info.path} gives {len(info.bands)} band(s) but {first.path} gives {len(first.bands)}; "
                "train on rasters with the same bands, or choose them with --bands."
            )
        if info.crs != first.crs:
            raise ConfigError(
                f"{info.path} is in {info.crs} but {first.path} in {first.crs}; warp the images to one CRS "
                "(gdalwarp -t_srs ...) before training."
            )
    return infos


def _extent(info: RasterInfo) -> tuple[float, float, float, float]:
    from geovision.io.geo import window_bounds
    from geovision.types import Window

    return window_bounds(info.affine, Window(0, 0, info.height, info.width))


def run_train(opts: TrainOptions) -> TrainResult:
    import torch

    from geovision.io.geo import ground_pixel_size_m
    from geovision.models.bundle import load_bundle, save_bundle
    from geovision.models.config import BundleConfig, ClassInfo, Normalization, default_colors
    from geovision.models.predictor import Normalizer, resolve_device, resolve_precision
    from geovision.training.chips import ChipDataset, band_statistics, epoch_sample, plan_chips
    from geovision.training.labels import read_labels
    from geovision.training.loop import fit
    from geovision.training.split import spatial_split

    t0 = time.perf_counter()
    out = Path(opts.out)
    if out.suffix.lower() != ".safetensors":
        raise ConfigError(f"{out}: a bundle is a .safetensors file; use e.g. {out.with_suffix('.safetensors')}")
    report = Path(opts.report) if opts.report else out.with_name(out.stem + ".report")
    checkpoint = report / "checkpoint.safetensors"
    if out.exists() and not (opts.overwrite or opts.resume):
        raise OutputExistsError(f"{out}: exists already. Pass --overwrite to replace it (or --resume).")
    if opts.resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint}; start without --resume.")
    if report.exists() and not opts.resume:
        if not opts.overwrite:
            raise OutputExistsError(f"{report}: a report folder exists already. Pass --overwrite or --resume.")
        shutil.rmtree(report)

    infos = _open_images(opts)
    crs = infos[0].crs
    extents = [_extent(i) for i in infos]
    labels = read_labels(opts.labels, class_field=opts.class_field, crs=crs, task=opts.task,
                         classes=opts.classes, aoi=opts.aoi, extents=extents)
    x_m, y_m = ground_pixel_size_m(infos[0].affine, crs, infos[0].height, infos[0].width)
    pixel_m = float((x_m + y_m) / 2)
    chip_m = opts.tile * pixel_m
    block_m: float | None  # None with a split layer
    buffer_m: float | None
    split: SpatialSplit | PolygonSplit
    block_m = opts.val_block or 4 * chip_m
    buffer_m = chip_m / 2 if opts.val_buffer is None else opts.val_buffer
    if opts.split_layer:
        from geovision.training.split import split_from_layer

        split = split_from_layer(opts.split_layer, opts.split_field, crs)
        block_m, buffer_m = None, None
    else:
        split = spatial_split(extents, crs, block_m=block_m, buffer_m=buffer_m, val_fraction=opts.val_fraction,
                              test_fraction=opts.test_fraction, seed=opts.seed, labels=labels.frame)
    # plan_chips takes a PolygonSplit too (the same interface), though its annotation names SpatialSplit only
    chips = plan_chips(infos, labels, split, chip=opts.tile, stride=opts.chip_stride,  # type: ignore[arg-type]
                       max_nodata=opts.max_nodata)
    by_split = {s: [c for c in chips if c.split == s] for s in ("train", "val", "test")}
    counts = {s: len(v) for s, v in by_split.items()}
    counts["train_positive"] = sum(c.positive for c in by_split["train"])
    if counts["train_positive"] == 0:
        raise ConfigError(
            f"{opts.labels}: no training chip holds a label ({counts}); lower --val-block "
            f"(now {block_m or 0:.0f} m) or --tile, or check that the labels cover the training area."
        )
    if counts["val"] == 0:
        warn(f"no validation chip fits the split (blocks of {block_m or 0:.0f} m, buffer {buffer_m or 0:.0f} m); "
             "the last epoch is kept. Use a larger area or a smaller --val-block / --tile.")

    device = resolve_device(opts.device)
    autocast = resolve_precision(device, opts.precision)

    # the bundle's configuration
    class_names = list(labels.class_names)
    if opts.init:
        base, init_state = load_bundle(opts.init)
        if base.task != opts.task:
            raise TaskMismatchError(f"{opts.init}: a {base.task} bundle cannot start a {opts.task} training.")
        if base.in_channels != len(infos[0].bands) or base.class_names != class_names:
            raise ConfigError(
                f"{opts.init} takes {base.in_channels} bands and classes {base.class_names}; the training "
                f"data has {len(infos[0].bands)} bands and classes {class_names}. Fine-tune on the same bands "
                "and classes (--bands, --classes)."
            )
        arch, encoder, arch_params = base.arch, base.encoder, dict(base.arch_params)
    else:
        init_state = None
        arch = opts.arch or ("unet" if opts.task == "segmentation" else "fasterrcnn")
        encoder = opts.encoder or "resnet18"
        arch_params = dict(opts.arch_params)
    mean, std = band_statistics(infos, by_split["train"], seed=opts.seed)
    drift_ref = _drift_reference(infos)
    colors = default_colors(len(class_names))
    with_names = _band_names(infos[0])
    config = BundleConfig(
        task=opts.task, arch=arch, encoder=encoder, arch_params=arch_params, in_channels=len(infos[0].bands),
        bands=list(infos[0].bands), band_names=with_names,
        normalization=Normalization(method="meanstd", mean=mean, std=std),
        classes=[ClassInfo(name=n, color=colors[i]) for i, n in enumerate(class_names)],
        tile_size=opts.tile, ground_resolution_m=round(pixel_m, 6), drift_reference=drift_ref,
        provenance={"created_by": "geovision train", "trained": True, "images": opts.images, "labels": opts.labels,
                    "class_field": opts.class_field, "pretrained": opts.pretrained if not opts.init else None,
                    "init": opts.init, "split": {"block_m": block_m, "buffer_m": buffer_m, "layer": opts.split_layer},
                    "chips": counts},
    )
    torch.manual_seed(opts.seed)  # the same seed builds the same initial weights
    model = _build(config, opts, init_state).to(device)

    from geovision.training.augment import build_augment

    normalize = Normalizer(config)
    augment = build_augment(opts.augment, task=opts.task, overrides=opts.augment_params or None, seed=opts.seed)
    train_ds = ChipDataset(infos, by_split["train"], labels, opts.task, normalize, augment, seed=opts.seed)
    val_ds = ChipDataset(infos, by_split["val"], labels, opts.task, normalize, None) if by_split["val"] else None
    loss_fn = None
    if opts.task == "segmentation":
        from geovision.training.losses import build_loss, class_weights_from_counts

        weights = None
        if opts.class_weights == "auto":
            weights = class_weights_from_counts(_pixel_counts(train_ds, len(class_names)))
        loss_fn = build_loss(opts.loss, num_classes=len(class_names), class_weights=weights)

    report.mkdir(parents=True, exist_ok=True)
    resolved = {"options": opts.model_dump(exclude={"on_epoch"}), "bundle_config": json.loads(config.model_dump_json()),
                "chips": counts, "device": str(device), "autocast": str(autocast)}
    (report / "config.json").write_text(json.dumps(resolved, indent=2))
    _write_split(split, report / "split.gpkg", infos, by_split)

    def sample(epoch: int) -> list[int]:
        return epoch_sample(by_split["train"], epoch=epoch, seed=opts.seed, positive_fraction=opts.positive_fraction,
                            class_balanced=opts.class_balanced)

    result = fit(model, task=opts.task, train=train_ds, val=val_ds, sample_epoch=sample, class_names=class_names,
                 loss_fn=loss_fn, epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
                 weight_decay=opts.weight_decay, device=device, autocast_dtype=autocast, patience=opts.patience,
                 checkpoint=checkpoint, resume=opts.resume, seed=opts.seed, progress=opts.progress,
                 num_workers=opts.workers, on_epoch=partial(_epoch_done, report, opts.on_epoch))
    _write_metrics(report, result.history)
    _plot(report, result.history)
    best = None if result.best_metric is None else round(result.best_metric, 6)
    config = config.model_copy(update={"provenance": {
        **config.provenance, "best_epoch": result.best_epoch, "best_val_metric": best,
        "metric": "mean foreground IoU" if opts.task == "segmentation" else "F1@0.5",
        "epochs_run": len(result.history), "seconds": round(time.perf_counter() - t0, 1),
    }})
    tmp = out.with_name(out.name + ".tmp")
    save_bundle(tmp, config, result.best_state)
    os.replace(tmp, out)
    return TrainResult(bundle=out, report=report, best_epoch=result.best_epoch, best_metric=result.best_metric,
                       history=[asdict(r) for r in result.history], chips=counts)


def _epoch_done(report: Path, callback: Callable[[dict[str, Any]], None] | None,
                history: list[EpochRecord]) -> None:
    _write_metrics(report, history)
    if callback is not None:
        callback(asdict(history[-1]))


def _drift_reference(infos: Sequence[RasterInfo]) -> dict:
    """The training rasters' per-band pixel distribution, sampled coarsely, for predict's drift check."""
    from geovision.io.drift import reference, sample_raster

    samples = np.concatenate([sample_raster(i.path, i.bands, max_side=256) for i in infos], axis=1)
    return reference(samples)


def _band_names(info: RasterInfo) -> list[str]:
    n = len(info.bands)
    return ["red", "green", "blue"] if n == 3 and tuple(info.bands) == (1, 2, 3) else [f"band_{b}" for b in info.bands]


def _build(config: BundleConfig, opts: TrainOptions, init_state: dict[str, torch.Tensor] | None) -> nn.Module:
    """The model: from ``--init``, with ImageNet encoder weights, or random."""
    from geovision.models.registry import build_model

    if init_state is not None:
        model = build_model(config)
        model.load_state_dict(init_state)
        return model
    if opts.pretrained == "none":
        return build_model(config)
    from geovision.models.pretrained import pretrained_model

    return pretrained_model(config)


def _pixel_counts(dataset: ChipDataset, num_classes: int, max_chips: int = 64) -> list[int]:
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(min(len(dataset), max_chips)):
        _, mask, _, _ = dataset.read(i)
        assert mask is not None  # segmentation chips have a mask (only segmentation counts pixels)
        values = mask[mask != 255]
        counts += np.bincount(values, minlength=num_classes)[:num_classes]
    return counts.tolist()


def _write_split(split: SpatialSplit | PolygonSplit, path: Path, infos: Sequence[RasterInfo],
                 by_split: dict[str, list[Chip]]) -> None:
    import geopandas as gpd
    import pyogrio
    import shapely

    from geovision.io.geo import window_bounds

    layer = split.layer()
    pyogrio.write_dataframe(layer, path, layer="blocks", driver="GPKG")
    rows = [(s, c.raster, shapely.box(*window_bounds(infos[c.raster].affine, c.window)), int(c.positive))
            for s, chips in by_split.items() for c in chips]
    if rows:
        frame = gpd.GeoDataFrame({"split": [r[0] for r in rows], "raster": [r[1] for r in rows],
                                  "positive": [r[3] for r in rows]}, geometry=[r[2] for r in rows], crs=layer.crs)
        pyogrio.write_dataframe(frame, path, layer="chips", driver="GPKG")


def _write_metrics(report: Path, history: Sequence[EpochRecord]) -> None:
    rows = [asdict(r) for r in history]
    (report / "metrics.json").write_text(json.dumps(rows, indent=2))
    if not rows:
        return
    classes = sorted({k for r in rows for k in r["per_class"]})
    header = ["epoch", "train_loss", "val_loss", "metric", "lr", "seconds"] + [f"iou_{c}" for c in classes]
    lines = [",".join(header)]
    for r in rows:
        values = [r["epoch"], r["train_loss"], r["val_loss"], r["metric"], r["lr"], r["seconds"]]
        values += [r["per_class"].get(c) for c in classes]
        lines.append(",".join("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
    (report / "metrics.csv").write_text("\n".join(lines) + "\n")


def _plot(report: Path, history: Sequence[EpochRecord]) -> None:
    """Loss and metric curves as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r.epoch for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [r.train_loss for r in history], label="train")
    if any(r.val_loss is not None for r in history):
        a.plot(epochs, [r.val_loss for r in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [r.metric for r in history], marker="o")
    b.set_xlabel("epoch")
    b.set_ylabel("validation metric")
    fig.tight_layout()
    fig.savefig(report / "curves.png", dpi=100)
    plt.close(fig)
