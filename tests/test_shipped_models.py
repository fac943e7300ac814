"""The bundles shipped in ``geovision/data`` work on held-out sample scenes (never trained on).

Floors sit well below the figures in ``docs/shipped_models.md``, so they do not
flake, yet far above what a broken, untrained or wrongly normalised model scores.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from geovision.io.drift import PSI_SHIFT, psi, sample_raster
from geovision.models.bundle import read_config
from geovision.sample import BAND_NAMES, make_sample_scene
from geovision.workflows.evaluate import evaluate
from geovision.workflows.predict import predict

HELDOUT_SEED = 100


def _shipped(name: str) -> Path:
    path = Path(str(resources.files("geovision").joinpath("data", name)))
    assert path.is_file(), f"{name} is not in geovision/data; build it with the scripts in scripts/"
    return path


def test_tree_bundle_config() -> None:
    path = _shipped("sample_trees.safetensors")
    config = read_config(path)
    assert path.stat().st_size <= 10_000_000
    assert config.task == "detection" and config.class_names == ["background", "tree"]
    assert config.bands == [1, 2, 3, 4] and config.band_names == list(BAND_NAMES)
    assert config.ground_resolution_m == pytest.approx(0.3)
    assert config.drift_reference is not None and len(config.drift_reference["edges"]) == 4
    seeds = config.provenance["train_seeds"]
    assert HELDOUT_SEED not in seeds and 0 not in seeds
    assert HELDOUT_SEED in config.provenance["heldout"]["seeds"]


def test_tree_bundle_finds_trees_on_a_heldout_scene(tmp_path: Path) -> None:
    bundle = _shipped("sample_trees.safetensors")
    scene = make_sample_scene(tmp_path / "scene.tif", size=512, seed=HELDOUT_SEED)
    assert scene.trees >= 15
    found = predict(scene.path, bundle, tmp_path / "trees.gpkg", progress=False)
    assert found.summary["inputs"][0]["drift"]["shifted"] == []  # the scene looks like the training imagery
    metrics = evaluate(found.vector_path, scene.trees_path, tmp_path / "eval").metrics
    overall = metrics["objects"]["overall"]
    assert overall["recall"] >= 0.7, overall
    assert overall["precision"] >= 0.7, overall
    assert metrics["average_precision"]["ap50"] >= 0.6, metrics["average_precision"]["ap50"]


def test_building_bundle_has_a_drift_reference(tmp_path: Path) -> None:
    config = read_config(_shipped("sample_buildings.safetensors"))
    ref = config.drift_reference
    assert ref is not None and len(ref["edges"]) == len(config.bands) == 3 and ref["pixels"] > 10_000
    # the demo scene at its default size (held out); a small crop of one landscape may differ more
    # (seed 0 at 512 px: PSI 0.28 in blue, a real difference in land-cover mix)
    scene = make_sample_scene(tmp_path / "scene.tif", size=2048, seed=0)
    scores = psi(ref, sample_raster(str(scene.path), config.bands))
    assert max(scores) < PSI_SHIFT, scores
    shuffled = psi(ref, sample_raster(str(scene.path), [3, 1, 2]))  # the wrong band order is noticed
    assert max(shuffled) > PSI_SHIFT, shuffled
    assert np.all(np.isfinite(scores))
