"""Training from the user's own labels: labels, spatial split, chips, the training loop.

* :mod:`geovision.training.labels` reads the label polygons (and an optional area of
  interest) and burns them into masks or boxes for any window of a raster.
* :mod:`geovision.training.split` cuts the rasters into square blocks and assigns each
  to train, val or test, so the splits are spatially separated by a buffer.
"""
