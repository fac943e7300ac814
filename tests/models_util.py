"""Small real models for tests: a hand-set shallow net whose receptive field is 5 px."""

from __future__ import annotations

from pathlib import Path

import torch

from geovision.models.bundle import load_bundle, save_bundle
from geovision.models.registry import init_bundle


def bright_object_bundle(path: Path, *, bands: int = 3, tile: int = 256, classes=("background", "object"),
                         resolution: float | None = None) -> Path:
    """A ``shallow`` bundle (depth 2, width 2) set by hand to call locally bright pixels class 1.

    Layer 1 averages all bands over 3x3 (after normalising 100 +- 50) into +m and -m,
    layer 2 passes the centre tap on, the head turns ``m`` into a class-1 logit of
    ``8 * m``. Receptive field 5 px, so tiles with a 64 px overlap see exactly the
    context the whole image gives every pixel they are trusted with.
    """
    init_bundle(path, arch="shallow", encoder="none", bands=bands, classes=list(classes),
                arch_params={"depth": 2, "width": 2}, tile_size=tile, ground_resolution_m=resolution,
                normalization={"method": "meanstd", "mean": [100.0] * bands, "std": [50.0] * bands})
    config, state = load_bundle(path)
    state = {k: torch.zeros_like(v) for k, v in state.items()}
    w1 = state["features.0.weight"]  # (2, bands, 3, 3)
    w1[0] = 1.0 / (9 * bands)
    w1[1] = -1.0 / (9 * bands)
    w2 = state["features.2.weight"]  # (2, 2, 3, 3)
    w2[0, 0, 1, 1], w2[0, 1, 1, 1] = 1.0, -1.0
    w2[1, 0, 1, 1], w2[1, 1, 1, 1] = -1.0, 1.0
    head = state["head.weight"]  # (classes, 2, 1, 1)
    head[1, 0], head[1, 1] = 8.0, -8.0
    save_bundle(path, config, state)
    return path
