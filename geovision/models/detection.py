"""Detection predictor: raw tile batches in, boxes, scores and labels per tile out.

Device, precision, weights and normalisation come from
:class:`~geovision.models.predictor.TilePredictor`; the models are torchvision's
detectors as :mod:`geovision.models.detectors` builds them. Class 0 of a
detection bundle is the background (torchvision's convention); labels 1..C-1 are
the object classes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from geovision.models.predictor import TilePredictor

__all__ = ["DetectionPredictor"]


class DetectionPredictor(TilePredictor):
    """Runs a detection bundle on batches of tiles.

    Construction as :class:`~geovision.models.predictor.TilePredictor`.
    :meth:`predict` returns, per tile, the boxes in the tile's pixel coordinates.
    """

    task: ClassVar[str] = "detection"

    def predict(
        self, tiles: np.ndarray, valid: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Boxes, scores and labels for each tile of a batch.

        Boxes whose centre falls on an invalid pixel (``valid`` false) are dropped:
        nodata never receives an object. Boxes labelled background (0) are dropped.

        Args:
            tiles: ``(N, B, H, W)`` raw band values; ``B == in_channels``.
            valid: ``(N, H, W)`` bool validity mask; ``None``: all valid.

        Returns:
            Per tile ``(boxes, scores, labels)``: ``(n, 4)`` float64 ``xyxy`` in pixels
            of the tile (column, row), ``(n,)`` float64 scores, ``(n,)`` int64 class ids
            (1..C-1; 0 is the background).
        """
        x_np = self.normalize(tiles, valid)
        if len(x_np) == 0:
            return []
        with torch.inference_mode():
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                outputs = self.model(list(x))
        results = []
        for i, out in enumerate(outputs):
            boxes = out["boxes"].float().cpu().numpy().astype(np.float64)
            scores = out["scores"].float().cpu().numpy().astype(np.float64)
            labels = out["labels"].cpu().numpy().astype(np.int64)
            # RetinaNet and FCOS score every class, the background's too: never an object
            keep = labels > 0
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if valid is not None and len(boxes):
                h, w = valid.shape[1:]
                cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(np.int64), 0, w - 1)
                cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(np.int64), 0, h - 1)
                keep = np.asarray(valid[i], dtype=bool)[cy, cx]
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            results.append((boxes, scores, labels))
        return results
