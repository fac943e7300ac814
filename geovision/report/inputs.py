"""What the report shows, found beside a geovision vector output and read into plain values.

Nothing here knows about HTML. :func:`collect` looks at ``<stem>.*`` siblings of the
vector output (summary, rasters, single-layer sibling layers) and at evaluation files
in the same folder, reads every vector layer reprojected to EPSG:4326
(:mod:`geovision.report.layers`) and gives each class a colour (:mod:`geovision.report.colors`).
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geovision.errors import GeovisionError, VectorReadError
from geovision.io.outputs import VECTOR_FORMATS, sibling
from geovision.report.colors import class_colors, class_ids
from geovision.report.layers import ClassRow, Layer, read_layers
from geovision.report.quicklook import Quicklook, quicklook

__all__ = [
    "EVALUATION_PLOTS",
    "SIBLING_LAYERS",
    "Inputs",
    "collect",
]

SIBLING_LAYERS = ("points", "zones", "review")
"""Layers that single-layer formats write as ``<stem>.<name>.<ext>`` beside the main file."""

EVALUATION_PLOTS = ("confusion.png", "pr_curve.png", "curves.png")
"""Plots of ``geovision evaluate`` / ``geovision train`` embedded when they lie beside the output."""

MAX_EMBEDDED_PNG = 5_000_000
"""Bytes above which an evaluation plot is not embedded."""


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


# --- summary, classes --------------------------------------------------------------------------


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

    layers = read_layers(_vector_files(vector_path, summary), notes)
    main = _main_layer(layers, summary)
    if main is not None:
        layers.remove(main)
        layers.insert(0, main)

    names, background = class_ids(summary, layers)
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
    colors = class_colors(summary, rasters, layers, rows)

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
