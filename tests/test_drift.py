"""Drift check: the same scene passes; darkened or with swapped bands, it is flagged."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import scene, write_raster
from models_util import bright_object_bundle

import geovision
from geovision.errors import GeovisionWarning
from geovision.io.drift import PSI_SHIFT, psi, reference, sample_raster
from geovision.models.bundle import load_bundle, save_bundle


def _bands_apart(img: np.ndarray) -> np.ndarray:
    """Give the three bands different distributions, as real imagery has."""
    out = img.astype(np.float64)
    out[1] *= 0.6
    out[2] = out[2] * 0.3 + 40
    return out.clip(0, 255).astype(np.uint8)


@pytest.fixture
def setup(tmp_path: Path):
    img, _ = scene(400, 400, seed=8)
    img = _bands_apart(img)
    original = write_raster(tmp_path / "original.tif", img)
    bundle = bright_object_bundle(tmp_path / "m.safetensors")
    config, state = load_bundle(bundle)
    config = config.model_copy(update={"drift_reference": reference(sample_raster(str(original), [1, 2, 3]))})
    save_bundle(bundle, config, state)
    return tmp_path, img, original, bundle


def test_psi_basics() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, size=(1, 50_000))
    ref = reference(a)
    assert psi(ref, rng.normal(100, 10, size=(1, 50_000)))[0] < 0.02
    assert psi(ref, rng.normal(80, 10, size=(1, 50_000)))[0] > 1.0


def test_same_scene_passes_and_shifted_scenes_are_flagged(setup) -> None:
    tmp_path, img, original, bundle = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeovisionWarning)
        ok = geovision.predict(original, bundle, tmp_path / "ok.gpkg", tile=256, progress=False)
    drift = ok.summary["inputs"][0]["drift"]
    assert drift["shifted"] == [] and max(drift["psi"].values()) < 0.1

    dark = write_raster(tmp_path / "dark.tif", (img * 0.5).astype(np.uint8))
    with pytest.warns(GeovisionWarning, match="dark.tif.*unlike"):
        result = geovision.predict(dark, bundle, tmp_path / "dark.gpkg", tile=256, progress=False)
    assert set(result.summary["inputs"][0]["drift"]["shifted"]) == {"red", "green", "blue"}

    swapped = write_raster(tmp_path / "swapped.tif", img[[2, 1, 0]])
    with pytest.warns(GeovisionWarning, match="swapped.tif.*band order"):
        result = geovision.predict(swapped, bundle, tmp_path / "swapped.gpkg", tile=256, progress=False)
    psis = result.summary["inputs"][0]["drift"]["psi"]
    assert psis["red"] > PSI_SHIFT and psis["blue"] > PSI_SHIFT and psis["green"] < 0.1


def test_monitor_counts_the_tiles_it_is_shown() -> None:
    """predict's streaming check: every 8th pixel of each tile read, valid ones only, scored as psi() scores."""
    from geovision.io.drift import DriftMonitor

    rng = np.random.default_rng(1)
    ref = reference(rng.normal(100, 10, size=(2, 20_000)))
    monitor = DriftMonitor(ref, ["a", "b"])
    tiles = rng.normal(100, 10, size=(3, 2, 64, 64))
    tiles[2, 1] += 30  # band b of the last tile is brighter
    valid = np.ones((3, 64, 64), bool)
    valid[1, :32] = False
    tiles[1, :, :32] = np.nan  # nodata under the mask is never counted
    shown = []
    for t, v in zip(tiles, valid):
        monitor.add(t, v)
        sub, keep = t[:, ::8, ::8], v[::8, ::8]
        shown.append(sub[:, keep])
    with pytest.warns(GeovisionWarning, match="tiles: looks unlike.*band\\(s\\) b "):
        result = monitor.result("tiles")
    expected = psi(ref, np.concatenate(shown, axis=1))
    assert result["psi"] == {"a": round(expected[0], 4), "b": round(expected[1], 4)}
    assert result["psi"]["b"] > result["psi"]["a"]
