"""What the report shows, found beside a geovision vector output and read into plain values.

Nothing here knows about HTML. :func:`collect` looks at ``<stem>.*`` siblings of the
vector output (summary, rasters, single-layer sibling layers) and at evaluation files
in the same folder, and reads every vector layer reprojected to EPSG:4326.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geovision.errors import GeovisionError, VectorReadError
from geovision.io.outputs import VECTOR_FORMATS, sibling
from geovision.report.quicklook import Quicklook, quicklook

__all__ = [
    "EVALUATION_PLOTS",
    "MAX_FEATURES",
    "SIBLING_LAYERS",
    "ClassRow",
    "Inputs",
    "Layer",
    "collect",
    "feature_collection",
]

MAX_FEATURES = 20_000
"""Features per layer drawn on the map; the rest are counted and named in a note."""

COORD_DECIMALS = 7
"""Decimals of the EPSG:4326 coordinates in the page (about 1 cm)."""

SCORE_COLUMNS = ("mean_probability", "score")
"""Confidence columns, in order of preference, for the histogram."""

SIBLING_LAYERS = ("points", "zones", "review")
"""Layers that single-layer formats write as ``<stem>.<name>.<ext>`` beside the main file."""

EVALUATION_PLOTS = ("confusion.png", "pr_curve.png", "curves.png")
"""Plots of ``geovision evaluate`` / ``geovision train`` embedded when they lie beside the output."""

MAX_EMBEDDED_PNG = 5_000_000
"""Bytes above which an evaluation plot is not embedded."""

_FALLBACK_OUTLINES = ("#1f3a93", "#6c3483", "#0b5345", "#7e5109", "#17202a")


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


@dataclass
class Inputs:
    """Everything the report draws, read from disk.

    ``plots`` are the evaluation plots of the folder (``confusion.png``, ...),
    ``figures`` the ``<stem>.*.png`` siblings (e.g. a workflow's quicklook).
    """

    vector_path: Path
    layers: list[Layer]
    summary: dict[str, Any] | None
    summary_path: Path | None
    rasters: list[Quicklook]
    class_colors: dict[str, str]
    class_rows: list[ClassRow]
    class_rows_source: str
    plots: list[tuple[str, bytes]]
    figures: list[tuple[str, bytes]]
    metrics: tuple[Path, Any] | None
    notes: list[str]


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


def _read_layers(files: Sequence[tuple[Path, str | None]], notes: list[str]) -> list[Layer]:
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


# --- summary, colours, classes -----------------------------------------------------------------


def _read_json(path: Path, notes: list[str]) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read ({exc}); it is left out.")
        return None


_CLASS_KEYS = ("class_id", "count", "area_m2", "area_ha")


def _class_rows_from_summary(summary: Mapping[str, Any]) -> list[ClassRow] | None:
    """Rows from ``summary["classes"]`` (``{name: {count?, area_m2 | area_ha, ...}}``) if it has that shape."""
    classes = summary.get("classes")
    if not isinstance(classes, Mapping) or not classes:
        return None
    entries = list(classes.values())
    if not all(isinstance(e, Mapping) and any(k in e for k in ("count", "area_m2", "area_ha")) for e in entries):
        return None
    extra_keys = [k for k, v in entries[0].items() if k not in _CLASS_KEYS and isinstance(v, (int, float))
                  and not isinstance(v, bool)]
    rows = []
    for name, entry in classes.items():
        m2 = _num(entry.get("area_m2"))
        ha = _num(entry.get("area_ha"))
        if ha is None and m2 is not None:
            ha = round(m2 / 10_000, 6)
        if m2 is None and ha is not None:
            m2 = ha * 10_000
        count = entry.get("count")
        rows.append(ClassRow(str(name), int(count) if isinstance(count, (int, float)) else None, m2, ha,
                             tuple((k, _num(entry.get(k))) for k in extra_keys)))
    return rows


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def _summary_colors(summary: Mapping[str, Any]) -> dict[str, str]:
    """Class colours the summary names: ``classes.<name>.color``, ``class_colors`` or ``model.classes``."""
    colors: dict[str, str] = {}
    classes = summary.get("classes")
    if isinstance(classes, Mapping):
        for name, entry in classes.items():
            if isinstance(entry, Mapping) and isinstance(entry.get("color"), str) and _HEX.match(entry["color"]):
                colors[str(name)] = entry["color"].lower()
    for key in ("class_colors", "colors"):
        extra = summary.get(key)
        if isinstance(extra, Mapping):
            colors.update({str(k): v.lower() for k, v in extra.items() if isinstance(v, str) and _HEX.match(v)})
    model = summary.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("classes"), list):
        for entry in model["classes"]:
            if isinstance(entry, Mapping) and isinstance(entry.get("color"), str) and _HEX.match(entry["color"]):
                colors.setdefault(str(entry.get("name")), entry["color"].lower())
    return colors


def _class_ids(summary: Mapping[str, Any] | None, layers: Sequence[Layer]) -> tuple[dict[int, str], set[int]]:
    """Pixel value -> class name, and the values that are background (hidden on the map)."""
    names: dict[int, str] = {}
    background: set[int] = set()
    if summary:
        given = summary.get("class_names")  # by pixel value: a list, or {"4": "water", ...}
        if isinstance(given, list):
            names.update({i: str(n) for i, n in enumerate(given) if n is not None})
        elif isinstance(given, Mapping):
            names.update({int(k): str(n) for k, n in given.items() if str(k).lstrip("-").isdigit()})
        model = summary.get("model")
        listed = model.get("classes") if isinstance(model, Mapping) else None
        if isinstance(listed, list):
            for i, entry in enumerate(listed):
                name = entry.get("name") if isinstance(entry, Mapping) else entry
                names.setdefault(i, str(name))
        classes = summary.get("classes")
        if isinstance(classes, Mapping):
            for name, entry in classes.items():
                if isinstance(entry, Mapping) and isinstance(entry.get("class_id"), int):
                    names.setdefault(entry["class_id"], str(name))
            if isinstance(listed, list):  # predict's summary leaves the background class out
                background |= {i for i, n in names.items() if n not in classes}
    for layer in layers:
        if {"class_id", "class_name"} <= set(layer.frame.columns):
            pairs = layer.frame[["class_id", "class_name"]].drop_duplicates()
            for cid, name in pairs.itertuples(index=False):
                try:
                    names.setdefault(int(cid), str(name))
                except (TypeError, ValueError):  # a missing or non-numeric class_id
                    continue
    background |= {i for i, n in names.items() if n.lower() in ("background", "nodata", "no data")}
    return names, background


def _palette(n: int) -> list[str]:
    from geovision.models.config import default_colors

    return default_colors(n + 1)[1:]  # the first is black, for a background


def _class_colors(summary: Mapping[str, Any] | None, rasters: Sequence[Quicklook], layers: Sequence[Layer],
                  class_rows: Sequence[ClassRow]) -> dict[str, str]:
    """One colour per class name: the summary's, else the class raster's colour table, else a palette."""
    colors = dict(_summary_colors(summary)) if summary else {}
    for q in rasters:
        for entry in q.entries:
            if not entry.name.startswith("value "):
                colors.setdefault(entry.name, entry.color)
    wanted: list[str] = [r.name for r in class_rows]
    for layer in layers:
        if layer.has_classes:
            wanted += sorted(layer.frame["class_name"].dropna().astype(str).unique())
    missing = [n for n in dict.fromkeys(wanted) if n not in colors]
    for name, color in zip(missing, _palette(len(missing))):
        colors[name] = color
    return colors


def outline_color(i: int) -> str:
    """The outline colour of the ``i``-th layer that has no ``class_name``."""
    return _FALLBACK_OUTLINES[i % len(_FALLBACK_OUTLINES)]


# --- discovery ---------------------------------------------------------------------------------


def _vector_files(vector_path: Path, summary: Mapping[str, Any] | None) -> list[tuple[Path, str | None]]:
    """``(path, layer label)`` of the vector output and, for single-layer formats, its sibling layers.

    A GeoPackage gets label ``None``: its own layer names are used. A single-layer
    file is named as the summary names its layer (``predictions``), a sibling
    ``<stem>.<name>.<ext>`` by ``<name>``.
    """
    if vector_path.suffix.lower() == ".gpkg":
        return [(vector_path, None)]
    outputs = summary.get("outputs") if summary else None
    outputs = outputs if isinstance(outputs, Mapping) else {}
    main = outputs.get("layer") if isinstance(outputs.get("layer"), str) else None
    files: list[tuple[Path, str | None]] = [(vector_path, main)]
    candidates = [sibling(vector_path, f".{name}{vector_path.suffix}") for name in SIBLING_LAYERS]
    candidates += [vector_path.parent / Path(value).name for key, value in outputs.items()
                   if key not in ("vector", "layer") and isinstance(value, str)]
    seen = {vector_path.resolve()}
    prefix = vector_path.stem + "."
    for path in candidates:
        if path.suffix.lower() in VECTOR_FORMATS and path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            stem = path.stem  # <stem>.<name>.<ext> -> <name>
            files.append((path, stem.removeprefix(prefix)))
    return files


def _raster_files(vector_path: Path) -> list[Path]:
    """``<stem>.*.tif`` beside the output, class rasters first."""
    stem = vector_path.stem
    found = [p for p in vector_path.parent.glob(f"{glob.escape(stem)}.*.tif")
             if p.is_file() and not p.name.startswith(".")]

    def order(p: Path) -> tuple[int, str]:
        kind = p.name[len(stem):]
        rank = 0 if kind.endswith(".classes.tif") else 1 if kind.endswith(".stress.tif") else 2
        return rank, p.name

    return sorted(found, key=order)


def collect(vector_path: str | os.PathLike[str]) -> Inputs:
    """Read everything the report shows about ``vector_path``.

    Args:
        vector_path: a geovision vector output (``.gpkg`` with any layers, ``.geojson``,
            ``.fgb`` or ``.parquet``).

    Returns:
        The layers (EPSG:4326), quicklooks, summary, class table, colours, plots and notes.

    Raises:
        VectorReadError: the vector output is missing or cannot be read.
    """
    vector_path = Path(vector_path)
    if not vector_path.is_file():
        raise VectorReadError(
            f"{vector_path}: no such file. Give the vector output of geovision predict "
            f"({', '.join(VECTOR_FORMATS)})."
        )
    notes: list[str] = []
    summary_path = sibling(vector_path, ".summary.json")
    summary = _read_json(summary_path, notes) if summary_path.is_file() else None
    if summary is not None and not isinstance(summary, dict):
        notes.append(f"{summary_path.name} is not a JSON object; it is left out.")
        summary = None

    layers = _read_layers(_vector_files(vector_path, summary), notes)
    main = _main_layer(layers, summary)
    if main is not None:
        layers.remove(main)
        layers.insert(0, main)

    names, background = _class_ids(summary, layers)
    rasters: list[Quicklook] = []
    for path in _raster_files(vector_path):
        try:
            q = quicklook(path, names=names, hidden=frozenset(background))
        except GeovisionError as exc:  # e.g. the multi-band <stem>.probabilities.tif
            notes.append(f"{path.name} is not drawn: {exc}")
            continue
        if q is None:
            notes.append(f"{path.name} holds no valid pixel; it is not drawn.")
            continue
        rasters.append(q)

    rows = _class_rows_from_summary(summary) if summary else None
    classed = _classed_layer(layers, [r.name for r in rows or []])
    source = summary_path.name if rows is not None else ""
    if rows is None:
        rows = classed.class_areas if classed is not None and classed.class_areas is not None else []
        source = f"layer {classed.name}" if classed is not None else ""
    elif any(r.count is None for r in rows) and classed is not None and classed.class_areas is not None:
        counts = {r.name: r.count for r in classed.class_areas}
        rows = [r if r.count is not None else ClassRow(r.name, counts.get(r.name), r.area_m2, r.area_ha, r.extra)
                for r in rows]
        source = f"{summary_path.name}; counts of features in layer {classed.name}"
    colors = _class_colors(summary, rasters, layers, rows)

    plots = _pngs([vector_path.parent / name for name in EVALUATION_PLOTS], notes)
    figures = _pngs(sorted(vector_path.parent.glob(f"{glob.escape(vector_path.stem)}.*.png")), notes)
    metrics_path = vector_path.parent / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        value = _read_json(metrics_path, notes)
        if value is not None:
            metrics = (metrics_path, value)
    return Inputs(vector_path, layers, summary, summary_path if summary is not None else None, rasters,
                  colors, list(rows), source, plots, figures, metrics, notes)


def _pngs(paths: Sequence[Path], notes: list[str]) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of the PNGs in ``paths`` that exist and are small enough to embed."""
    found = []
    for path in paths:
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.stat().st_size > MAX_EMBEDDED_PNG:
            notes.append(f"{path.name} is over {MAX_EMBEDDED_PNG // 1_000_000} MB; it is not embedded.")
            continue
        data = path.read_bytes()
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            found.append((path.name, data))
    return found


def _classed_layer(layers: Sequence[Layer], names: Sequence[str]) -> Layer | None:
    """The layer the class table counts: with ``class_name``, sharing most of ``names``, polygons first."""
    classed = [layer for layer in layers if layer.class_areas]
    if not classed:
        return None

    def key(pair: tuple[int, Layer]) -> tuple[int, bool, int]:
        i, layer = pair
        shared = len({r.name for r in layer.class_areas or []} & set(names))
        return -shared, layer.geometry_type != "Polygon", i

    return min(enumerate(classed), key=key)[1]


def _main_layer(layers: Sequence[Layer], summary: Mapping[str, Any] | None) -> Layer | None:
    outputs = summary.get("outputs") if summary else None
    wanted = outputs.get("layer") if isinstance(outputs, Mapping) else None
    for name in (wanted, "predictions"):
        for layer in layers:
            if name and layer.name == name:
                return layer
    return None


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
