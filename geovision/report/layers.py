"""The vector layers of a report: read, summarised and reprojected to EPSG:4326, and as GeoJSON.

Nothing here knows about HTML. :func:`read_layers` reads every layer of the files
:func:`geovision.report.inputs.collect` found; :func:`feature_collection` turns a
layer's drawn features into the GeoJSON the page embeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geovision.errors import VectorReadError
from geovision.io.outputs import VECTOR_FORMATS

__all__ = [
    "COORD_DECIMALS",
    "MAX_FEATURES",
    "SCORE_COLUMNS",
    "ClassRow",
    "Layer",
    "feature_collection",
    "read_layers",
]

MAX_FEATURES = 20_000
"""Features per layer drawn on the map; the rest are counted and named in a note."""

COORD_DECIMALS = 7
"""Decimals of the EPSG:4326 coordinates in the page (about 1 cm)."""

SCORE_COLUMNS = ("mean_probability", "score")
"""Confidence columns, in order of preference, for the histogram."""


@dataclass
class Layer:
    """One vector layer, ready to draw.

    Attributes:
        name: the layer name (``predictions``, ``points``, ``fields``, ...).
        path: the file it came from.
        frame: the first :data:`MAX_FEATURES` features in EPSG:4326 (a GeoDataFrame), less
            those without geometry.
        total: how many features the layer has.
        truncated: the layer has more than :data:`MAX_FEATURES` features.
        crs: the layer's own CRS, as text.
        geometry_type: the dominant geometry type (``Polygon``, ``Point``, ...).
        stats: the layer's columns over *all* features: ``(column, kind, summary)``.
        scores: the confidence column name and its values over all features, if any.
        class_areas: count and area per ``class_name`` over all features, if the layer has classes.
    """

    name: str
    path: Path
    frame: Any
    total: int
    truncated: bool
    crs: str
    geometry_type: str
    stats: list[tuple[str, str, str]] = field(default_factory=list)
    scores: tuple[str, np.ndarray] | None = None
    class_areas: list[ClassRow] | None = None

    @property
    def has_classes(self) -> bool:
        return "class_name" in self.frame.columns


@dataclass(frozen=True)
class ClassRow:
    """A row of the per-class table: count, area (m², ha) and any other numbers the summary gives.

    ``extra`` holds further numeric fields of the summary's class entries in
    their order (e.g. the stress workflow's ``percent_of_valid``).
    """

    name: str
    count: int | None
    area_m2: float | None
    area_ha: float | None
    extra: tuple[tuple[str, float | None], ...] = ()


#: what pyogrio, GDAL and pyarrow raise on missing, truncated or foreign files
_READ_ERRORS = (RuntimeError, OSError, ValueError)  # pyogrio.errors.* are RuntimeErrors


# --- reading -----------------------------------------------------------------------------------


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _layer_names(path: Path) -> list[str]:
    if _is_parquet(path):
        return [path.stem]
    import pyogrio

    try:
        return [str(row[0]) for row in pyogrio.list_layers(path)]
    except _READ_ERRORS as exc:
        raise VectorReadError(
            f"{path}: cannot open as a vector file ({exc}). Give a geovision vector output "
            f"({', '.join(VECTOR_FORMATS)})."
        ) from None


def _read_layer(path: Path, name: str, single: bool) -> tuple[Any, int, Any]:
    """``(first MAX_FEATURES features, total count, all-feature attribute table)`` of one layer."""
    import geopandas as gpd
    import pyogrio

    try:
        if _is_parquet(path):
            full = gpd.read_parquet(path)
            return full.head(MAX_FEATURES), len(full), full.drop(columns=full.geometry.name)
        layer = None if single else name
        total = int(pyogrio.read_info(path, layer=layer)["features"])
        if total < 0:  # drivers that cannot count cheaply
            total = len(pyogrio.read_dataframe(path, layer=layer, read_geometry=False))
        frame = pyogrio.read_dataframe(path, layer=layer, max_features=MAX_FEATURES)
        table = frame.drop(columns=frame.geometry.name) if isinstance(frame, gpd.GeoDataFrame) else frame
        if total > len(frame):
            table = pyogrio.read_dataframe(path, layer=layer, read_geometry=False)
        return frame, total, table
    except _READ_ERRORS as exc:
        raise VectorReadError(f"{path}: cannot read layer {name!r} ({exc}); is the file complete?") from None


def _dominant_geometry(frame: Any) -> str:
    types = frame.geom_type.dropna()
    if types.empty:
        return "none"
    return str(types.str.replace("Multi", "", regex=False).value_counts().index[0])


def _layer_stats(table: Any) -> list[tuple[str, str, str]]:
    """``(column, kind, summary)`` per column: min / mean / max for numbers, top values for text."""
    import pandas as pd

    rows: list[tuple[str, str, str]] = []
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_bool_dtype(values):
            rows.append((column, "bool", f"{int(values.sum())} true of {len(values)}"))
        elif pd.api.types.is_numeric_dtype(values):
            finite = pd.to_numeric(values, errors="coerce").astype(float)
            finite = finite[np.isfinite(finite)]
            if finite.empty:
                rows.append((column, "number", "no values"))
            else:
                text = f"min {_fmt(finite.min())} · mean {_fmt(finite.mean())} · max {_fmt(finite.max())}"
                rows.append((column, "number", text))
        else:
            counts = values.dropna().astype(str).value_counts()
            top = ", ".join(f"{k} ({v})" for k, v in counts.head(5).items())
            more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
            rows.append((column, "text", f"{len(counts)} distinct: {top}{more}" if len(counts) else "no values"))
    return rows


def _fmt(value: float) -> str:
    value = float(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}"


def _round_coords(geoms: np.ndarray) -> np.ndarray:
    import shapely

    geoms = shapely.force_2d(geoms)
    return shapely.transform(geoms, lambda xy: np.round(xy, COORD_DECIMALS))


def read_layers(files: Sequence[tuple[Path, str | None]], notes: list[str]) -> list[Layer]:
    """Every layer of every file in ``files``, in EPSG:4326.

    ``files`` holds ``(path, label)``: a GeoPackage's layers keep their names; a
    single-layer file is called ``label``, or by its own layer name without one.
    """
    import pandas as pd

    layers: list[Layer] = []
    for path, given in files:
        single = path.suffix.lower() != ".gpkg"
        names = _layer_names(path)
        for name in names[:1] if single else names:
            label = (given or name) if single else name
            frame, total, table = _read_layer(path, name, single)
            if not hasattr(frame, "geometry"):
                notes.append(f"layer {label} ({path.name}) has no geometry; it is not drawn.")
                continue
            if frame.crs is None and total:
                notes.append(f"layer {label} ({path.name}) has no CRS, so it cannot be placed on the map; "
                             "set one with ogr2ogr -a_srs EPSG:...")
                continue
            crs = frame.crs.to_string() if frame.crs is not None else "none"
            truncated = total > len(frame)
            area = None  # measured when a classed layer has no area_m2 and is read whole
            if "class_name" in table.columns and "area_m2" not in table.columns and not truncated and total:
                from geovision.io.geo import measure

                area = measure(np.asarray(frame.geometry.values, dtype=object), frame.crs)[0]
            frame = frame[~frame.geometry.isna() & ~frame.geometry.is_empty]
            if frame.crs is not None:
                frame = frame.to_crs("EPSG:4326")
            frame = frame.set_geometry(_round_coords(np.asarray(frame.geometry.values, dtype=object)),
                                       crs=frame.crs)
            layer = Layer(label, path, frame, total, truncated, crs, _dominant_geometry(frame),
                          stats=_layer_stats(table))
            for column in SCORE_COLUMNS:
                if column in table.columns:
                    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
                    layer.scores = (column, values[np.isfinite(values)])
                    break
            if "class_name" in table.columns:
                layer.class_areas = _class_rows_from_table(table, area)
            if truncated:
                notes.append(f"layer {label}: the map shows the first {MAX_FEATURES:,} of {total:,} features "
                             "(open the file in QGIS for all of them); the tables count all.")
            layers.append(layer)
    return layers


def _class_rows_from_table(table: Any, measured: np.ndarray | None) -> list[ClassRow]:
    """Count and area per ``class_name``: areas from ``area_m2``, else ``measured`` (m² per row), else none."""
    import pandas as pd

    classes = table["class_name"].astype(str).to_numpy()
    if "area_m2" in table.columns:
        area = pd.to_numeric(table["area_m2"], errors="coerce").fillna(0.0).to_numpy(dtype=np.float64)
    else:
        area = measured
    rows = []
    for name in sorted(set(classes.tolist())):
        mask = classes == name
        a = float(area[mask].sum()) if area is not None else None
        rows.append(ClassRow(name, int(mask.sum()), None if a is None else round(a, 3),
                             None if a is None else round(a / 10_000, 6)))
    return rows


# --- GeoJSON -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-safe copy of one attribute value (NaN -> null, numpy -> Python, floats to 8 digits)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return float(f"{v:.8g}") if math.isfinite(v) else None
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def feature_collection(layer: Layer) -> dict[str, Any]:
    """The layer's drawn features as a GeoJSON FeatureCollection (EPSG:4326, 7 decimals)."""
    import shapely

    frame = layer.frame
    columns = [c for c in frame.columns if c != frame.geometry.name]
    geoms = np.asarray(frame.geometry.values, dtype=object)
    values = [frame[c].tolist() for c in columns]
    features = []
    for i, geom in enumerate(geoms):
        features.append({
            "type": "Feature",
            "properties": {c: _plain(v[i]) for c, v in zip(columns, values)},
            "geometry": shapely.geometry.mapping(geom),
        })
    return {"type": "FeatureCollection", "features": features}
