"""The ``geovision`` command. Thin: it turns arguments into options and calls a workflow."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal, TextIO

import click

from geovision.errors import GeovisionError, GeovisionWarning


def _int_list(_ctx: Any, _param: Any, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated band numbers such as 4,3,2, got {value!r}") from None


def _float_pair(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two confidences LOW,HIGH such as 0.3,0.6, got {value!r}") from None
    return low, high


def _str_list(_ctx: Any, _param: Any, value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a GeovisionError as one clear line and exit 1 (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GeovisionError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)

    return wrapper


def _show_warnings() -> None:
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, GeovisionWarning):
            click.secho(f"warning: {message}", fg="yellow", err=True)

    warnings.showwarning = show
    warnings.simplefilter("always", GeovisionWarning)


# options several commands share, declared once
_quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bars or tables.")
_device = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (cuda:1 ...).")
_report = click.option("--report", is_flag=True,
                       help="Also write <stem>.report.html, an offline HTML map of the results.")


def _overwrite(help: str = "Replace existing outputs.") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--overwrite", is_flag=True, help=help)


def _progress(quiet: bool) -> Any:
    """What the library's ``progress=`` takes: bars on the terminal, or nothing."""
    from geovision.engine.progress import ProgressBars

    return None if quiet else ProgressBars()


@click.group()
@click.version_option(package_name="geovision")
def main() -> None:
    """geovision: find, count and measure things in large georeferenced imagery."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _show_warnings()


@main.command()
@click.argument("rasters", nargs=-1, required=True)
@click.option("--model", "-m", required=True, help="Model bundle (.safetensors).")
@click.option("--out", "-o", required=True, help="Vector output: .gpkg, .geojson, .fgb or .parquet.")
@click.option("--tile", type=int, default=None, help="Tile size in pixels (multiple of 32). Default: the bundle's.")
@click.option("--overlap", type=int, default=None,
              help="Overlap between tiles in pixels. Default: 64, or a quarter of a smaller tile.")
@click.option("--batch-size", type=int, default=None,
              help="Tiles per forward pass. Default: 1 on the CPU, 8 on a GPU, 4 on a cluster's workers.")
@click.option("--streams", type=int, default=None,
              help="Forward passes at once. Default: one per CPU core (up to 4), 1 on a GPU.")
@_device
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 + channels_last where the CPU supports it, mixed "
              "precision on CUDA; fp32 turns it off.")
@click.option("--bands", callback=_int_list, default=None, help="1-based bands to read in model order, e.g. 4,3,2.")
@click.option("--min-area", type=float, default=None, help="Drop polygons (or boxes) smaller than this (m²).")
@click.option("--simplify", type=float, default=None,
              help="Segmentation: simplify polygons with this tolerance (metres).")
@click.option("--probabilities", is_flag=True, help="Segmentation: also write <stem>.probabilities.tif.")
@click.option("--task", type=click.Choice(["segmentation", "detection"]), default=None,
              help="Refuse a bundle of another task (default: whatever the bundle does).")
@click.option("--score-threshold", type=float, default=None,
              help="Detection: keep boxes scoring at least this (default 0.5).")
@click.option("--points", is_flag=True, help="Detection: add a layer of object centres.")
@click.option("--zones", default=None, help="Detection: polygons (any format, any CRS) to count objects in, per class.")
@click.option("--nms-iou", type=float, default=0.5, show_default=True,
              help="Detection: boxes of one class overlapping more than this are duplicates.")
@click.option("--review-band", callback=lambda _c, _p, v: _float_pair(v), default=None,
              help="Confidence band LOW,HIGH (e.g. 0.3,0.6): features in it get review=1 and go to a 'review' layer.")
@click.option("--box-fusion", type=click.Choice(["best", "wbf"]), default="best", show_default=True,
              help="Detection: a merged box takes the best view's sides, or the score-weighted mean (wbf).")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.option("--workers", type=int, default=None, help="Local reader threads (default: 2-4).")
@_overwrite()
@_report
@_quiet
@_friendly_errors
def predict(rasters: tuple[str, ...], quiet: bool, report: bool, **kwargs: Any) -> None:
    """Segment RASTERS, or detect and count objects in them, as the bundle's task says.

    RASTERS are GeoTIFF, COG, VRT or GDAL paths. Segmentation writes a class COG and
    polygons per class; detection writes one box per object, merged across tiles.
    """
    from geovision.engine.summary import format_table
    from geovision.workflows.predict import predict as run

    result = run(list(rasters), progress=_progress(quiet), **kwargs)
    if not quiet:
        click.echo(format_table(result.summary))
    if report:
        _write_report(result.vector_path, kwargs["overwrite"])


def _write_report(vector: Any, overwrite: bool) -> None:
    from geovision.report import write_report

    click.echo(f"report: {write_report(vector, overwrite=overwrite)}")


@main.command()
@click.option("--out", "-o", default="geovision-demo", show_default=True, help="Folder for the sample and results.")
@click.option("--size", type=int, default=4096, show_default=True, help="Sample scene edge in pixels (0.3 m each).")
@_quiet
@_friendly_errors
def demo(out: str, size: int, quiet: bool) -> None:
    """Generate the built-in sample scene; find its buildings, trees and crop stress; write the report."""
    from geovision.workflows.demo import run_demo

    if not quiet:
        click.echo(f"writing the sample scene ({size} x {size} px) into {out}/ ...")
    result = run_demo(out, size=size, progress=_progress(quiet))
    if not quiet:
        click.echo(result.report())


@main.command()
@click.option("--images", "-i", multiple=True, required=True, help="Training raster (repeat for several).")
@click.option("--labels", "-l", required=True, help="Vector labels: GeoPackage, GeoJSON, Shapefile, ...")
@click.option("--class-field", default=None,
              help="Field of the labels that holds the class name (none: one class, named by --classes).")
@click.option("--task", type=click.Choice(["segmentation", "detection"]), default="segmentation", show_default=True)
@click.option("--out", "-o", required=True, help="Bundle to write (.safetensors).")
@click.option("--aoi", default=None, help="Polygons where labelling is complete (unlabelled there = background).")
@click.option("--classes", callback=_str_list, default=None,
              help="Class names in order (default: the field's values, sorted).")
@click.option("--bands", callback=_int_list, default=None, help="1-based bands to train on (default: all).")
@click.option("--arch", default=None, help="Architecture (default unet; detection fasterrcnn).")
@click.option("--encoder", default=None, help="Encoder/backbone (default resnet18).")
@click.option("--pretrained", type=click.Choice(["imagenet", "none"]), default="none", show_default=True,
              help="ImageNet encoder weights (offline for tu-tf_efficientnet_lite0, else downloaded).")
@click.option("--init", default=None, help="Fine-tune this bundle instead of starting afresh.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--tile", type=int, default=256, show_default=True, help="Chip size in pixels (multiple of 32).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW, cosine).")
@click.option("--augment", type=click.Choice(["none", "light", "strong"]), default="light", show_default=True)
@click.option("--augment-params", "augment_params_json", default=None,
              help='Override augmentation settings as JSON, e.g. \'{"scale": [0.8, 1.2], "noise_p": 0.3}\'.')
@click.option("--loss", type=click.Choice(["dice_ce", "ce", "focal", "dice_focal"]), default="dice_ce",
              show_default=True, help="Segmentation loss.")
@click.option("--class-weights", type=click.Choice(["none", "auto"]), default="none", show_default=True,
              help="auto: weight classes by inverse square-root pixel frequency.")
@click.option("--val-block", type=float, default=None, help="Split block size in metres (default: 4 chips).")
@click.option("--val-buffer", type=float, default=None,
              help="Gap between split blocks in metres (default: half a chip).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--split-layer", default=None, help="Polygons drawing the split instead of blocks (field --split-field).")
@click.option("--split-field", default="split", show_default=True, help="train / validation / test per polygon.")
@click.option("--chip-stride", type=int, default=None, help="Pixels between candidate chips (default: half a chip).")
@click.option("--test-fraction", type=float, default=0.0, show_default=True,
              help="Share of labelled blocks held out for testing.")
@click.option("--positive-fraction", type=float, default=0.7, show_default=True,
              help="Share of chips per epoch that hold labels (the rest are negatives).")
@click.option("--class-balanced", is_flag=True, help="Draw chips of rare classes as often as common ones.")
@click.option("--arch-params", "arch_params_json", default=None, help='Extra architecture arguments as JSON.')
@click.option("--patience", type=int, default=5, show_default=True, help="Early stopping: epochs without improvement.")
@click.option("--seed", type=int, default=0, show_default=True)
@_device
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@_overwrite("Replace an existing bundle and report.")
@_quiet
@_friendly_errors
def train(images: tuple[str, ...], labels: str, quiet: bool, arch_params_json: str | None,
          augment_params_json: str | None, **kwargs: Any) -> None:
    """Train a model from rasters and vector labels; write a bundle and a report folder."""
    import json

    from geovision.errors import ConfigError
    from geovision.workflows.train import train as run

    for flag, text, key in (("--arch-params", arch_params_json, "arch_params"),
                            ("--augment-params", augment_params_json, "augment_params")):
        if text:
            try:
                kwargs[key] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{flag} is not valid JSON ({exc})") from None
    result = run(list(images), labels, progress=not quiet, on_epoch=None if quiet else _echo_epoch, **kwargs)
    best = None if result.best_metric is None else round(result.best_metric, 6)
    click.echo(f"best epoch {result.best_epoch} (validation metric {best}); wrote {result.bundle} and "
               f"{result.report}/")


def _echo_epoch(record: dict[str, Any]) -> None:
    val = "" if record["val_loss"] is None else f", val loss {record['val_loss']:.4f}"
    metric = "n/a" if record["metric"] is None else f"{record['metric']:.4f}"
    click.echo(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}{val}, val metric {metric}")


@main.command()
@click.option("--pred", required=True,
              help="Predictions: a vector layer (e.g. from geovision predict) or a class raster.")
@click.option("--truth", required=True, help="Ground truth: a vector layer (any format, any CRS) or a class raster.")
@click.option("--out", "-o", required=True, help="Folder for metrics.json, plots and errors.gpkg.")
@click.option("--aoi", default=None, help="Polygons where the truth is complete; scoring stays inside them.")
@click.option("--iou", type=float, default=0.5, show_default=True, help="IoU for a prediction to match a true object.")
@click.option("--raster", default=None, help="Compare vectors pixel by pixel on this raster's grid.")
@click.option("--classes", callback=_str_list, default=None,
              help="Class names by class-raster id, e.g. background,building (default: from the vector side).")
@click.option("--pred-class-field", default="class_name", show_default=True)
@click.option("--truth-class-field", default=None, help="Default: the predictions' field, else one class.")
@click.option("--score-field", default=None, help="Default: score, or mean_probability, when present.")
@_overwrite("Write into a non-empty --out folder.")
@_friendly_errors
def evaluate(**kwargs: Any) -> None:
    """Score predictions against ground truth: object and area metrics, plots, a TP/FP/FN layer."""
    from geovision.workflows.evaluate import evaluate as run

    result = run(**kwargs)
    if result.metrics["objects"] is not None:
        o = result.metrics["objects"]["overall"]
        show = {k: (None if o.get(k) is None else round(o[k], 4))
                for k in ("tp", "fp", "fn", "precision", "recall", "f1")}
        click.echo(f"objects at IoU {kwargs['iou']}: {show}")
    areas = result.metrics["areas"]
    click.echo(f"mean IoU (area): {areas['mean_iou']}")
    click.echo(f"wrote {result.out}/metrics.json, errors.gpkg and plots")


@main.command()
@click.argument("raster")
@click.option("--fields", "-f", required=True, help="Field polygons: any vector format, any CRS.")
@click.option("--out", "-o", required=True, help="Fields layer with statistics: .gpkg, .geojson, .fgb or .parquet.")
@click.option("--sensor", default=None,
              help="Band preset: sentinel2-l2a, landsat8-9-oli, planetscope-4band, planetscope-8band, "
                   "micasense-rededge-mx, dji-p4-multispectral.")
@click.option("--bands", default=None, help="Band positions, e.g. nir=1,red=2,green=3 (override the preset).")
@click.option("--index", default="ndvi", show_default=True, help="ndvi, ndre, gndvi, savi, evi or msavi2.")
@click.option("--method", type=click.Choice(["percentile", "zscore", "absolute", "model"]), default="percentile",
              show_default=True, help="How index values become healthy / moderate / severe.")
@click.option("--thresholds", default=None,
              help="SEVERE,MODERATE: index values (absolute, e.g. 0.4,0.6), deficits below the field's p90 "
                   "(percentile, default 0.30,0.15) or z-scores (zscore, default -2,-1).")
@click.option("--reference-percentile", type=float, default=90.0, show_default=True,
              help="percentile: the field's reference level.")
@click.option("--min-std", type=float, default=0.05, show_default=True,
              help="zscore: floor of a field's standard deviation (index units).")
@click.option("--model", "-m", default=None, help="method model: a segmentation bundle with classes "
                                                  "healthy, moderate, severe.")
@click.option("--exclude", default=None, help="Polygons (clouds, buildings...) left out of the statistics.")
@click.option("--no-water-mask", "water", is_flag=True, flag_value=False, default=True,
              help="Keep open water (NDWI > 0) in the statistics.")
@click.option("--no-cloud-mask", "clouds", is_flag=True, flag_value=False, default=True,
              help="Keep bright cloud pixels (needs red, green, blue) in the statistics.")
@click.option("--id-column", default=None, help="Field id column (default: field_id, else 1..N).")
@click.option("--baseline", default=None, help="Sentinel-2 processing baseline, e.g. 05.10 (sets the -0.1 offset).")
@click.option("--scale", type=float, default=None, help="Reflectance = DN * scale + offset (overrides the preset).")
@click.option("--offset", type=float, default=None, help="Reflectance offset (overrides the preset).")
@click.option("--min-area", type=float, default=None, help="Drop stress polygons smaller than this (m²).")
@_overwrite()
@_report
@_quiet
@_friendly_errors
def stress(raster: str, fields: str, out: str, quiet: bool, report: bool, **kwargs: Any) -> None:
    """Map crop stress in RASTER and summarise it per field.

    Writes the fields with index statistics and stress hectares (OUT), the stress
    polygons, <stem>.<index>.tif, <stem>.stress.tif, <stem>.fields.csv,
    <stem>.summary.json and <stem>.quicklook.png.
    """
    from geovision.agri.summary import format_table
    from geovision.workflows.stress import stress as run

    result = run(raster, fields, out, progress=_progress(quiet), **kwargs)
    if not quiet:
        click.echo(format_table(result.summary))
    if report:
        _write_report(result.vector_path, kwargs["overwrite"])


@main.command()
@click.argument("vector")
@click.option("--out", "-o", default=None, help="The HTML page (default: <stem>.report.html beside VECTOR).")
@click.option("--title", default=None, help="Page title (default: from the file name).")
@_overwrite("Replace an existing page.")
@_friendly_errors
def report(vector: str, out: str | None, title: str | None, overwrite: bool) -> None:
    """Write one self-contained, offline HTML map report of a geovision output VECTOR.

    The page shows the vector layers, quicklooks of the <stem>.*.tif rasters beside
    it, a legend, per-class counts and areas, a confidence histogram and any
    evaluation plots. It needs no network: open it in any browser.
    """
    from geovision.report import write_report

    click.echo(f"report: {write_report(vector, out, title=title, overwrite=overwrite)}")


@main.group()
def model() -> None:
    """Create and inspect model bundles."""


@model.command("init")
@click.option("--task", type=click.Choice(["segmentation", "detection"]), default="segmentation", show_default=True)
@click.option("--arch", default=None,
              help="Architecture: segmentation any segmentation-models-pytorch name or 'shallow' (default unet); "
                   "detection fasterrcnn (default), retinanet or fcos.")
@click.option("--encoder", default=None,
              help="Encoder/backbone (default resnet18; 'none' for shallow; detection also resnet34/50/101, "
                   "mobilenet_v3_large).")
@click.option("--arch-params", default=None, help='Extra architecture arguments as JSON, e.g. \'{"depth": 3}\'.')
@click.option("--bands", required=True, help="Number of input bands, or the 1-based band list, e.g. 3 or 4,3,2.")
@click.option("--band-names", callback=_str_list, default=None, help="Names of the bands, e.g. red,green,blue.")
@click.option("--classes", callback=_str_list, required=True, help="Class names, e.g. background,building.")
@click.option("--tile", type=int, default=512, show_default=True, help="Tile size the model runs at.")
@click.option("--resolution", type=float, default=None, help="Ground resolution in metres the model is meant for.")
@click.option("--encoder-weights", default=None, help="e.g. imagenet (downloads unless cached; needs network).")
@click.option("--out", "-o", required=True, help="Bundle to write (.safetensors).")
@_overwrite("Replace an existing bundle.")
@_friendly_errors
def model_init(task: Literal["segmentation", "detection"], arch: str | None, encoder: str | None,
               arch_params: str | None, bands: str, band_names: list[str] | None, classes: list[str], tile: int,
               resolution: float | None, encoder_weights: str | None, out: str, overwrite: bool) -> None:
    """Create an untrained bundle (to train from, or to benchmark).

    Detection bundles get a 'background' class first when --classes does not start with one.
    """
    import json

    from geovision.errors import ConfigError, OutputExistsError
    from geovision.models.registry import init_bundle

    try:
        params = json.loads(arch_params) if arch_params else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-params is not valid JSON ({exc}); e.g. '{{\"depth\": 3}}'") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--arch-params must be a JSON object such as '{{\"depth\": 3}}', got {arch_params}")
    arch = arch or ("fasterrcnn" if task == "detection" else "unet")

    if os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{out}: exists already. Pass --overwrite to replace it.")
    parsed = _int_list(None, None, bands) or []
    band_arg: int | list[int] = parsed[0] if len(parsed) == 1 else parsed
    config = init_bundle(out, task=task, arch=arch, encoder=encoder, bands=band_arg, classes=classes,
                         band_names=band_names, tile_size=tile, ground_resolution_m=resolution,
                         encoder_weights=encoder_weights, arch_params=params)
    click.echo(f"wrote {out} ({config.task}, {config.arch}/{config.encoder}, {config.in_channels} bands, "
               f"{len(config.classes)} classes)")


@model.command("info")
@click.argument("bundle")
@click.option("--json", "as_json", is_flag=True, help="Print the configuration as JSON.")
@_friendly_errors
def model_info(bundle: str, as_json: bool) -> None:
    """Print a bundle's configuration (reads the header only)."""
    from geovision.models.bundle import read_config

    config = read_config(bundle)
    if as_json:
        click.echo(config.model_dump_json(indent=2))
        return
    data = config.model_dump()
    for key, value in data.items():
        if key == "classes":
            value = ", ".join(f"{i}:{c['name']} {c['color']}" for i, c in enumerate(value))
        click.echo(f"{key:>20}: {value}")


@model.command("upgrade")
@click.argument("bundle")
@click.option("--out", "-o", required=True, help="The bundle in the current format (.safetensors).")
@_overwrite("Replace an existing bundle.")
@_friendly_errors
def model_upgrade(bundle: str, out: str, overwrite: bool) -> None:
    """Re-save a bundle of an older format (its digest checked first) in the current one."""
    from geovision.errors import OutputExistsError
    from geovision.models.bundle import resave_bundle

    if os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{out}: exists already. Pass --overwrite to replace it.")
    resave_bundle(bundle, out)
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
