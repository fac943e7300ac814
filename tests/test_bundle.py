"""Model bundles: round trips, init_bundle, tamper detection (header and weights), versions, file errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import scene, write_raster
from models_util import bright_object_bundle
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geovision.cli import main
from geovision.errors import BundleError, BundleVersionError, ConfigError
from geovision.models.bundle import (
    TensorEntry,
    _buffer_digest,
    bundle_digest,
    load_bundle,
    load_bundle_bytes,
    read_config,
    resave_bundle,
    save_bundle,
    weights_digest,
)
from geovision.models.config import (
    FORMAT_VERSION,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    BundleConfig,
    ClassInfo,
    Normalization,
    default_colors,
)
from geovision.models.registry import build_model, init_bundle
from geovision.models.segmentation import SegmentationPredictor


def make_config(**overrides: Any) -> BundleConfig:
    values: dict[str, Any] = dict(
        task="segmentation",
        arch="shallow",
        encoder="none",
        arch_params={"depth": 2, "width": 4},
        in_channels=3,
        bands=[1, 2, 3],
        band_names=["red", "green", "blue"],
        normalization=Normalization(method="meanstd", mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0]),
        classes=[ClassInfo(name="background", color="#000000"), ClassInfo(name="tree", color="#00FF00")],
        tile_size=64,
        ground_resolution_m=0.3,
        provenance={"epochs": 3, "metrics": {"miou": 0.5}, "data": ["a.tif", "b.tif"]},
    )
    values.update(overrides)
    return BundleConfig(**values)


def rewrite(path: Path, edit_metadata: Any = None, edit_tensors: Any = None) -> None:
    """Rewrite a bundle with safetensors' own functions, editing its header and/or tensors."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(path))
    if edit_metadata is not None:
        edit_metadata(metadata)
    if edit_tensors is not None:
        edit_tensors(tensors)
    save_file(tensors, str(path), metadata=metadata)


def layout(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """``(offset of the data buffer in the file, header entries)`` of a safetensors file."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    return 8 + size, header


def sign(metadata: dict[str, str], state: dict[str, torch.Tensor]) -> None:
    """Give ``metadata`` the digests save_bundle would give it for ``state`` (a valid, hand-made header)."""
    codes = {torch.float32: "F32", torch.int64: "I64"}
    metadata["geovision_weights_sha256"] = weights_digest(state)
    metadata["geovision_sha256"] = bundle_digest(
        metadata["geovision"], {k: (codes[v.dtype], tuple(v.shape)) for k, v in state.items()},
        metadata["geovision_weights_sha256"],
    )


def format1_bundle(path: Path, config: BundleConfig, state: dict[str, torch.Tensor]) -> None:
    """Write a bundle as geovision 0.1.0 wrote format 1: its sha256 covered the config and tensor names and shapes."""
    config_json = config.model_copy(update={"format_version": 1}).model_dump_json()
    h = hashlib.sha256(config_json.encode("utf-8"))
    for name in sorted(state):
        h.update(b"\x00" + name.encode("utf-8") + b"\x00" + ",".join(str(d) for d in state[name].shape).encode())
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"geovision": config_json, "geovision_format": "1", "geovision_sha256": h.hexdigest()})


@pytest.fixture()
def shallow_bundle(tmp_path: Path) -> tuple[Path, BundleConfig, dict[str, torch.Tensor]]:
    config = make_config()
    torch.manual_seed(0)
    state = build_model(config).state_dict()
    path = tmp_path / "shallow.safetensors"
    save_bundle(path, config, state)
    return path, config, state


# --- round trips ------------------------------------------------------------------


def test_save_read_load_round_trip(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, config, state = shallow_bundle
    assert read_config(path) == config
    loaded_config, tensors = load_bundle(path)
    assert loaded_config == config
    assert loaded_config.classes[1].color == "#00ff00"  # stored lower case
    assert sorted(tensors) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(tensors[name], tensor), name


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    config = make_config()
    save_bundle(path, config, build_model(config).state_dict())
    other = make_config(classes=[{"name": "x", "color": "#111111"}, {"name": "y", "color": "#222222"}])
    save_bundle(path, other, build_model(other).state_dict())
    assert read_config(path).class_names == ["x", "y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp files left


def test_save_into_missing_folder(tmp_path: Path) -> None:
    config = make_config()
    with pytest.raises(BundleError, match="does not exist"):
        save_bundle(tmp_path / "nope" / "m.safetensors", config, build_model(config).state_dict())


def test_header_is_json_with_format_and_sha(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, config, state = shallow_bundle
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["geovision_format"] == str(FORMAT_VERSION) == "2"
    assert json.loads(metadata["geovision"])["classes"][1]["name"] == "tree"
    # the weights digest is over the bytes as stored, in name order: recompute it from the file alone
    start, entries = layout(path)
    data = path.read_bytes()
    h = hashlib.sha256()
    for name in sorted(entries):
        begin, end = entries[name]["data_offsets"]
        h.update(json.dumps([name, entries[name]["dtype"], entries[name]["shape"], end - begin]).encode() + b"\n")
        h.update(data[start + begin : start + end])
    assert metadata["geovision_weights_sha256"] == h.hexdigest() == weights_digest(state)
    tensors = {k: (v["dtype"], v["shape"]) for k, v in entries.items()}
    assert metadata["geovision_sha256"] == bundle_digest(metadata["geovision"], tensors, h.hexdigest())


def test_read_config_does_not_import_torch(
    shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]],
) -> None:
    path, _, _ = shallow_bundle
    code = (
        "import sys\nfrom geovision.models.bundle import read_config\n"
        f"c = read_config({str(path)!r})\nassert c.arch == 'shallow'\n"
        "assert 'torch' not in sys.modules, 'read_config imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- init_bundle ------------------------------------------------------------------


def test_init_bundle_unet_rgb(tmp_path: Path) -> None:
    path = tmp_path / "unet.safetensors"
    config = init_bundle(
        path, arch="unet", encoder="resnet18", bands=3, classes=["background", "building"], tile_size=64
    )
    assert config.in_channels == 3 and config.bands == [1, 2, 3]
    assert config.band_names == ["red", "green", "blue"]
    assert config.normalization.method == "meanstd"
    assert config.normalization.mean == list(IMAGENET_MEAN_255)
    assert config.normalization.std == list(IMAGENET_STD_255)
    assert config.class_names == ["background", "building"]
    assert config.classes[0].color == "#000000"
    assert config.background_class == 0
    assert read_config(path) == config

    predictor = SegmentationPredictor.from_bundle(path, device="cpu")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(2, 3, 64, 64), dtype=np.uint8)
    probs = predictor.predict(tiles, np.ones((2, 64, 64), dtype=bool))
    assert probs.shape == (2, 2, 64, 64) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_init_bundle_five_bands(tmp_path: Path) -> None:
    path = tmp_path / "five.safetensors"
    config = init_bundle(path, bands=5, classes=["background", "water", "field"], tile_size=64)
    assert config.in_channels == 5 and config.bands == [1, 2, 3, 4, 5]
    assert config.band_names == [f"band_{i}" for i in range(1, 6)]
    assert config.normalization.mean == [127.5] * 5 and config.normalization.std == [64.0] * 5
    loaded, tensors = load_bundle(path)
    assert loaded == config
    predictor = SegmentationPredictor(loaded, tensors, device="cpu")
    tiles = np.random.default_rng(1).integers(0, 256, size=(1, 5, 64, 64)).astype(np.uint16)
    probs = predictor.predict(tiles, np.ones((1, 64, 64), dtype=bool))
    assert probs.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_init_bundle_band_indices_and_shallow(tmp_path: Path) -> None:
    config = init_bundle(
        tmp_path / "s.safetensors", arch="shallow", bands=[4, 3, 2, 8], classes=["bg", "a"], tile_size=32
    )
    assert config.encoder == "none"
    assert config.bands == [4, 3, 2, 8] and config.band_names == ["band_4", "band_3", "band_2", "band_8"]


def test_init_bundle_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tile_size"):
        init_bundle(tmp_path / "a.safetensors", arch="shallow", classes=["bg", "a"], tile_size=100)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        init_bundle(tmp_path / "b.safetensors", arch="shallow", classes=["only"])
    with pytest.raises(ConfigError, match="unet"):
        init_bundle(tmp_path / "c.safetensors", arch="unett", classes=["bg", "a"])
    assert not list(tmp_path.iterdir())


# --- tampering, versions, broken files ----------------------------------------------


def test_tampered_header_is_detected(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, _, _ = shallow_bundle

    def rename_class(metadata: dict[str, str]) -> None:
        config = json.loads(metadata["geovision"])
        config["classes"][1]["name"] = "forest"
        metadata["geovision"] = json.dumps(config)  # the old sha256 stays

    rewrite(path, rename_class)
    for reader in (read_config, load_bundle):
        with pytest.raises(BundleError, match="header was modified") as info:
            reader(path)
        assert str(path) in str(info.value)


def test_swapped_tensors_are_detected(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, _, _ = shallow_bundle

    def drop_one(tensors: dict[str, torch.Tensor]) -> None:
        tensors.pop(sorted(tensors)[0])

    rewrite(path, edit_tensors=drop_one)
    with pytest.raises(BundleError, match="header was modified"):
        load_bundle(path)


def flip_byte(path: Path, name: str, at: float = 0.5) -> None:
    """Flip every bit of one byte of tensor ``name``'s value, in place (``at``: where in the tensor's bytes)."""
    start, entries = layout(path)
    begin, end = entries[name]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[start + begin + int((end - begin - 1) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_changed_weight_byte_is_refused(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, config, state = shallow_bundle
    original = path.read_bytes()
    for name in sorted(state):
        for at in (0.0, 0.5, 1.0):
            path.write_bytes(original)
            flip_byte(path, name, at)
            for load in (load_bundle, lambda p: load_bundle_bytes(p.read_bytes(), str(p))):
                with pytest.raises(BundleError, match="modified or corrupted") as info:
                    load(path)
                message = str(info.value)
                assert str(path) in message and "export or train the bundle again" in message
            assert read_config(path) == config  # the header alone is intact: reading it does not hash weights


def test_swapped_weight_values_are_refused(tmp_path: Path) -> None:
    """Two tensors of one shape and dtype swapping values: the header's names, dtypes and shapes are unchanged."""
    config = make_config(arch_params={"depth": 3, "width": 4})
    state = build_model(config).state_dict()
    path = tmp_path / "m.safetensors"
    save_bundle(path, config, state)

    def swap(tensors: dict[str, torch.Tensor]) -> None:
        a, b = "features.2.weight", "features.4.weight"
        assert tensors[a].shape == tensors[b].shape and not torch.equal(tensors[a], tensors[b])
        tensors[a], tensors[b] = tensors[b], tensors[a]

    rewrite(path, edit_tensors=swap)
    assert read_config(path) == config
    with pytest.raises(BundleError, match="modified or corrupted"):
        load_bundle(path)


def test_changed_dtype_is_refused(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, _, _ = shallow_bundle

    def as_int32(tensors: dict[str, torch.Tensor]) -> None:
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].view(torch.int32)  # same bytes, another dtype

    rewrite(path, edit_tensors=as_int32)
    for reader in (read_config, load_bundle):
        with pytest.raises(BundleError, match="header was modified"):
            reader(path)


def test_predict_command_refuses_a_changed_bundle(tmp_path: Path) -> None:
    bundle = bright_object_bundle(tmp_path / "m.safetensors")
    raster = write_raster(tmp_path / "s.tif", scene(64, 64)[0])
    flip_byte(bundle, "head.weight")
    result = CliRunner().invoke(main, ["predict", str(raster), "-m", str(bundle), "-o", str(tmp_path / "o.gpkg"),
                                       "--quiet"])
    assert result.exit_code != 0
    assert "modified or corrupted" in result.output and str(bundle) in result.output
    assert not (tmp_path / "o.gpkg").exists()


def test_weights_digest_of_50_mb_is_fast(tmp_path: Path) -> None:
    """Checking the weights of a 52 MB bundle hashes its data buffer as stored: 0.09 s on a 2-vCPU Xeon."""
    config = make_config()
    state = {**build_model(config).state_dict(), "big": torch.arange(13_000_000, dtype=torch.float32)}
    path = tmp_path / "big.safetensors"
    save_bundle(path, config, state)
    assert path.stat().st_size > 50_000_000
    start, entries = layout(path)
    data = path.read_bytes()
    parsed = {k: TensorEntry(v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in entries.items()}
    t0 = time.perf_counter()
    digest = _buffer_digest(parsed, memoryview(data)[start:])
    assert time.perf_counter() - t0 < 0.5
    assert digest == read_config_metadata(path)["geovision_weights_sha256"]


def read_config_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


# --- format 1 ---------------------------------------------------------------------


def test_format1_bundle_is_refused_and_resaved(
    shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]],
) -> None:
    _, config, state = shallow_bundle
    old = shallow_bundle[0].parent / "old.safetensors"
    format1_bundle(old, config, state)
    for reader in (read_config, load_bundle):
        with pytest.raises(BundleVersionError) as info:
            reader(old)
        message = str(info.value)
        assert str(old) in message and "format 1" in message and "does not cover the weight values" in message
        assert "geovision model upgrade OLD.safetensors --out NEW.safetensors" in message
        assert "resave_bundle" in message

    new = old.parent / "new.safetensors"
    assert resave_bundle(old, new) == config
    loaded, tensors = load_bundle(new)
    assert loaded == config and loaded.format_version == FORMAT_VERSION
    assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state)
    assert resave_bundle(old, old) == config  # in place
    assert load_bundle(old)[0] == config
    assert resave_bundle(new, new) == config  # a current bundle: checked and written again
    assert sorted(p.name for p in old.parent.iterdir()) == ["new.safetensors", "old.safetensors", "shallow.safetensors"]


def test_resave_refuses_edited_bundles(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, config, state = shallow_bundle
    old = path.parent / "old.safetensors"
    format1_bundle(old, config, state)

    def rename_class(metadata: dict[str, str]) -> None:
        edited = json.loads(metadata["geovision"])
        edited["classes"][1]["name"] = "forest"
        metadata["geovision"] = json.dumps(edited)

    rewrite(old, rename_class)
    with pytest.raises(BundleError, match="header was modified"):
        resave_bundle(old, path.parent / "x.safetensors")
    flip_byte(path, sorted(state)[0])
    with pytest.raises(BundleError, match="modified or corrupted"):
        resave_bundle(path, path.parent / "x.safetensors")
    assert not (path.parent / "x.safetensors").exists()
    future = path.parent / "future.safetensors"
    save_file({"w": torch.zeros(1)}, str(future), metadata={"geovision": "{}", "geovision_format": "3"})
    with pytest.raises(BundleVersionError, match="Upgrade geovision"):
        resave_bundle(future, path.parent / "x.safetensors")


def test_unknown_format_version(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, _, state = shallow_bundle

    def future_version(metadata: dict[str, str]) -> None:
        config = json.loads(metadata["geovision"])
        config["format_version"] = 99
        metadata["geovision"] = json.dumps(config)
        metadata["geovision_format"] = "99"
        sign(metadata, state)

    rewrite(path, future_version)
    with pytest.raises(BundleVersionError) as info:
        read_config(path)
    message = str(info.value)
    assert str(path) in message and "'99'" in message and "Upgrade geovision" in message
    assert f"version(s) {FORMAT_VERSION}" in message


def test_invalid_config_with_valid_sha_lists_fields(
    shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]],
) -> None:
    path, _, state = shallow_bundle

    def break_config(metadata: dict[str, str]) -> None:
        config = json.loads(metadata["geovision"])
        config["tile_size"] = 50
        config["classes"][0]["color"] = "red"
        metadata["geovision"] = json.dumps(config)
        sign(metadata, state)

    rewrite(path, break_config)
    with pytest.raises(BundleError, match="invalid geovision configuration") as info:
        read_config(path)
    assert "tile_size" in str(info.value) and "classes.0.color" in str(info.value)


def test_random_bytes_file(tmp_path: Path) -> None:
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for reader in (read_config, load_bundle):
        with pytest.raises(BundleError) as info:
            reader(path)
        assert str(path) in str(info.value)


def test_truncated_file(shallow_bundle: tuple[Path, BundleConfig, dict[str, torch.Tensor]]) -> None:
    path, _, _ = shallow_bundle
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    for reader in (read_config, load_bundle):
        with pytest.raises(BundleError, match="truncated") as info:
            reader(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "empty", "folder"])
def test_unreadable_paths(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.safetensors"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(BundleError) as info:
        read_config(path)
    assert str(path) in str(info.value)


def test_plain_safetensors_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(BundleError, match="not a geovision bundle") as info:
        load_bundle(path)
    assert "geovision model init" in str(info.value) and str(path) in str(info.value)
    save_file({"weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(BundleError, match="not a geovision bundle"):
        read_config(path)


# --- config validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"bands": [1, 2]}, "in_channels is 3"),
        ({"bands": [0, 1, 2]}, "1-based"),
        ({"band_names": ["r", "g"]}, "band_names"),
        ({"normalization": {"method": "meanstd", "mean": [0, 0], "std": [1, 1]}}, "one value per band"),
        ({"normalization": {"method": "meanstd", "mean": [0, 0, 0], "std": [1, 0, 1]}}, "std must be > 0"),
        ({"normalization": {"method": "meanstd", "mean": [0, 0, 0]}}, "std is missing"),
        ({"normalization": {"method": "percentile", "low": [0, 5, 0], "high": [1, 5, 1]}}, "greater than low"),
        ({"normalization": {"method": "none", "mean": [0, 0, 0]}}, "does not use"),
        ({"classes": [{"name": "a", "color": "#000000"}]}, "at least 2 classes"),
        ({"classes": [{"name": "a", "color": "#000000"}, {"name": "a", "color": "#111111"}]}, "unique"),
        ({"classes": [{"name": "a", "color": "#00000"}, {"name": "b", "color": "#111111"}]}, "#rrggbb"),
        ({"background_class": 2}, "background_class"),
        ({"tile_size": 100}, "multiple of 32"),
        ({"ground_resolution_m": -1.0}, "positive"),
        ({"created": "yesterday"}, "ISO 8601"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_config_validation(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        make_config(**overrides)


def test_config_is_frozen_and_percentile_ok() -> None:
    config = make_config(normalization={"method": "percentile", "low": [0, 0, 0], "high": [255, 255, 255]})
    assert config.normalization.num_bands == 3
    with pytest.raises(ValidationError):
        config.tile_size = 128  # type: ignore[misc]
    assert make_config(background_class=None).background_class is None


def test_default_colors() -> None:
    colors = default_colors(40)
    assert len(set(colors)) == 40
    assert all(len(c) == 7 and c[0] == "#" and int(c[1:], 16) >= 0 for c in colors)
    assert default_colors(5) == colors[:5]
    assert default_colors(0) == []
    for c in colors:  # every one is accepted by ClassInfo
        ClassInfo(name="x", color=c)


def test_load_bundle_bytes_matches_file(tmp_path) -> None:
    path = tmp_path / "b.safetensors"
    init_bundle(path, arch="shallow", bands=3, classes=["background", "thing"])
    config, state = load_bundle(path)
    config2, state2 = load_bundle_bytes(path.read_bytes(), "b")
    assert config2 == config and state2.keys() == state.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    with pytest.raises(BundleError, match="junk"):
        load_bundle_bytes(b"\x01" * 40, "junk")
