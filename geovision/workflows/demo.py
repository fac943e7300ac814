"""``geovision demo``: segment the built-in sample scene with the shipped building model.

Writes a synthetic 4-band scene (:mod:`geovision.sample`, seed 0, which the
shipped model never saw in training), runs :func:`~geovision.workflows.predict.predict`
on it with ``geovision/data/sample_buildings.safetensors`` and scores the result
against the scene's truth raster: building IoU over valid pixels, and the number
of buildings found against the number drawn.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from geovision.errors import BundleError, OutputExistsError

__all__ = ["SAMPLE_BUNDLE", "DemoResult", "Score", "run_demo", "sample_bundle", "score_buildings"]

SAMPLE_BUNDLE = "sample_buildings.safetensors"
"""File name of the shipped building model, in the ``geovision/data`` package folder."""

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
    """What :func:`run_demo` wrote and how well the model did.

    Attributes:
        out_dir: the output folder.
        image: the sample scene (4-band GeoTIFF: red, green, blue, NIR).
        truth: its building truth raster (0, 1, 255 nodata).
        vector: the building polygons (GeoPackage, layer ``predictions``).
        classes: the class COG.
        probabilities: the probability COG.
        summary: the predict summary JSON.
        size: scene edge in pixels.
        pixel_m: pixel size in metres.
        buildings_found: building polygons written.
        building_area_m2: their total area (m²).
        truth_buildings: buildings in the truth (at least ``min_area`` m²).
        truth_area_m2: building area in the truth (m², valid pixels).
        matched_buildings: truth buildings at least half covered by predicted building pixels.
        iou: building IoU against the truth over valid pixels.
        elapsed_s: wall time of the whole demo (seconds).
    """

    out_dir: Path
    image: Path
    truth: Path
    vector: Path
    classes: Path
    probabilities: Path
    summary: Path
    size: int
    pixel_m: float
    buildings_found: int
    building_area_m2: float
    truth_buildings: int
    truth_area_m2: float
    matched_buildings: int
    iou: float
    elapsed_s: float

    def report(self) -> str:
        """A short paragraph: what ran, what was found, how good it is, where the files are."""
        side_m = self.size * self.pixel_m
        return (
            f"geovision demo: segmented a synthetic {self.size} x {self.size} px scene "
            f"({side_m:,.0f} m x {side_m:,.0f} m at {self.pixel_m:g} m, red/green/blue/NIR) with the built-in "
            f"building model in {self.elapsed_s:.1f} s.\n"
            f"Found {self.buildings_found} buildings covering {self.building_area_m2:,.0f} m² "
            f"(truth: {self.truth_buildings} buildings, {self.truth_area_m2:,.0f} m²; "
            f"{self.matched_buildings} of them found). Building IoU against the truth: {self.iou:.3f}.\n"
            f"Outputs in {self.out_dir}: {self.image.name} (the scene), {self.truth.name} (its truth), "
            f"{self.vector.name} (building polygons), {self.classes.name}, {self.probabilities.name}, "
            f"{self.summary.name}."
        )


@contextlib.contextmanager
def sample_bundle() -> Iterator[Path]:
    """The shipped building model as a file path (extracted while in use if geovision is zipped).

    Raises:
        BundleError: the bundle is not part of this installation.
    """
    resource = resources.files("geovision").joinpath("data", SAMPLE_BUNDLE)
    if not resource.is_file():
        raise BundleError(
            f"the built-in sample model {SAMPLE_BUNDLE} is missing from this geovision installation "
            f"(looked for {resource}). Reinstall geovision (pip install --force-reinstall geovision); "
            "in a source checkout, build it with `python scripts/train_sample_model.py`."
        )
    with resources.as_file(resource) as path:
        yield Path(path)


def run_demo(
    out_dir: str | os.PathLike[str] = "geovision-demo",
    *,
    size: int = 2048,
    overwrite: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Write the sample scene, find its buildings with the shipped model, and score them.

    Writes, in ``out_dir``: ``sample.tif`` (the scene, seed 0), ``sample.truth.tif``,
    ``buildings.gpkg`` (polygons of at least 5 m²), ``buildings.classes.tif``,
    ``buildings.probabilities.tif`` and ``buildings.summary.json``.

    Args:
        out_dir: the output folder (created if missing).
        size: scene edge in pixels (0.3 m pixels; 2048 px is 614 m).
        overwrite: replace outputs of an earlier run.
        progress: show the progress bar and print the report paragraph.

    Returns:
        The paths, the counts and areas, and the building IoU against the truth.

    Raises:
        BundleError: the shipped model is missing.
        OutputExistsError: outputs exist and ``overwrite`` is false.
    """
    import rasterio

    from geovision.models.bundle import read_config
    from geovision.sample import make_sample_scene
    from geovision.workflows.predict import predict

    t0 = time.perf_counter()
    out = Path(out_dir)
    image, vector = out / "sample.tif", out / "buildings.gpkg"
    with sample_bundle() as bundle:
        config = read_config(bundle)
        if not overwrite:
            names = ("sample.tif", "sample.truth.tif", "buildings.gpkg", "buildings.classes.tif",
                     "buildings.probabilities.tif", "buildings.summary.json")
            existing = [n for n in names if (out / n).exists()]
            if existing:
                raise OutputExistsError(
                    f"{out} already holds demo outputs ({', '.join(existing)}); pass overwrite=True "
                    "(--overwrite) to replace them, or choose another folder."
                )
        out.mkdir(parents=True, exist_ok=True)
        scene = make_sample_scene(image, size=size, seed=DEMO_SEED)
        min_area = 5.0
        result = predict(image, bundle, vector, overwrite=overwrite, progress=progress, probabilities=True,
                         min_area=min_area, bands=list(config.bands))

    building = config.class_names.index("building")
    with rasterio.open(result.class_rasters[0]) as ds:
        classes = ds.read(1)
    truth = scene.truth()
    pixel_area = scene.pixel_m**2
    score = score_buildings(classes, truth, building_class=building, min_area_px=int(np.ceil(min_area / pixel_area)))
    found = result.summary["classes"].get("building", {"count": 0, "area_m2": 0.0})
    demo = DemoResult(
        out_dir=out,
        image=scene.path,
        truth=scene.truth_path,
        vector=result.vector_path,
        classes=result.class_rasters[0],
        probabilities=result.probability_rasters[0],
        summary=result.summary_path,
        size=size,
        pixel_m=scene.pixel_m,
        buildings_found=int(found["count"]),
        building_area_m2=float(found["area_m2"]),
        truth_buildings=score.truth_objects,
        truth_area_m2=score.truth_pixels * pixel_area,
        matched_buildings=score.matched_objects,
        iou=score.iou,
        elapsed_s=time.perf_counter() - t0,
    )
    if progress:
        print(demo.report())
    return demo
