"""Stitching: tile outputs back into seamless rasters and clean vector layers.

* :mod:`.accumulate`: taper-weighted blending of tile probabilities into finished blocks.
* :mod:`.trace`, :mod:`.flat`, :mod:`.vectorize`: block polygons traced in pixel space,
  merged across block seams, measured and encoded as WKB.
* :mod:`.boxes`: one box per object from the per-tile boxes of a detector.
"""
