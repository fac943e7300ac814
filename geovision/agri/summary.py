"""What a crop-stress run reports: its summary, the table the CLI prints and the quicklook PNG.

:func:`stress_summary` builds the ``<stem>.summary.json`` dict from the finished passes
(:mod:`geovision.agri.fields`); :func:`format_table` renders it for the terminal (the
library never prints); :func:`write_quicklook` draws the index and stress COGs with the
field outlines. Areas are in m² and hectares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geovision._version import __version__
from geovision.agri.indices import INDICES
from geovision.agri.stress import CLASS_COLORS, CLASS_NAMES, HEALTHY, MASKED, MODERATE, NO_CLASS, SEVERE, WATER
from geovision.tiling.reader import gdal_env

if TYPE_CHECKING:
    import geopandas as gpd

    from geovision.agri.fields import IndexPass
    from geovision.agri.stress import StressRule
    from geovision.io.vector import LayerSink
    from geovision.tiling.reader import RasterInfo

__all__ = ["format_table", "stress_summary", "write_quicklook"]


def _round(x: float, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def stress_summary(raster: str, fields: str | os.PathLike[str], paths: Mapping[str, Path], info: RasterInfo,
                   index: str, mapping: Mapping[str, int], scale: float, offset: float, rule: StressRule,
                   p1: IndexPass, class_m2: dict[int, np.ndarray], table: gpd.GeoDataFrame, sink: LayerSink,
                   elapsed: float, model_info: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary (JSON-ready): inputs, index statistics, method, pixel counts, field and class areas.

    Args:
        raster, fields: the inputs as given.
        paths: output name -> final path.
        info: the raster.
        index: the index name.
        mapping: band name -> 1-based band position.
        scale, offset: the reflectance scaling used.
        rule: the stress rule.
        p1: the finished :class:`~geovision.agri.fields.IndexPass`.
        class_m2: ``{HEALTHY, MODERATE, SEVERE: (n,)}`` m² per field.
        table: the field table (:func:`~geovision.agri.fields.field_table`).
        sink: the stress layer's sink, for its polygon counts and areas (m²).
        elapsed: seconds the run took.
        model_info: the stress model's path, classes and architecture, for ``method="model"``.
    """
    valid_m2 = float(p1.stats.weight.sum())
    classes = {}
    for code, name in ((HEALTHY, "healthy"), (MODERATE, "moderate"), (SEVERE, "severe")):
        m2 = float(class_m2[code].sum())
        classes[name] = {"class_id": code, "area_m2": round(m2, 3), "area_ha": round(m2 / 1e4, 6),
                         "percent_of_valid": _round(100 * m2 / valid_m2 if valid_m2 else math.nan, 3),
                         "color": CLASS_COLORS[code]}
    polygons = {name: {"count": int(c), "area_m2": round(a, 3)} for name, (c, a) in sink.tally.items()}
    stressed = table["stressed_pct"].to_numpy(dtype=float)
    return {
        "geovision_version": __version__,
        "workflow": "stress",
        "inputs": {"raster": raster, "fields": os.fspath(fields), "width": info.width, "height": info.height,
                   "crs": info.crs.to_string(), "bands": {n: int(b) for n, b in mapping.items()},
                   "reflectance_scale": scale, "reflectance_offset": offset},
        "index": {"name": index, "formula": INDICES[index].formula, "valid_pixels": p1.valid_pixels,
                  "mean": _round(p1.sum / p1.valid_pixels if p1.valid_pixels else math.nan),
                  "min": _round(p1.lo if p1.valid_pixels else math.nan),
                  "max": _round(p1.hi if p1.valid_pixels else math.nan)},
        "method": {"name": rule.method, "rule": rule.describe(),
                   **({} if rule.method == "model" else {"severe": rule.severe, "moderate": rule.moderate}),
                   **({"reference_percentile": rule.reference_percentile} if rule.method == "percentile" else {}),
                   **({"min_std": rule.min_std} if rule.method == "zscore" else {}),
                   **({"model": model_info} if model_info else {})},
        "pixels": {"valid": p1.counts[HEALTHY], "water": p1.counts[WATER], "masked": p1.counts[MASKED],
                   "nodata": p1.counts[NO_CLASS]},
        "fields": {"count": len(table), "with_data": int((p1.stats.weight > 0).sum()),
                   "area_ha": round(float(table["area_ha"].sum()), 4),
                   "valid_ha": round(valid_m2 / 1e4, 4),
                   "water_ha": round(float(table["water_ha"].sum()), 4),
                   "masked_ha": round(float(table["masked_ha"].sum()), 4),
                   "nodata_ha": round(float(table["nodata_ha"].sum()), 4),
                   "most_stressed": _most_stressed(table)},
        "classes": classes,
        "class_names": list(CLASS_NAMES),
        "class_colors": {CLASS_NAMES[c]: col for c, col in CLASS_COLORS.items()},
        "stress_polygons": polygons,
        "outputs": {k: str(p) for k, p in paths.items()},
        "elapsed_s": round(elapsed, 3),
        "megapixels": round(info.megapixels, 3),
        "megapixels_per_second": round(info.megapixels / elapsed, 3) if elapsed > 0 else None,
        **({"stressed_pct_median": _round(float(np.nanmedian(stressed)), 3)} if np.isfinite(stressed).any() else {}),
    }


def _most_stressed(table: gpd.GeoDataFrame, k: int = 5) -> list[dict[str, Any]]:
    top = table.sort_values("stressed_ha", ascending=False).head(k)
    return [{"field_id": v.item() if hasattr(v, "item") else v, "stressed_ha": round(float(s), 4),
             "stressed_pct": _round(float(p), 2)}
            for v, s, p in zip(top["field_id"], top["stressed_ha"], top["stressed_pct"]) if s > 0]


def format_table(summary: dict[str, Any]) -> str:
    """The short table printed at the end of a run: hectares and percent of valid area per class."""
    f = summary["fields"]
    rows = [("class", "area ha", "% of valid")]
    for name, c in summary["classes"].items():
        pct = c["percent_of_valid"]
        rows.append((name, f"{c['area_ha']:.3f}", "-" if pct is None else f"{pct:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    lines.append(f"{f['count']} fields ({f['with_data']} with data), {f['valid_ha']:.2f} ha valid, "
                 f"{f['water_ha']:.2f} ha water, {f['masked_ha']:.2f} ha masked, {f['nodata_ha']:.2f} ha no data; "
                 f"{summary['method']['rule']}")
    lines.append(f"{summary['elapsed_s']:.1f} s; wrote {summary['outputs']['vector']} and "
                 f"{summary['outputs']['quicklook']}")
    return "\n".join(lines)


def write_quicklook(stress_cog: Path, index_cog: Path, table: gpd.GeoDataFrame, out: Path, index: str,
                    rule: StressRule, summary: dict[str, Any], max_px: int = 1200) -> None:
    """Write a two-panel PNG: the index and the stress classes with field outlines and a legend.

    Args:
        stress_cog, index_cog: the stress and index COGs, read decimated to at most ``max_px`` pixels a side.
        table: the field table (its outlines are drawn).
        out: the PNG.
        index: the index name.
        rule: the stress rule (the right panel's title).
        summary: the run's summary (titles and legend areas).
        max_px: the longer side of the panels' rasters, in pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with gdal_env(), rasterio.open(stress_cog) as cds, rasterio.open(index_cog) as ids_:
        factor = max(1.0, max(cds.height, cds.width) / max_px)
        shape = (max(1, round(cds.height / factor)), max(1, round(cds.width / factor)))
        classes = cds.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
        values = ids_.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.average)
        b = cds.bounds
    extent = (b.left, b.right, b.bottom, b.top)
    aspect = shape[1] / shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(min(16, 2 * 6 * aspect + 2), 7), constrained_layout=True)
    low, high = INDICES[index].valid_range
    finite = values[np.isfinite(values)]
    vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (low, high))
    im = axes[0].imshow(values, extent=extent, cmap="RdYlGn", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], shrink=0.7, label=index.upper())
    axes[0].set_title(f"{index.upper()} (mean {summary['index']['mean']})")
    colors = ["#00000000"] + [CLASS_COLORS[c] for c in range(1, len(CLASS_NAMES))]
    axes[1].imshow(np.ma.masked_equal(classes, NO_CLASS), extent=extent, cmap=ListedColormap(colors),
                   vmin=-0.5, vmax=len(CLASS_NAMES) - 0.5, interpolation="nearest")
    axes[1].set_title("Crop stress: " + rule.describe(), fontsize=9, wrap=True)
    for ax in axes:
        table.boundary.plot(ax=ax, color="black", linewidth=0.5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
    legend = [Patch(color=CLASS_COLORS[c], label=f"{CLASS_NAMES[c]}"
                    + (f" {summary['classes'][CLASS_NAMES[c]]['area_ha']:.2f} ha" if CLASS_NAMES[c] in
                       summary["classes"] else "")) for c in range(1, len(CLASS_NAMES))]
    legend.append(Patch(facecolor="none", edgecolor="black", label="field boundary"))
    fig.legend(handles=legend, loc="outside lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(f"{Path(summary['inputs']['raster']).name}: {summary['fields']['count']} fields, "
                 f"{summary['fields']['valid_ha']:.1f} ha valid", fontsize=11)
    fig.savefig(out, dpi=110)
    plt.close(fig)
