"""Stitching: block-wise probability accumulation and vectorisation of class rasters (``vectorize``)."""
