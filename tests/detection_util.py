"""A small real detector for tests: FCOS on the tiny backbone, trained for a few hundred steps.

The scene is easy on purpose (bright squares on a dark, noisy background), so a
few hundred AdamW steps on the CPU (about half a minute) give a detector that
finds every square; training chips include squares cut by the chip's edge, so the
detector also reports truncated objects, as real detectors do at tile edges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geovision.models.bundle import load_bundle, save_bundle
from geovision.models.registry import build_model, init_bundle

MEAN, STD = 100.0, 80.0
DARK, BRIGHT = 30.0, 200.0


def paint_squares(img: np.ndarray, boxes: list[tuple[int, int, int, int]], rng: np.random.Generator) -> None:
    """Paint bright squares ``(col0, row0, col1, row1)`` into ``img`` (bands, rows, cols), in place."""
    for x0, y0, x1, y1 in boxes:
        img[:, y0:y1, x0:x1] = BRIGHT + rng.normal(0, 8, size=(img.shape[0], y1 - y0, x1 - x0))


def _chip(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    img = rng.normal(DARK, 8, size=(3, size, size))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 7))):
        s = int(rng.integers(10, 22))
        x, y = int(rng.integers(-s // 2, size - s // 2)), int(rng.integers(-s // 2, size - s // 2))
        x0, y0, x1, y1 = max(0, x), max(0, y), min(size, x + s), min(size, y + s)
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        if any(not (x1 + 2 <= b[0] or b[2] + 2 <= x0 or y1 + 2 <= b[1] or b[3] + 2 <= y0) for b in boxes):
            continue
        boxes.append((x0, y0, x1, y1))
    paint_squares(img, boxes, rng)
    return img.clip(0, 255).astype(np.float32), np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def train_square_detector(path: Path, *, steps: int = 250, chip: int = 128, batch: int = 8, seed: int = 0) -> Path:
    """Train FCOS/tiny on random chips of bright squares and save it as a detection bundle."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    init_bundle(path, task="detection", arch="fcos", encoder="tiny", bands=3, classes=["square"], tile_size=chip,
                ground_resolution_m=0.5,
                normalization={"method": "meanstd", "mean": [MEAN] * 3, "std": [STD] * 3})
    config, state = load_bundle(path)
    model = build_model(config)
    model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    # a short warm-up: a full-size first step can push a side's regression output below
    # zero everywhere, where FCOS's ReLU stops it from ever learning again
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    for _ in range(steps):
        images, targets = [], []
        for _ in range(batch):
            img, boxes = _chip(rng, chip)
            images.append(torch.from_numpy((img - MEAN) / STD))
            targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.ones(len(boxes), dtype=torch.int64)})
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        warmup.step()
    model.eval()
    config = config.model_copy(update={"provenance": {"trained": True, "created_by": "tests/detection_util.py",
                                                      "steps": steps, "scene": "bright squares"}})
    save_bundle(path, config, model.state_dict())
    return path
