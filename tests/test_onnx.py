"""ONNX export of segmentation bundles and the onnxruntime backend (first step of issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from models_util import bright_object_bundle
from test_engine_contracts import SegmentationBackendContract

from geovision.engine.protocols import Backend
from geovision.errors import BundleError, ConfigError
from geovision.models.bundle import load_bundle
from geovision.models.factory import make_predictor
from geovision.models.onnx import OnnxSegmentationBackend, export_onnx, read_onnx_config
from geovision.models.registry import init_bundle


class TestOnnxSegmentationBackend(SegmentationBackendContract):
    """The engine's backend contract, run on onnxruntime."""

    def make(self, tmp_path: Path) -> tuple[Backend, int, int]:
        bundle = bright_object_bundle(tmp_path / "b.safetensors", tile=64)
        export_onnx(bundle, tmp_path / "b.onnx")
        return OnnxSegmentationBackend(tmp_path / "b.onnx", threads=1), 3, 64


@pytest.mark.parametrize("arch", ["shallow", "unet"])
def test_onnx_agrees_with_torch(tmp_path: Path, arch: str) -> None:
    if arch == "shallow":
        bundle = bright_object_bundle(tmp_path / "m.safetensors", tile=64)
    else:
        bundle = tmp_path / "m.safetensors"
        init_bundle(bundle, arch="unet", encoder="resnet18", bands=4, classes=["background", "a", "b"], tile_size=64,
                    arch_params={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})
    config = export_onnx(bundle, tmp_path / "m.onnx")
    assert read_onnx_config(tmp_path / "m.onnx") == config
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, size=(3, config.in_channels, 64, 64)).astype(np.uint8)
    valid = np.ones((3, 64, 64), bool)
    valid[1, :10] = False
    torch_config, state = load_bundle(bundle)
    ref = np.stack(make_predictor(torch_config, state, device="cpu", precision="fp32").predict(tiles, valid))
    got = OnnxSegmentationBackend(tmp_path / "m.onnx").predict(tiles, valid)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_detection_and_foreign_files_are_refused(tmp_path: Path) -> None:
    detector = tmp_path / "d.safetensors"
    init_bundle(detector, task="detection", arch="fcos", encoder="tiny", bands=3, classes=["square"], tile_size=64)
    with pytest.raises(ConfigError, match="segmentation bundles"):
        export_onnx(detector, tmp_path / "d.onnx")
    assert not (tmp_path / "d.onnx").exists()

    import onnx
    from onnx import helper

    plain = helper.make_model(helper.make_graph([], "g", [], []))
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(BundleError, match="no geovision configuration"):
        read_onnx_config(tmp_path / "plain.onnx")
