"""Input/output below the engine.

* :mod:`.geo`: true ground areas, perimeters and distances in any CRS.
* :mod:`.raster`: block-by-block GeoTIFF writing and COG copies (GDAL's COG driver).
* :mod:`.vector`: feature batches, the streaming GeoPackage layer sink, format export.
* :mod:`.outputs`: output formats by extension, atomic commits, refusing to overwrite.
* :mod:`.targets`: output targets for a finished run's layers (files).
* :mod:`.zones`: zone polygons for per-zone counts; :mod:`.drift`: input drift checks.
"""
