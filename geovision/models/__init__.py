"""Models: bundle files, the architecture registry and the tile predictor.

* :mod:`geovision.models.bundle` -- one ``.safetensors`` file holding the weights
  and, in its header, the whole configuration (architecture, bands,
  normalisation, classes, tile size, ground resolution). Loading reads raw tensors only and never executes code.
* :mod:`geovision.models.registry` -- ``build_model``: every
  segmentation-models-pytorch architecture by name, plus the built-in
  ``"shallow"`` network used by the tiling tests.
* :mod:`geovision.models.segmentation` -- ``SegmentationPredictor``: normalise a
  batch of tiles and return per-class probabilities.

Nothing heavy is imported here, so ``import geovision.models`` stays cheap;
import the submodule you need.
"""
