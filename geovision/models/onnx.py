"""Segmentation bundles as ONNX files, and an onnxruntime backend that runs them.

:func:`export_onnx` writes the bundle's model (raw tiles' normalised values in, class
logits out, any batch size) with the bundle's whole configuration in the ONNX file's
metadata, so the file alone is enough to predict with. :class:`OnnxSegmentationBackend`
is an engine ``Backend``: it normalises tiles with the bundle's statistics (the same
:class:`~geovision.models.predictor.Normalizer` as the torch predictor), runs the graph
in onnxruntime and returns per-class probabilities.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geovision.errors import BundleError, ConfigError
from geovision.models.bundle import load_bundle
from geovision.models.config import BundleConfig
from geovision.models.predictor import Normalizer
from geovision.models.registry import build_loaded_model

__all__ = ["META_CONFIG", "OnnxSegmentationBackend", "export_onnx", "read_onnx_config"]

#: ONNX metadata key holding the bundle's configuration as JSON
META_CONFIG = "geovision"

#: ONNX operator set the exporter targets
OPSET = 17


def export_onnx(bundle: str | os.PathLike[str], out: str | os.PathLike[str]) -> BundleConfig:
    """Write the segmentation bundle at ``bundle`` as an ONNX file at ``out``; returns its configuration.

    Raises:
        ConfigError: the bundle is not a segmentation bundle.
        BundleError: the bundle cannot be read (see :func:`~geovision.models.bundle.load_bundle`).
    """
    import onnx

    config, state = load_bundle(bundle)
    if config.task != "segmentation":
        raise ConfigError(f"{bundle}: ONNX export covers segmentation bundles; this one is a {config.task} "
                          "bundle. Predict with it through PyTorch (the default backend).")
    model = build_loaded_model(config, state).eval()
    example = torch.zeros(1, config.in_channels, config.tile_size, config.tile_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        raw = Path(work) / "model.onnx"
        with warnings.catch_warnings():
            # the TorchScript exporter: the torch.export one needs onnxscript, which is not a dependency
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(raw), dynamo=False, opset_version=OPSET,
                              input_names=["tiles"], output_names=["logits"],
                              dynamic_axes={"tiles": {0: "n"}, "logits": {0: "n"}})
        graph = onnx.load(str(raw))
    entry = graph.metadata_props.add()
    entry.key, entry.value = META_CONFIG, config.model_dump_json()
    tmp = out.with_name(f".{out.name}.partial")
    onnx.save(graph, str(tmp))
    os.replace(tmp, out)
    return config


def read_onnx_config(path: str | os.PathLike[str]) -> BundleConfig:
    """The bundle configuration stored in an ONNX file written by :func:`export_onnx`."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return _config(path, meta)


def _config(path: str | os.PathLike[str], meta: dict[str, str]) -> BundleConfig:
    if META_CONFIG not in meta:
        raise BundleError(f"{path}: this ONNX file holds no geovision configuration; export it with "
                          "geovision.models.onnx.export_onnx.")
    return BundleConfig.model_validate(json.loads(meta[META_CONFIG]))


class OnnxSegmentationBackend:
    """Per-class probabilities from an exported segmentation model, run by onnxruntime on the CPU.

    Args:
        path: an ONNX file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads per call (default: onnxruntime's).
    """

    task = "segmentation"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session: Any = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # the configuration from the session's own copy of the metadata: the file is read once
        self.config = _config(path, dict(self._session.get_modelmeta().custom_metadata_map))
        self.normalizer = Normalizer(self.config)

    def predict(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``(N, classes, H, W)`` float32 probabilities for ``(N, bands, H, W)`` raw tiles."""
        tiles, valid = self.normalizer.check(tiles, valid)
        x = self.normalizer(tiles, valid)
        logits = np.asarray(self._session.run(None, {"tiles": np.ascontiguousarray(x, dtype=np.float32)})[0])
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs: np.ndarray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs
