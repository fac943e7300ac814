"""An offline, self-contained HTML map report of a geovision output.

:func:`write_report` turns a vector output (and the rasters, summary and evaluation
files beside it) into one HTML file with Leaflet inlined: a map with raster
quicklooks and every vector layer, a legend, per-class counts and areas, a
confidence histogram and the evaluation plots. Nothing is fetched when it opens.
"""

from __future__ import annotations

from geovision.report.page import REPORT_SUFFIX, write_report

__all__ = ["REPORT_SUFFIX", "write_report"]
