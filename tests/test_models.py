"""Architecture registry and the segmentation predictor, with real small models."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded

import numpy as np
import pytest
import torch

from geovision.errors import BundleError, ConfigError, TaskMismatchError
from geovision.models.bundle import save_bundle
from geovision.models.config import BundleConfig, Normalization, default_colors
from geovision.models.predictor import resolve_device, resolve_precision
from geovision.models.registry import (
    ShallowNet,
    build_model,
    list_architectures,
    list_encoders,
    load_weights,
)
from geovision.models.segmentation import SegmentationPredictor

REPO = Path(__file__).parents[1]


def make_config(**overrides: Any) -> BundleConfig:
    n_classes = overrides.pop("n_classes", 3)
    n_bands = overrides.pop("n_bands", 3)
    values: dict[str, Any] = dict(
        task="segmentation",
        arch="shallow",
        encoder="none",
        arch_params={"depth": 3, "width": 16},
        in_channels=n_bands,
        bands=list(range(1, n_bands + 1)),
        band_names=[f"b{i}" for i in range(n_bands)],
        normalization=Normalization(method="meanstd", mean=[100.0] * n_bands, std=[50.0] * n_bands),
        classes=[{"name": f"c{i}", "color": c} for i, c in enumerate(default_colors(n_classes))],
        tile_size=64,
    )
    values.update(overrides)
    return BundleConfig(**values)


def unet_config(**overrides: Any) -> BundleConfig:
    values: dict[str, Any] = {"arch": "unet", "encoder": "resnet18", "arch_params": {}, "n_classes": 2}
    values.update(overrides)
    return make_config(**values)


@pytest.fixture(scope="module")
def shallow_weights() -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    config = make_config()
    torch.manual_seed(0)
    return config, build_model(config).state_dict()


def trained_like_unet() -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """An untrained U-Net-ResNet18 whose batch-norm layers have non-trivial statistics, as a trained one has."""
    config = unet_config()
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    return config, model.state_dict()


@pytest.fixture(scope="module")
def unet_weights() -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    return trained_like_unet()


def random_tiles(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


# --- registry ---------------------------------------------------------------------


def test_list_architectures() -> None:
    names = list_architectures()
    assert {"unet", "fpn", "deeplabv3plus", "segformer", "shallow"} <= set(names)
    assert names == sorted(names)
    assert "resnet18" in list_encoders()


def test_unknown_architecture_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(make_config(arch="unett", encoder="resnet18", arch_params={}))
    message = str(info.value)
    assert "'unett'" in message and "unet" in message and "shallow" in message and "Did you mean" in message


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(unet_config(encoder="resnet81"))
    message = str(info.value)
    assert "'resnet81'" in message and "resnet18" in message and "efficientnet-b0" in message
    with pytest.raises(ConfigError, match="timm has no model"):
        build_model(unet_config(encoder="tu-not_a_real_model"))


def test_arch_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="decoder_channels"):  # the valid names are listed
        build_model(unet_config(arch_params={"decoder_chanels": [8, 8, 8, 8, 8]}))
    with pytest.raises(ConfigError, match="may not set"):
        build_model(unet_config(arch_params={"activation": "sigmoid"}))
    with pytest.raises(ConfigError, match="depth, width"):
        build_model(make_config(arch_params={"layers": 2}))
    with pytest.raises(ConfigError, match=">= 1"):
        build_model(make_config(arch_params={"depth": 0}))
    with pytest.raises(ConfigError, match="'none'"):
        build_model(make_config(encoder="resnet18"))


def test_arch_is_case_insensitive_and_params_apply() -> None:
    model = build_model(unet_config(arch="Unet", arch_params={"decoder_channels": [32, 16, 8, 8, 8]}))
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)


def test_detection_config_goes_to_the_detection_registry() -> None:
    config = make_config(task="detection", n_classes=1)
    with pytest.raises(ConfigError, match="unknown detection architecture 'shallow'"):
        build_model(config)
    with pytest.raises(TaskMismatchError, match="detection"):
        SegmentationPredictor(config, {}, device="cpu")


def test_shallow_receptive_field() -> None:
    depth = 3
    model = build_model(make_config(arch_params={"depth": depth, "width": 8})).eval()
    assert isinstance(model, ShallowNet) and model.receptive_field == 2 * depth + 1
    x = torch.randn(1, 3, 33, 33)
    y = x.clone()
    y[0, :, 16, 16] += 10.0
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().sum(dim=(0, 1))
    rows, cols = torch.nonzero(diff > 0, as_tuple=True)
    assert len(rows) > 0
    assert (rows - 16).abs().max() <= depth and (cols - 16).abs().max() <= depth


def test_mismatched_weights_are_a_bundle_error(
    shallow_weights: tuple[BundleConfig, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    config, state = shallow_weights
    # Shapes differ: the weights are for 3 classes, the config says 2.
    two_classes = make_config(n_classes=2)
    path = tmp_path / "mismatch.safetensors"
    save_bundle(path, two_classes, state)  # the sha covers them, so reading succeeds ...
    with pytest.raises(BundleError, match="different shape") as info:  # ... loading into the model does not
        SegmentationPredictor.from_bundle(path, device="cpu")
    assert "head.weight" in str(info.value) and str(path) in str(info.value)
    # Names differ.
    broken = dict(state)
    broken["extra.weight"] = broken.pop("head.bias")
    with pytest.raises(BundleError, match="missing: head.bias.*unexpected: extra.weight"):
        load_weights(build_model(config), broken)


# --- device and precision ---------------------------------------------------------


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU.*use device 'cpu'"):
            resolve_device("cuda")


def test_resolve_precision() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") is None
    assert resolve_precision(cpu, "bf16") is torch.bfloat16
    assert resolve_precision(cpu, "fp16") is torch.float16
    from geovision.models.predictor import cpu_has_native_bf16

    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    native = ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert cpu_has_native_bf16() is native  # emulated bf16 (plain AVX-512) is slower than fp32: not chosen
    assert resolve_precision(cpu, "auto") is (torch.bfloat16 if native else None)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision(cpu, "int8")


# --- predictor --------------------------------------------------------------------


def test_normalize_methods() -> None:
    tiles = np.array([0, 50, 100, 300], dtype=np.uint16).reshape(1, 1, 2, 2)
    valid = np.array([[[True, True], [True, False]]])
    state = build_model(make_config(n_bands=1)).state_dict()

    def normalized(normalization: dict[str, Any]) -> np.ndarray:
        config = make_config(n_bands=1, normalization=normalization)
        return SegmentationPredictor(config, state, device="cpu").normalize(tiles, valid)[0, 0]

    out = normalized({"method": "meanstd", "mean": [100.0], "std": [50.0]})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-2.0, -1.0], [0.0, 0.0]])  # the invalid 300 becomes the mean
    out = normalized({"method": "percentile", "low": [20.0], "high": [80.0]})
    np.testing.assert_allclose(out, [[0.0, 0.5], [1.0, 0.5]])  # clipped; invalid -> centre
    out = normalized({"method": "none"})
    np.testing.assert_allclose(out, [[0.0, 50.0], [100.0, 0.0]])


def test_predict_shallow_probabilities(shallow_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    config, state = shallow_weights
    predictor = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    tiles = random_tiles((3, 3, 40, 24))
    probs = predictor.predict(tiles, np.ones((3, 40, 24), dtype=bool))
    assert probs.shape == (3, 3, 40, 24) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert predictor.predict(tiles[:0], np.ones((0, 40, 24), dtype=bool)).shape == (0, 3, 40, 24)
    with pytest.raises(ValueError, match="model takes 3"):
        predictor.predict(tiles[:, :2], np.ones((3, 40, 24), dtype=bool))


def test_crop_equals_whole_image_interior(shallow_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    """What tiled prediction relies on: beyond the receptive field, a crop sees what the whole image sees."""
    config, state = shallow_weights
    predictor = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    image = random_tiles((1, 3, 96, 96), seed=3)
    valid = np.ones((1, 96, 96), dtype=bool)
    whole = predictor.predict(image, valid)
    crop = predictor.predict(image[:, :, 20:70, 30:90], valid[:, 20:70, 30:90])
    m = config.arch_params["depth"]  # receptive-field radius
    np.testing.assert_allclose(crop[:, :, m:-m, m:-m], whole[:, :, 20 + m : 70 - m, 30 + m : 90 - m], atol=1e-5)


def test_fp32_and_bf16_agree(shallow_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    config, state = shallow_weights
    tiles = random_tiles((4, 3, 64, 64), seed=1)
    valid = np.ones((4, 64, 64), dtype=bool)
    fp32 = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    bf16 = SegmentationPredictor(config, state, device="cpu", precision="bf16")
    assert fp32.dtype is None and bf16.dtype is torch.bfloat16
    p32, p16 = fp32.predict(tiles, valid), bf16.predict(tiles, valid)
    assert p16.dtype == np.float32
    assert (p32.argmax(axis=1) == p16.argmax(axis=1)).mean() > 0.95
    np.testing.assert_allclose(p32, p16, atol=0.05)


def test_invalid_pixels_give_no_nan(shallow_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    config, state = shallow_weights
    predictor = SegmentationPredictor(config, state, device="cpu")
    tiles = random_tiles((2, 3, 32, 32)).astype(np.float32)
    valid = np.ones((2, 32, 32), dtype=bool)
    tiles[0, :, :10, :] = np.nan  # nodata as NaN, flagged invalid
    valid[0, :10, :] = False
    tiles[1, 1, 5, 5] = np.inf  # a stray non-finite value the mask missed
    tiles[1, :, 20:, 20:] = 1e30  # garbage under the mask
    valid[1, 20:, 20:] = False
    x = predictor.normalize(tiles, valid)
    assert np.isfinite(x).all() and (x[0, :, :10, :] == 0).all() and (x[1, :, 20:, 20:] == 0).all()
    probs = predictor.predict(tiles, valid)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_unet_odd_tile_is_padded_and_cropped(unet_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    config, state = unet_weights
    predictor = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    tiles = random_tiles((2, 3, 50, 70), seed=2)
    valid = np.ones((2, 50, 70), dtype=bool)
    probs = predictor.predict(tiles, valid)
    assert probs.shape == (2, 2, 50, 70)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Same as reflect-padding the raw tile to 64 x 96 ourselves and cropping the result.
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, 14), (0, 26)), mode="reflect")
    full = predictor.predict(padded, np.ones((2, 64, 96), dtype=bool))
    np.testing.assert_allclose(probs, full[:, :, :50, :70], atol=1e-4)
    # A tile smaller than the padding falls back to edge replication.
    tiny = predictor.predict(random_tiles((1, 3, 5, 7)), np.ones((1, 5, 7), dtype=bool))
    assert tiny.shape == (1, 2, 5, 7) and np.isfinite(tiny).all()


def test_unet_channels_last_and_bf16(unet_weights: tuple[BundleConfig, dict[str, torch.Tensor]]) -> None:
    config, state = unet_weights
    tiles = random_tiles((2, 3, 64, 64), seed=4)
    valid = np.ones((2, 64, 64), dtype=bool)
    plain = SegmentationPredictor(config, state, device="cpu", precision="fp32", channels_last=False)
    fast = SegmentationPredictor(config, state, device="cpu", precision="fp32", channels_last=True)
    reference = plain.predict(tiles, valid)
    np.testing.assert_allclose(fast.predict(tiles, valid), reference, atol=1e-4)
    bf16 = SegmentationPredictor(config, state, device="cpu", precision="bf16").predict(tiles, valid)
    assert np.isfinite(bf16).all()
    assert (bf16.argmax(axis=1) == reference.argmax(axis=1)).mean() > 0.9


def test_no_pickle_in_models() -> None:
    """Bundles are never unpickled. The one torch.load reads the third-party EfficientNet-Lite0
    ``.pth`` (not a bundle) with weights_only=True, which restores tensors and refuses objects."""
    pattern = re.compile(r"torch.load|pickle")
    hits = [
        f"{path.relative_to(REPO)}:{i}: {line.strip()}"
        for path in sorted((REPO / "geovision" / "models").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    allowed = [h for h in hits if h.startswith("geovision/models/pretrained.py") and "weights_only=True" in h]
    assert hits == allowed, hits
