"""One colour per class name, and the outline colours of layers without classes.

A class keeps the colour its summary names, else the one of the class raster's
colour table, else it takes the next colour of a fixed palette.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from geovision.report.layers import ClassRow, Layer
from geovision.report.quicklook import Quicklook

__all__ = ["class_colors", "class_ids", "outline_color"]

_FALLBACK_OUTLINES = ("#1f3a93", "#6c3483", "#0b5345", "#7e5109", "#17202a")

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


def class_ids(summary: Mapping[str, Any] | None, layers: Sequence[Layer]) -> tuple[dict[int, str], set[int]]:
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


def class_colors(summary: Mapping[str, Any] | None, rasters: Sequence[Quicklook], layers: Sequence[Layer],
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
