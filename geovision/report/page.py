"""The self-contained HTML page: Leaflet, data, tables and charts inlined into one file."""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime
from functools import cache
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from geovision.io.outputs import AtomicOutputs, sibling
from geovision.report.charts import histogram_svg
from geovision.report.colors import outline_color
from geovision.report.inputs import Inputs, collect
from geovision.report.layers import ClassRow, Layer, feature_collection
from geovision.report.quicklook import RDYLGN, Quicklook

__all__ = ["REPORT_SUFFIX", "render", "write_report"]

REPORT_SUFFIX = ".report.html"
"""The default report path is ``<stem>.report.html`` beside the vector output."""

MAX_JSON_CHARS = 30_000
"""Longest JSON text (summary, metrics) shown verbatim in the page."""


@cache
def _asset(name: str) -> str:
    return resources.files("geovision.report").joinpath("assets", name).read_text(encoding="utf-8")


def write_report(vector_path: str | os.PathLike[str], out_html: str | os.PathLike[str] | None = None, *,
                 title: str | None = None, overwrite: bool = False) -> Path:
    """Write one self-contained, offline HTML page that shows a geovision output on a map.

    The page inlines Leaflet 1.9.4 and holds everything it shows, so it opens from a
    USB stick or an e-mail attachment with no network: quicklooks of the rasters beside
    the output (``<stem>.classes.tif``, ``<stem>.stress.tif``, ``<stem>.<index>.tif``),
    every vector layer as GeoJSON (EPSG:4326, 7 decimals, at most 20 000 features per
    layer), a legend, the per-class counts and areas, a confidence histogram, a
    summary of each layer's columns and, when they lie in the same folder, the
    evaluation plots and ``metrics.json``.

    Args:
        vector_path: a geovision vector output: ``.gpkg`` (all its layers) or
            ``.geojson``, ``.fgb``, ``.parquet`` (with their ``<stem>.points.<ext>``-style
            sibling layers).
        out_html: where to write; default ``<stem>.report.html`` beside ``vector_path``.
        title: the page title; default names the file.
        overwrite: replace an existing ``out_html``.

    Returns:
        The path of the page.

    Raises:
        OutputExistsError: ``out_html`` exists and ``overwrite`` is false.
        OutputOverwritesInputError: ``out_html`` is ``vector_path``.
        VectorReadError: ``vector_path`` is missing or cannot be read.
    """
    vector_path = Path(vector_path)
    out = Path(out_html) if out_html is not None else sibling(vector_path, REPORT_SUFFIX)
    with AtomicOutputs([str(vector_path)], overwrite) as outputs:
        tmp = outputs.add(out)
        page = render(collect(vector_path), title=title)
        tmp.write_text(page, encoding="utf-8")
        outputs.commit()
    return out


# --- page --------------------------------------------------------------------------------------


def render(inputs: Inputs, *, title: str | None = None) -> str:
    """The HTML page for ``inputs`` (see :func:`geovision.report.inputs.collect`)."""
    from geovision._version import __version__

    workflow = inputs.summary.get("workflow") if inputs.summary else None
    title = title or f"geovision{' ' + str(workflow) if workflow else ''} report: {inputs.vector_path.name}"
    n_features = sum(layer.total for layer in inputs.layers)
    subtitle = (f"{escape(inputs.vector_path.name)} · {len(inputs.layers)} layer(s), {n_features:,} features · "
                f"{len(inputs.rasters)} raster(s) · written {datetime.now().strftime('%Y-%m-%d %H:%M')}")
    parts = {
        "TITLE": escape(title),
        "SUBTITLE": subtitle,
        "VERSION": escape(__version__),
        "SOURCE": escape(inputs.vector_path.name),
        "NOTES": _notes(inputs.notes),
        "LEGEND": _legend(inputs),
        "CLASS_TABLE": _class_table(inputs.class_rows, inputs.class_rows_source, inputs.class_colors),
        "SECTIONS": _sections(inputs),
        "DATA": _script_json(_payload(inputs)),
        "LEAFLET_LICENSE": escape(_asset("LEAFLET-LICENSE")).replace("--", "- -"),
        "LEAFLET_CSS": _leaflet_css(),
        "LEAFLET_JS": _asset("leaflet.js"),
        "REPORT_CSS": _asset("report.css"),
        "REPORT_JS": _asset("report.js"),
    }
    return re.sub(r"@@([A-Z_]+)@@", lambda m: parts[m.group(1)], _asset("page.html"))


# An inline "layers" icon for the layer control's toggle, instead of Leaflet's images/layers.png
_LAYERS_ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="26" height="26" viewBox="0 0 26 26">'
    '<path d="M13 4 3 9l10 5 10-5z" fill="#5d6d7e"/><path d="m3 13 10 5 10-5M3 17l10 5 10-5" '
    'fill="none" stroke="#5d6d7e" stroke-width="1.6"/></svg>'
)


def _leaflet_css() -> str:
    """Leaflet's CSS without comments, its image references (layer icon, marker) made local: nothing to fetch."""
    icon = "url(data:image/svg+xml;base64," + base64.b64encode(_LAYERS_ICON.encode()).decode("ascii") + ")"
    css = re.sub(r"/\*.*?\*/", "", _asset("leaflet.css"), flags=re.DOTALL)
    css = css.replace("url(images/layers.png)", icon).replace("url(images/layers-2x.png)", icon)
    return re.sub(r"url\(images/[^)]*\)", "none", css)


def _script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _rank(layer: Layer) -> int:
    """Drawing order: outlined polygons at the bottom, then class polygons, lines, points on top."""
    kind = layer.geometry_type
    if kind == "Point":
        return 3
    if kind == "LineString":
        return 2
    return 1 if layer.has_classes else 0


def _drawn_layers(inputs: Inputs) -> list[tuple[Layer, str]]:
    """Layers in drawing order with their outline colour (used when a feature has no class colour)."""
    colored: list[tuple[Layer, str]] = []
    unclassed = 0
    for layer in inputs.layers:
        if layer.has_classes:
            colored.append((layer, "#34495e"))
        else:
            colored.append((layer, outline_color(unclassed)))
            unclassed += 1
    return sorted(colored, key=lambda pair: _rank(pair[0]))


def _payload(inputs: Inputs) -> dict[str, Any]:
    south = west = float("inf")
    north = east = float("-inf")

    def grow(w: float, s: float, e: float, n: float) -> None:
        nonlocal south, west, north, east
        if all(np.isfinite([w, s, e, n])):
            west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, n)

    rasters = []
    for i, q in enumerate(inputs.rasters):
        w, s, e, n = q.bounds_lonlat
        grow(w, s, e, n)
        rasters.append({"name": q.path.name, "kind": q.kind, "uri": q.data_uri(),
                        "bounds": [[s, w], [n, e]], "visible": i == 0})
    layers = []
    for layer, color in _drawn_layers(inputs):
        if len(layer.frame):
            grow(*(float(v) for v in layer.frame.total_bounds))
        layers.append({"name": layer.name, "geometry": layer.geometry_type, "classed": layer.has_classes,
                       "color": color, "shown": len(layer.frame), "total": layer.total,
                       "data": feature_collection(layer)})
    bounds = [[south, west], [north, east]] if np.isfinite([south, west, north, east]).all() else None
    return {"bounds": bounds, "colors": inputs.class_colors, "rasters": rasters, "layers": layers}


# --- HTML pieces -------------------------------------------------------------------------------


def _notes(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f'<section class="gv-notes" id="notes"><ul>{items}</ul></section>'


def _swatch(color: str, kind: str = "fill") -> str:
    if kind == "outline":
        return f'<span class="gv-swatch gv-outline" style="border-color:{color}"></span>'
    extra = " gv-point" if kind == "point" else ""
    return f'<span class="gv-swatch{extra}" style="background:{color}"></span>'


def _used_classes(inputs: Inputs) -> list[str]:
    names = [r.name for r in inputs.class_rows]
    for layer in inputs.layers:
        if layer.has_classes:
            names += sorted(layer.frame["class_name"].dropna().astype(str).unique())
    return [n for n in dict.fromkeys(names) if n in inputs.class_colors]


def _legend(inputs: Inputs) -> str:
    out = ['<div class="gv-card gv-legend" id="legend"><h2>Legend</h2>']
    classes = _used_classes(inputs)
    if classes:
        out.append("<h3>Classes</h3><ul>")
        out += [f"<li>{_swatch(inputs.class_colors[n])}{escape(n)}</li>" for n in classes]
        out.append("</ul>")
    plain = [(layer, color) for layer, color in _drawn_layers(inputs) if not layer.has_classes]
    if plain:
        out.append("<h3>Layers</h3><ul>")
        for layer, color in plain:
            kind = "point" if layer.geometry_type == "Point" else "outline"
            out.append(f"<li>{_swatch(color, kind)}{escape(layer.name)}</li>")
        out.append("</ul>")
    shown = {(n, inputs.class_colors[n]) for n in classes}
    for q in inputs.rasters:
        out.append(f"<h3>{escape(q.path.name)}</h3>")
        out.append(_raster_legend(q, shown))
    if len(out) == 1:
        out.append("<p>Nothing to draw.</p>")
    out.append("</div>")
    return "".join(out)


def _raster_legend(q: Quicklook, shown: set[tuple[str, str]]) -> str:
    """A raster's ramp, or its values not already in the legend's classes with the same colour."""
    if q.kind == "continuous":
        assert q.value_range is not None
        stops = ", ".join(RDYLGN)
        label = escape(q.band_name) if q.band_name else "value"
        low, high = q.value_range
        return (f'<div class="gv-ramp" style="background:linear-gradient(to right, {stops})"></div>'
                f'<div class="gv-ramp-labels"><span>{low:g}</span><span>{label}</span><span>{high:g}</span></div>')
    own = [e for e in q.entries if (e.name, e.color) not in shown]
    if not own:
        return '<p class="gv-source">colours as the classes above</p>'
    items = "".join(f"<li>{_swatch(e.color)}{escape(e.name)}</li>" for e in own)
    return f"<ul>{items}</ul>"


def _class_table(rows: list[ClassRow], source: str, colors: dict[str, str]) -> str:
    if not rows:
        return ""
    extra = [k for k, _ in rows[0].extra]
    body = []
    for r in rows:
        color = colors.get(r.name)
        swatch = _swatch(color) if color else ""
        cells = "".join(_num_cell(v, 2) for _, v in r.extra)
        count = _num_cell(r.count, 0) if r.count is not None else '<td class="num">–</td>'
        body.append(f'<tr data-class="{escape(r.name)}"><td>{swatch} {escape(r.name)}</td>{count}'
                    f"{_num_cell(r.area_ha, 4)}{_num_cell(r.area_m2, 1)}{cells}</tr>")
    counts = [r.count for r in rows if r.count is not None]
    total_count = _num_cell(sum(counts), 0) if counts else '<td class="num">–</td>'
    total_m2 = None if any(r.area_m2 is None for r in rows) else sum(r.area_m2 or 0.0 for r in rows)
    total_ha = None if any(r.area_ha is None for r in rows) else sum(r.area_ha or 0.0 for r in rows)
    foot = (f"<tr><td>total</td>{total_count}{_num_cell(total_ha, 4)}{_num_cell(total_m2, 1)}"
            + "<td></td>" * len(extra) + "</tr>")
    head = "".join(f'<th class="num">{escape(k.replace("_", " "))}</th>' for k in extra)
    return (
        '<div class="gv-card" id="classes"><h2>Classes</h2><table class="gv-table" id="class-table">'
        '<thead><tr><th>class</th><th class="num">count</th><th class="num">area (ha)</th>'
        f'<th class="num">area (m²)</th>{head}</tr></thead><tbody>{"".join(body)}</tbody><tfoot>{foot}</tfoot>'
        f'</table><p class="gv-source">from {escape(source)}</p></div>'
    )


def _num_cell(value: float | None, decimals: int) -> str:
    if value is None:
        return '<td class="num">–</td>'
    return f'<td class="num" data-value="{value!r}">{value:,.{decimals}f}</td>'


def _sections(inputs: Inputs) -> str:
    cards = [_confidence(inputs), _layers_card(inputs), _evaluation(inputs), _figures(inputs), _run(inputs)]
    return '<div class="gv-sections">' + "".join(c for c in cards if c) + "</div>"


def _confidence(inputs: Inputs) -> str:
    layer = next((layer for layer in inputs.layers if layer.scores is not None and layer.scores[1].size), None)
    if layer is None or layer.scores is None:
        return ""
    column, values = layer.scores
    svg = histogram_svg(values, label=column)
    stats = (f"{values.size:,} features of layer {escape(layer.name)}: mean {values.mean():.3f}, "
             f"median {np.median(values):.3f}, min {values.min():.3f}, max {values.max():.3f}")
    return (f'<div class="gv-card" id="confidence"><h2>Confidence ({escape(column)})</h2>{svg}'
            f'<p class="gv-source">{stats}</p></div>')


def _layers_card(inputs: Inputs) -> str:
    if not inputs.layers:
        return ""
    out = ['<div class="gv-card" id="layers"><h2>Layers</h2>']
    for layer in inputs.layers:
        shown = f" (map: first {len(layer.frame):,})" if layer.truncated else ""
        out.append(f"<h3>{escape(layer.name)}: {layer.total:,} {escape(layer.geometry_type)} features{shown}, "
                   f"{escape(layer.crs)}</h3>")
        if layer.stats:
            rows = "".join(f"<tr><td>{escape(c)}</td><td>{escape(k)}</td><td>{escape(s)}</td></tr>"
                           for c, k, s in layer.stats)
            out.append(f'<table class="gv-table"><thead><tr><th>column</th><th>type</th><th>values</th></tr>'
                       f"</thead><tbody>{rows}</tbody></table>")
    out.append("</div>")
    return "".join(out)


def _scalars(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Numbers and strings of a JSON object, one level deep (and its ``overall``), for a headline table."""
    rows: list[tuple[str, Any]] = []
    if not isinstance(value, dict):
        return rows
    for key, item in value.items():
        if key in ("inputs",):
            continue
        if isinstance(item, (int, float, str, bool)) or item is None:
            if prefix or not isinstance(item, str):
                rows.append((prefix + key, item))
        elif isinstance(item, dict) and not prefix:
            rows += _scalars(item, f"{key}.")
            if isinstance(item.get("overall"), dict):
                rows += _scalars(item["overall"], f"{key}.overall.")
    return rows


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "–" if v is None else str(v)

    body = "".join(f"<tr><td>{escape(k)}</td><td class=\"num\">{escape(show(v))}</td></tr>" for k, v in rows)
    return f'<table class="gv-table"><tbody>{body}</tbody></table>'


def _json_details(label: str, value: Any) -> str:
    text = json.dumps(value, indent=2, default=str)
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + "\n… (cut; see the file)"
    return f'<details><summary>{escape(label)}</summary><pre class="gv-json">{escape(text)}</pre></details>'


def _evaluation(inputs: Inputs) -> str:
    if not inputs.plots and inputs.metrics is None:
        return ""
    out = ['<div class="gv-card" id="evaluation"><h2>Evaluation</h2>']
    if inputs.metrics is not None:
        path, metrics = inputs.metrics
        if isinstance(metrics, list) and metrics and isinstance(metrics[-1], dict):
            out.append(f"<h3>last of {len(metrics)} epochs</h3>")
            rows = [(k, v) for k, v in metrics[-1].items() if isinstance(v, (int, float, str)) or v is None]
        else:
            rows = _scalars(metrics)
        if rows:
            out.append(_kv_table(rows[:40]))
        out.append(_json_details(path.name, metrics))
    out += [_figure(name, png) for name, png in inputs.plots]
    out.append("</div>")
    return "".join(out)


def _figure(name: str, png: bytes) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure class="gv-figure"><img src="{uri}" alt="{escape(name)}">'
            f"<figcaption>{escape(name)}</figcaption></figure>")


def _figures(inputs: Inputs) -> str:
    if not inputs.figures:
        return ""
    return ('<div class="gv-card" id="figures"><h2>Figures</h2>'
            + "".join(_figure(name, png) for name, png in inputs.figures) + "</div>")


def _run(inputs: Inputs) -> str:
    """The summary's numbers and texts, one level deep, and its inputs."""
    summary = inputs.summary
    if not summary:
        return ""
    rows: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if key == "classes":
            continue  # the class table
        if isinstance(value, (int, float, str, bool)):
            rows.append((key, value))
        elif isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items()
                     if isinstance(v, (int, float, str, bool))
                     or (isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float, str)) for x in v))]
    out = ['<div class="gv-card" id="run"><h2>Run</h2>', _kv_table([(k, _short(v)) for k, v in rows[:60]])]
    entries = summary.get("inputs")
    if isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries):
        keys = [k for k in ("path", "width", "height", "bands", "crs", "pixel_size_m", "tiles_processed",
                            "tiles_skipped") if any(k in e for e in entries)]
        head = "".join(f"<th>{escape(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(_short(e.get(k))))}</td>" for k in keys) + "</tr>"
                       for e in entries[:50])
        out.append(f'<h3>inputs</h3><table class="gv-table"><thead><tr>{head}</tr></thead><tbody>{body}'
                   "</tbody></table>")
    if inputs.summary_path is not None:
        out.append(_json_details(inputs.summary_path.name, summary))
    out.append("</div>")
    return "".join(out)


def _short(value: Any) -> Any:
    """Paths as file names, short lists joined; other values unchanged."""
    if value is None:
        return "–"
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).name
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value
