"""A run's results: counters per raster, what was written, the summary and its table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geovision._version import __version__
from geovision.engine.protocols import FeatureSink
from geovision.engine.segmentation import RasterFiles
from geovision.models.config import BundleConfig
from geovision.tiling.reader import RasterInfo

__all__ = ["PredictResult", "RasterRun", "format_table", "predict_summary"]


@dataclass
class RasterRun:
    """Counters and outputs of one input raster."""

    info: RasterInfo
    classes_path: Path | None
    probabilities_path: Path | None
    classes_files: RasterFiles | None = None
    probabilities_files: RasterFiles | None = None
    tiles_total: int = 0
    tiles_processed: int = 0
    tiles_skipped: int = 0
    merge_seconds: float = 0.0
    #: counts the tiles as they are read (local runs with a drift reference)
    drift_monitor: Any = None
    #: the drift check's result for the summary (cluster runs: checked up front)
    drift: dict[str, Any] | None = None


@dataclass
class PredictResult:
    """What ``predict`` wrote. ``summary`` is the content of ``<stem>.summary.json``."""

    vector_path: Path
    summary_path: Path
    class_rasters: list[Path]
    probability_rasters: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)
    #: extra vector outputs by layer name (``points``, ``zones``); the same file as
    #: ``vector_path`` for a GeoPackage, siblings for single-layer formats
    layers: dict[str, Path] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Objects (or polygons) per class."""
        return {name: c["count"] for name, c in self.summary.get("classes", {}).items()}

    @property
    def areas_m2(self) -> dict[str, float]:
        """True ground area per class, m²."""
        return {name: c["area_m2"] for name, c in self.summary.get("classes", {}).items()}

    @property
    def seconds(self) -> float:
        return float(self.summary.get("elapsed_s", 0.0))


def predict_summary(model: str, options: dict[str, Any], config: BundleConfig, runs: Sequence[RasterRun],
                    resolutions: Sequence[float], sink: FeatureSink, outputs: dict[str, str],
                    elapsed: float) -> dict[str, Any]:
    """The content of ``<stem>.summary.json`` (without the inference and drift entries the run adds)."""
    names = [c.name for c in config.classes]
    skip = config.background_class
    per_class = {}
    for i, name in enumerate(names):
        if i == skip:
            continue
        count, area = sink.tally.get(name, (0, 0.0))
        per_class[name] = {"class_id": i, "count": int(count), "area_m2": round(area, 3),
                           "area_ha": round(area / 10_000, 6)}
    megapixels = sum(r.info.megapixels for r in runs)
    return {
        "geovision_version": __version__,
        "model": {"path": model, "arch": config.arch, "encoder": config.encoder, "classes": names},
        "inputs": [
            {"path": r.info.path, "width": r.info.width, "height": r.info.height,
             "bands": list(r.info.bands), "crs": r.info.crs.to_string(),
             "pixel_size_m": round(res, 6), "tiles": r.tiles_total,
             "tiles_processed": r.tiles_processed, "tiles_skipped": r.tiles_skipped,
             "classes_raster": str(r.classes_path) if r.classes_path else None,
             "probabilities_raster": str(r.probabilities_path) if r.probabilities_path else None}
            for r, res in zip(runs, resolutions)
        ],
        "outputs": outputs,
        "options": options,
        "classes": per_class,
        "features": sink.count,
        "tiles_processed": sum(r.tiles_processed for r in runs),
        "tiles_skipped": sum(r.tiles_skipped for r in runs),
        "elapsed_s": round(elapsed, 3),
        **({"merge_seconds": round(sum(r.merge_seconds for r in runs), 3)} if config.task == "detection" else {}),
        "megapixels": round(megapixels, 3),
        "megapixels_per_second": round(megapixels / elapsed, 3) if elapsed > 0 else None,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The short table the CLI prints at the end of a run."""
    rows = [("class", "count", "area m²", "area ha")]
    for name, c in summary["classes"].items():
        rows.append((name, str(c["count"]), f"{c['area_m2']:.1f}", f"{c['area_ha']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"{summary['tiles_processed']} tiles processed, {summary['tiles_skipped']} skipped (nodata), "
        f"{summary['elapsed_s']:.1f} s, {summary['megapixels_per_second']} MP/s"
    )
    lines.append(f"wrote {summary['outputs']['vector']}")
    return "\n".join(lines)
