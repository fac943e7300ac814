"""Input/output: ground measures in any CRS (``geo``), raster, vector and bundle files."""
