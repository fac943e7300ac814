"""Training from the user's own labels.

* :mod:`.labels`: label polygons (and an optional area of interest) read, checked and
  burnt into masks or boxes for any window of a raster.
* :mod:`.split`: spatially separated train/val/test blocks with a buffer.
* :mod:`.chips`: chip planning, per-epoch sampling, the on-the-fly dataset.
* :mod:`.augment`: albumentations presets for any band count; :mod:`.losses`: losses.
* :mod:`.loop`: the training loop, metrics and exactly resumable checkpoints.
"""
