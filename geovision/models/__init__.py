"""Models: bundle files, the architecture registry and the tile predictors.

The modules form one line; each imports only modules before it
(``tests/test_imports.py`` keeps it so)::

    config <- bundle <- detectors <- registry <- pretrained
                                     registry <- predictor <- segmentation, detection, onnx <- factory
    inference (no other models module)

* :mod:`geovision.models.config` -- the configuration schema: ``BundleConfig``
  (architecture, bands, normalisation, classes, tile size, ground resolution),
  checked on construction, and the defaults a new bundle gets.
* :mod:`geovision.models.bundle` -- the file format: one ``.safetensors`` file
  holding the weights and, in its header, the whole configuration and sha256
  digests of both. Loading reads raw tensors only and never executes code; it
  builds no model.
* :mod:`geovision.models.detectors` -- torchvision detectors built from a config.
* :mod:`geovision.models.registry` -- ``build_model``: every
  segmentation-models-pytorch architecture by name, the built-in ``"shallow"``
  network used by the tiling tests, and the detectors; ``init_bundle`` writes an
  untrained bundle.
* :mod:`geovision.models.pretrained` -- models with ImageNet-initialised encoders.
* :mod:`geovision.models.predictor` -- ``TilePredictor``, the base every task's
  predictor shares (device, precision, normalisation, weights).
* :mod:`geovision.models.segmentation` -- ``SegmentationPredictor``: per-class
  probabilities for a batch of tiles.
* :mod:`geovision.models.detection` -- ``DetectionPredictor``: boxes per tile.
* :mod:`geovision.models.onnx` -- ONNX export of segmentation bundles and the
  onnxruntime backend that runs them (extra ``runtimes``).
* :mod:`geovision.models.factory` -- ``make_predictor`` (the predictor for a
  bundle's task), ``load_predictor``, ``shared_predictor``.
* :mod:`geovision.models.inference` -- several forward passes side by side.

Nothing heavy is imported here, so ``import geovision.models`` stays cheap;
import the submodule you need.
"""
