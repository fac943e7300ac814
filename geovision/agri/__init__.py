"""Agriculture: the pieces of the crop-stress workflow.

* :mod:`.indices`: vegetation indices, sensor band presets and reflectance scaling (pure numpy).
* :mod:`.stress`: stress rules as per-field cut-offs and per-field statistics (pure numpy).
* :mod:`.coverage`: the exact share of each pixel inside a field, and true ground areas.
* :mod:`.index_raster`: an index over a whole raster, block by block, into a COG.
* :mod:`.fields`: the stress workflow's per-field, per-block accounting (index pass, classes).
* :mod:`.summary`: the stress workflow's summary, table and quicklook PNG.
"""
