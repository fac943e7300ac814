"""``geovision demo``: the built-in sample scene through every workflow, scored and reported.

Writes a synthetic 4-band scene (:mod:`geovision.sample`, seed 0, which the shipped
models never saw in training), then runs

* :func:`~geovision.workflows.predict.predict` with the shipped building model
  (``geovision/data/sample_buildings.safetensors``, segmentation),
* :func:`~geovision.workflows.predict.predict` with the shipped tree-crown detector
  (``geovision/data/sample_trees.safetensors``),
* :func:`~geovision.workflows.stress.stress` on the scene's fields, with the buildings
  just found left out of the field statistics,

scores each against the scene's truth (building IoU and objects found; tree precision
and recall at IoU 0.5; stressed hectares against those drawn), gathers every layer in
``demo.gpkg`` and writes the offline HTML report.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geovision.engine.progress import ProgressOption
from geovision.errors import BundleError, OutputExistsError

if TYPE_CHECKING:
    from geovision.sample import SampleScene

__all__ = ["SAMPLE_BUNDLE", "TREES_BUNDLE", "DemoResult", "Score", "run_demo", "sample_bundle", "score_buildings"]

SAMPLE_BUNDLE = "sample_buildings.safetensors"
"""File name of the shipped building model, in the ``geovision/data`` package folder."""

TREES_BUNDLE = "sample_trees.safetensors"
"""File name of the shipped tree-crown detector, in the ``geovision/data`` package folder."""

DEMO_SEED = 0
"""Seed of the demo scene; the shipped model is trained on other seeds."""


@dataclass(frozen=True, slots=True)
class Score:
    """A building mask scored against the truth, over pixels valid in both.

    Attributes:
        iou: building intersection over union (pixels).
        precision: share of predicted building pixels that are building.
        recall: share of building pixels predicted as building.
        truth_objects: buildings in the truth (4-connected, at least ``min_area_px``).
        matched_objects: truth buildings whose pixels are at least half predicted as building.
        truth_pixels: building pixels in the truth.
        predicted_pixels: pixels predicted as building.
    """

    iou: float
    precision: float
    recall: float
    truth_objects: int
    matched_objects: int
    truth_pixels: int
    predicted_pixels: int


def score_buildings(classes: np.ndarray, truth: np.ndarray, *, building_class: int = 1,
                    nodata: int = 255, min_area_px: int = 0) -> Score:
    """Score a class raster against a building truth mask.

    Args:
        classes: ``(rows, cols)`` class ids; ``nodata`` where nothing was predicted.
        truth: ``(rows, cols)`` 0 background, 1 building, ``nodata`` where unknown.
        building_class: the class id in ``classes`` that means building.
        nodata: the no-data value of both rasters.
        min_area_px: truth buildings smaller than this (pixels, after the nodata cut) are not counted
            as objects (they still count in the pixel scores).

    Returns:
        Pixel and object scores.

    Raises:
        ValueError: the shapes differ.
    """
    from scipy import ndimage

    if classes.shape != truth.shape:
        raise ValueError(f"classes {classes.shape} and truth {truth.shape} must have the same (rows, cols)")
    valid = (classes != nodata) & (truth != nodata)
    pred = (classes == building_class) & valid
    true = (truth == 1) & valid
    inter = int(np.count_nonzero(pred & true))
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    union = n_pred + n_true - inter
    labels, n = ndimage.label(true)  # 4-connected, as the vectoriser
    size = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    hit = np.bincount(labels.ravel(), weights=pred.ravel(), minlength=n + 1)[1:]
    counted = size >= max(min_area_px, 1)
    return Score(
        iou=inter / union if union else 1.0,
        precision=inter / n_pred if n_pred else 1.0,
        recall=inter / n_true if n_true else 1.0,
        truth_objects=int(counted.sum()),
        matched_objects=int((counted & (hit >= 0.5 * size)).sum()),
        truth_pixels=n_true,
        predicted_pixels=n_pred,
    )


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What :func:`run_demo` wrote and how well the shipped models did against the scene's truth.

    Attributes:
        out_dir: the output folder.
        image: the sample scene (4-band GeoTIFF: red, green, blue, NIR).
        truth: its building truth raster (0, 1, 255 nodata).
        gpkg: ``demo.gpkg``, with layers ``buildings``, ``trees``, ``fields`` and ``stress``.
        report_html: ``demo.report.html``, the offline map report.
        summary: ``demo.summary.json``.
        vector: the building polygons (``buildings.gpkg``, layer ``predictions``).
        classes: the building class COG.
        probabilities: the building probability COG.
        size: scene edge in pixels.
        pixel_m: pixel size in metres.
        buildings_found: building polygons written.
        building_area_m2: their total area (m²).
        truth_buildings: buildings in the truth (at least ``min_area`` m²).
        truth_area_m2: building area in the truth (m², valid pixels).
        matched_buildings: truth buildings at least half covered by predicted building pixels.
        iou: building IoU against the truth over valid pixels.
        trees_found: tree crowns detected.
        truth_trees: visible tree crowns drawn.
        trees_matched: detections matching a drawn crown one to one at IoU >= 0.5.
        fields: field polygons analysed.
        stressed_ha: moderate + severe stress found in the fields (ha).
        truth_stressed_ha: stressed crop drawn in the fields (ha).
        elapsed_s: wall time of the whole demo (seconds).
        seconds: wall time of each step.
    """

    out_dir: Path
    image: Path
    truth: Path
    gpkg: Path
    report_html: Path
    summary: Path
    vector: Path
    classes: Path
    probabilities: Path
    size: int
    pixel_m: float
    buildings_found: int
    building_area_m2: float
    truth_buildings: int
    truth_area_m2: float
    matched_buildings: int
    iou: float
    trees_found: int
    truth_trees: int
    trees_matched: int
    fields: int
    stressed_ha: float
    truth_stressed_ha: float
    elapsed_s: float
    seconds: dict[str, float]

    def report(self) -> str:
        """A short paragraph: what ran, what was found, how good it is, where the files are."""
        side_m = self.size * self.pixel_m
        precision = self.trees_matched / self.trees_found if self.trees_found else 1.0
        recall = self.trees_matched / self.truth_trees if self.truth_trees else 1.0
        return (
            f"geovision demo: a synthetic {self.size} x {self.size} px scene ({side_m:,.0f} m x {side_m:,.0f} m at "
            f"{self.pixel_m:g} m, red/green/blue/NIR) through the built-in building model, the tree-crown detector "
            f"and the crop-stress workflow in {self.elapsed_s:.1f} s.\n"
            f"Buildings: {self.buildings_found} found, {self.building_area_m2:,.0f} m² (truth {self.truth_buildings}, "
            f"{self.truth_area_m2:,.0f} m²; {self.matched_buildings} found; IoU {self.iou:.3f}).\n"
            f"Trees: {self.trees_found} crowns detected (truth {self.truth_trees}; precision {precision:.2f}, "
            f"recall {recall:.2f} at IoU 0.5).\n"
            f"Crop stress: {self.stressed_ha:.2f} ha moderate or severe in {self.fields} fields "
            f"(drawn: {self.truth_stressed_ha:.2f} ha of stressed crop).\n"
            f"Open the report: {self.report_html}\n"
            f"All layers: {self.gpkg}; rasters and summaries beside it in {self.out_dir}."
        )


@contextlib.contextmanager
def sample_bundle(name: str | None = None) -> Iterator[Path]:
    """A shipped model as a file path (extracted while in use if geovision is zipped).

    Args:
        name: the bundle's file name in ``geovision/data``; default the building model
            (:data:`SAMPLE_BUNDLE`), or :data:`TREES_BUNDLE` for the tree-crown detector.

    Raises:
        BundleError: the bundle is not part of this installation.
    """
    name = name or SAMPLE_BUNDLE
    script = "train_sample_detector.py" if name == TREES_BUNDLE else "train_sample_model.py"
    resource = resources.files("geovision").joinpath("data", name)
    if not resource.is_file():
        raise BundleError(
            f"the built-in sample model {name} is missing from this geovision installation "
            f"(looked for {resource}). Reinstall geovision (pip install --force-reinstall geovision); "
            f"in a source checkout, build it with `python scripts/{script}`."
        )
    with resources.as_file(resource) as path:
        yield Path(path)


def run_demo(
    out_dir: str | os.PathLike[str] = "geovision-demo",
    *,
    size: int = 4096,
    overwrite: bool = True,
    progress: ProgressOption = False,
) -> DemoResult:
    """Write the sample scene, run the shipped models and the crop-stress workflow, and report.

    Writes, in ``out_dir``: ``sample.tif`` (the scene, seed 0) with its truths
    (``sample.truth.tif``, ``sample.trees.gpkg``, ``sample.fields.gpkg``);
    ``buildings.gpkg`` with ``buildings.classes.tif``; ``trees.gpkg``;
    ``demo.fields.gpkg`` with ``demo.fields.ndvi.tif`` and ``demo.fields.stress.tif``
    (each with its own summary); then ``demo.gpkg`` holding every layer, ``demo.summary.json``
    and ``demo.report.html``.

    Args:
        out_dir: the output folder (created if missing).
        size: scene edge in pixels (0.3 m pixels; 4096 px is 1.2 km).
        overwrite: replace outputs of an earlier run.
        progress: show progress bars (the CLI prints :meth:`DemoResult.report` at the end).

    Returns:
        The paths, the counts and areas, and the scores against the truth.

    Raises:
        BundleError: a shipped model is missing.
        OutputExistsError: outputs exist and ``overwrite`` is false.
    """
    import rasterio

    from geovision.models.bundle import read_config
    from geovision.report import write_report
    from geovision.sample import make_sample_scene
    from geovision.workflows.predict import predict
    from geovision.workflows.stress import stress

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(out_dir)
    image = out / "sample.tif"
    if not overwrite and out.is_dir():
        existing = sorted(p.name for p in out.iterdir() if p.name.startswith(("sample.", "demo.")))
        if existing:
            raise OutputExistsError(
                f"{out} already holds demo outputs ({', '.join(existing[:4])}{', ...' if len(existing) > 4 else ''}); "
                "pass overwrite=True (--overwrite) to replace them, or choose another folder."
            )
    with sample_bundle() as buildings_bundle, sample_bundle(TREES_BUNDLE) as trees_bundle:
        config = read_config(buildings_bundle)
        tree_config = read_config(trees_bundle)
        out.mkdir(parents=True, exist_ok=True)
        step = time.perf_counter()
        scene = make_sample_scene(image, size=size, seed=DEMO_SEED)
        assert scene.fields_path is not None and scene.trees_path is not None  # make_sample_scene writes both
        seconds["scene"] = time.perf_counter() - step

        step = time.perf_counter()
        min_area = 5.0
        seg = predict(image, buildings_bundle, out / "buildings.gpkg", overwrite=True, progress=progress,
                      probabilities=True, min_area=min_area, bands=list(config.bands))
        seconds["buildings"] = time.perf_counter() - step

        step = time.perf_counter()
        det = predict(image, trees_bundle, out / "trees.gpkg", overwrite=True, progress=progress,
                      bands=list(tree_config.bands))
        seconds["trees"] = time.perf_counter() - step

    step = time.perf_counter()
    # crop stress at field scale: 0.3 m pixels resolve the soil between crop rows, which any index reads
    # as bare ground, so the scene is averaged to 3 m first (as one would a drone mosaic; at 1.2 m the
    # rows still alias into stripes). Stress is judged within each field (z-score). The bands are
    # reflectance on a 0-255 scale; the scene has no clouds (its roofs are bright enough to pass the cloud
    # test), and the buildings found above are left out of the fields.
    coarse = _average(image, out / "sample.3m.tif", factor=10)
    crop = stress(coarse, scene.fields_path, out / "demo.fields.gpkg", bands="red=1,green=2,blue=3,nir=4",
                  scale=1 / 255, index="ndvi", method="zscore", exclude=seg.vector_path, clouds=False,
                  overwrite=True, progress=progress)
    seconds["stress"] = time.perf_counter() - step

    step = time.perf_counter()
    building = config.class_names.index("building")
    with rasterio.open(seg.class_rasters[0]) as ds:
        classes = ds.read(1)
    truth = scene.truth()
    pixel_area = scene.pixel_m**2
    score = score_buildings(classes, truth, building_class=building, min_area_px=int(np.ceil(min_area / pixel_area)))
    del classes, truth
    trees = _score_trees(det.vector_path, scene.trees_path)
    truth_stressed_ha = _truth_stressed_ha(scene)
    found = seg.summary["classes"].get("building", {"count": 0, "area_m2": 0.0})
    gpkg = out / "demo.gpkg"
    _combine(gpkg, {"buildings": (seg.vector_path, "predictions"), "trees": (det.vector_path, "predictions"),
                    "fields": (crop.vector_path, "fields"), "stress": (crop.stress_layer_path, "stress")})
    summary = _demo_summary(seg.summary, det.summary, crop.summary, score, trees, truth_stressed_ha, size,
                            scene.pixel_m)
    summary_path = out / "demo.summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    report_html = write_report(gpkg, title="geovision demo: buildings, trees and crop stress", overwrite=True)
    seconds["scores_and_report"] = time.perf_counter() - step
    elapsed = time.perf_counter() - t0
    summary["elapsed_s"] = round(elapsed, 2)
    summary["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    summary_path.write_text(json.dumps(summary, indent=2))
    demo = DemoResult(
        out_dir=out,
        image=scene.path,
        truth=scene.truth_path,
        gpkg=gpkg,
        report_html=report_html,
        summary=summary_path,
        vector=seg.vector_path,
        classes=seg.class_rasters[0],
        probabilities=seg.probability_rasters[0],
        size=size,
        pixel_m=scene.pixel_m,
        buildings_found=int(found["count"]),
        building_area_m2=float(found["area_m2"]),
        truth_buildings=score.truth_objects,
        truth_area_m2=score.truth_pixels * pixel_area,
        matched_buildings=score.matched_objects,
        iou=score.iou,
        trees_found=trees["found"],
        truth_trees=trees["truth"],
        trees_matched=trees["matched"],
        fields=int(crop.summary["fields"]["count"]),
        stressed_ha=float(crop.summary["classes"]["moderate"]["area_ha"]
                          + crop.summary["classes"]["severe"]["area_ha"]),
        truth_stressed_ha=truth_stressed_ha,
        elapsed_s=elapsed,
        seconds=seconds,
    )
    return demo


def _score_trees(found_path: Path, truth_path: Path) -> dict[str, int]:
    import pyogrio

    from geovision.evaluation.metrics import match_objects

    found = pyogrio.read_dataframe(found_path, layer="predictions")
    truth = pyogrio.read_dataframe(truth_path)
    scores = found["score"].to_numpy() if "score" in found else None
    matching = match_objects(found.geometry.values, truth.geometry.values, iou_threshold=0.5, pred_scores=scores)
    return {"found": len(found), "truth": len(truth), "matched": int(matching.tp)}


def _truth_stressed_ha(scene: SampleScene) -> float:
    """Stressed crop drawn in the fields (ha), from the fields layer the sample wrote."""
    import pyogrio

    return float(pyogrio.read_dataframe(scene.fields_path, read_geometry=False)["stressed_m2"].sum() / 1e4)


def _average(src_path: Path, dst_path: Path, *, factor: int) -> Path:
    """``src_path`` averaged over ``factor`` x ``factor`` pixels into ``dst_path``, block by block."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(src_path) as src:
        width, height = src.width // factor, src.height // factor
        transform = src.transform @ src.transform.scale(src.width / width, src.height / height)
        profile = {"driver": "GTiff", "width": width, "height": height, "count": src.count, "dtype": src.dtypes[0],
                       "crs": src.crs, "transform": transform, "nodata": src.nodata, "tiled": True, "blockxsize": 256,
                       "blockysize": 256, "compress": "deflate", "photometric": "MINISBLACK"}
        with WarpedVRT(src, transform=transform, width=width, height=height, resampling=Resampling.average,
                       src_nodata=src.nodata, nodata=src.nodata) as vrt, rasterio.open(dst_path, "w", **profile) as dst:
            for _, window in dst.block_windows(1):
                dst.write(vrt.read(window=window), window=window)
    return dst_path


def _combine(gpkg: Path, layers: dict[str, tuple[Path, str]]) -> None:
    """Copy each ``(source, layer)`` into one GeoPackage (replaced atomically)."""
    import pyogrio

    tmp = gpkg.with_name(f".{gpkg.stem}.partial{gpkg.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        for name, (path, layer) in layers.items():
            frame = pyogrio.read_dataframe(path, layer=layer)
            pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG", promote_to_multi=name == "fields")
        os.replace(tmp, gpkg)
    finally:
        tmp.unlink(missing_ok=True)


def _demo_summary(seg: dict, det: dict, crop: dict, score: Score, trees: dict[str, int], truth_stressed_ha: float,
                  size: int, pixel_m: float) -> dict:
    classes: dict[str, dict] = {}
    colors = {"building": "#911eb4", "tree": "#00a6a6"}  # apart from the stress classes' greens and reds
    for name, c in [*seg["classes"].items(), *det["classes"].items()]:
        classes[name] = {"count": c["count"], "area_m2": c["area_m2"], "area_ha": c["area_ha"],
                         **({"color": colors[name]} if name in colors else {})}
    polygons = crop.get("stress_polygons", {})
    for name in ("healthy", "moderate", "severe"):
        c = crop["classes"][name]
        classes[name] = {"count": polygons.get(name, {}).get("count"), "area_m2": c["area_m2"], "area_ha": c["area_ha"],
                         "color": c["color"]}
    return {
        "workflow": "demo",
        "geovision_version": seg.get("geovision_version"),
        "scene": {"size_px": size, "pixel_m": pixel_m, "bands": ["red", "green", "blue", "nir"], "seed": DEMO_SEED},
        "classes": classes,
        "class_names": crop.get("class_names"),  # the values of demo.fields.stress.tif
        "scores": {
            "buildings": {"iou": round(score.iou, 4), "precision": round(score.precision, 4),
                          "recall": round(score.recall, 4), "truth_objects": score.truth_objects,
                          "matched_objects": score.matched_objects},
            "trees": {**trees, "precision": round(trees["matched"] / trees["found"], 4) if trees["found"] else None,
                      "recall": round(trees["matched"] / trees["truth"], 4) if trees["truth"] else None},
            "stress": {"found_ha": round(crop["classes"]["moderate"]["area_ha"]
                                        + crop["classes"]["severe"]["area_ha"], 4),
                       "truth_ha": round(truth_stressed_ha, 4)},
        },
        "fields": crop["fields"],
        "runs": {"buildings": seg, "trees": det, "stress": crop},
    }
