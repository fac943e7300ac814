"""The prediction engine: rasters stream through reading, a model and a stitcher into layers.

Where new code plugs in (each a typed protocol in :mod:`geovision.engine.protocols`,
with a reusable contract test in ``tests/test_engine_contracts.py``):

* an inference runtime: a :class:`~geovision.engine.protocols.Backend`
  (today :mod:`geovision.models.segmentation` and :mod:`geovision.models.detection`);
* what becomes of tile outputs: a :class:`~geovision.engine.protocols.TileConsumer`
  (:mod:`.segmentation`, :mod:`.detection`);
* where features go during a run: a :class:`~geovision.engine.protocols.FeatureSink`
  (:class:`geovision.io.vector.LayerSink`, :class:`.sinks.ReviewSink`);
* where a finished run's layers go: an :class:`~geovision.engine.protocols.OutputTarget`
  (:class:`geovision.io.targets.FileTarget`).

Modules, in import order (each imports only those before it, and ``tiling``,
``stitching``, ``models``, ``io`` below the engine)::

    protocols <- progress, reading, stitcher, cluster <- segmentation, detection
      <- sinks, summary <- pipeline

``geovision.workflows`` builds runs from these; nothing here prints.
"""
