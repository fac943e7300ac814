"""Training chips: planned from the rasters, the labels and the spatial split; read on the fly.

No chip is ever exported: :func:`plan_chips` lays candidate windows over every
raster (full-size edge windows, as the tiler does), keeps those that lie inside
one split block's interior, are mostly valid and (with an AOI) mostly inside it,
and notes which classes each one holds. :class:`ChipDataset` then reads a chip's
window when it is asked for, burns its labels (:mod:`geovision.training.labels`),
normalises it with the bundle's statistics and augments it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
import torch

from geovision.io.geo import window_bounds
from geovision.tiling.grid import TileGrid
from geovision.tiling.reader import RasterInfo, gdal_env, read_tiles
from geovision.training.labels import IGNORE, LabelSet, boxes_in_window, rasterize_window
from geovision.training.split import SpatialSplit
from geovision.types import Tile, Window

__all__ = ["Chip", "ChipDataset", "band_statistics", "epoch_sample", "plan_chips"]

#: chips are planned on a decimated validity mask: one mask pixel per this many raster pixels (per side)
MASK_DECIMATION = 8


@dataclass(frozen=True, slots=True)
class Chip:
    """One training window.

    Attributes:
        raster: index of the raster in the list given to :func:`plan_chips`.
        window: the chip's pixels in that raster.
        split: ``"train"``, ``"val"`` or ``"test"``.
        classes: class ids of the labels touching the chip (empty: a negative chip).
    """

    raster: int
    window: Window
    split: str
    classes: tuple[int, ...]

    @property
    def positive(self) -> bool:
        return bool(self.classes)


def _valid_fraction_map(info: RasterInfo) -> np.ndarray:
    """The raster's validity (all bands read valid) at 1/MASK_DECIMATION resolution, as floats."""
    shape = (max(1, math.ceil(info.height / MASK_DECIMATION)), max(1, math.ceil(info.width / MASK_DECIMATION)))
    with gdal_env(), rasterio.open(info.path) as ds:
        masks = ds.read_masks(list(info.bands), out_shape=(len(info.bands), *shape),
                              resampling=rasterio.enums.Resampling.average)
    return masks.min(axis=0).astype(np.float32) / 255.0


def plan_chips(
    infos: Sequence[RasterInfo],
    labels: LabelSet,
    split: SpatialSplit,
    *,
    chip: int,
    stride: int | None = None,
    max_nodata: float = 0.5,
    min_aoi: float = 0.5,
) -> list[Chip]:
    """Candidate chips over every raster that fall cleanly into one split block.

    Args:
        infos: the training rasters (one CRS: the labels' and the split's).
        labels: the labels (and AOI) in that CRS.
        split: the spatial split.
        chip: chip edge in pixels.
        stride: step between candidate chips (default ``chip // 2``).
        max_nodata: chips with a larger nodata fraction are skipped.
        min_aoi: with an AOI, chips with a smaller fraction inside it are skipped.

    Returns:
        The chips, raster by raster in row-major order.
    """
    stride = stride or max(1, chip // 2)
    tree = shapely.STRtree(labels.frame.geometry.values)
    class_ids = labels.frame["class_id"].to_numpy()
    chips: list[Chip] = []
    for r, info in enumerate(infos):
        transform = info.affine
        valid_map = _valid_fraction_map(info)
        grid = TileGrid(info.height, info.width, chip, max(0, chip - stride))
        for tile in grid:
            w = tile.window
            bounds = window_bounds(transform, w)
            which = split.split_of(bounds)
            if which is None:
                continue
            sub = valid_map[w.row_off // MASK_DECIMATION: math.ceil(w.row_end / MASK_DECIMATION),
                            w.col_off // MASK_DECIMATION: math.ceil(w.col_end / MASK_DECIMATION)]
            if sub.size == 0 or 1.0 - float(sub.mean()) > max_nodata:
                continue
            box = shapely.box(*bounds)
            if labels.aoi is not None and shapely.area(shapely.intersection(box, labels.aoi)) < min_aoi * box.area:
                continue
            hits = tree.query(box, predicate="intersects")
            classes = tuple(sorted({int(c) for c in class_ids[hits]}))
            chips.append(Chip(r, w, which, classes))
    return chips


def epoch_sample(chips: Sequence[Chip], *, epoch: int, seed: int, positive_fraction: float | None = 0.7,
                 class_balanced: bool = False) -> list[int]:
    """Indices of the training chips for one epoch, shuffled.

    Every positive chip is used; negative chips are drawn so that positives make up
    ``positive_fraction`` of the epoch (all negatives when there are too few; every chip
    when ``positive_fraction`` is ``None``). With ``class_balanced``, positive chips are
    drawn with replacement, weighted by the inverse frequency of the rarest class they
    hold, so rare classes are seen about as often as common ones. The draw depends only on
    ``(seed, epoch)``, so a resumed run sees the same epochs as an uninterrupted one.
    """
    rng = np.random.default_rng([seed, epoch])
    pos = [i for i, c in enumerate(chips) if c.positive]
    neg = [i for i, c in enumerate(chips) if not c.positive]
    if class_balanced and pos:
        freq: dict[int, int] = {}
        for i in pos:
            for c in chips[i].classes:
                freq[c] = freq.get(c, 0) + 1
        weights = np.array([max(1.0 / freq[c] for c in chips[i].classes) for i in pos])
        pos = rng.choice(pos, size=len(pos), replace=True, p=weights / weights.sum()).tolist()
    if positive_fraction is None or not pos:
        chosen = pos + neg
    else:
        n_neg = min(len(neg), round(len(pos) * (1 - positive_fraction) / positive_fraction))
        chosen = pos + rng.choice(neg, size=n_neg, replace=False).tolist() if n_neg else list(pos)
    order = rng.permutation(len(chosen))
    return [int(chosen[k]) for k in order]


def band_statistics(infos: Sequence[RasterInfo], chips: Sequence[Chip], *, max_chips: int = 64,
                    seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over the valid pixels of up to ``max_chips`` training chips."""
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(chips))[:max_chips]
    n = len(infos[0].bands)
    total = np.zeros(n)
    total_sq = np.zeros(n)
    count = 0
    for k in picks:
        c = chips[int(k)]
        read, _ = read_tiles(infos[c.raster], [Tile((0, 0), c.window)], max(c.window.height, c.window.width))
        for t in read:
            values = t.data[:, t.valid].astype(np.float64)
            total += values.sum(axis=1)
            total_sq += (values**2).sum(axis=1)
            count += values.shape[1]
    if count == 0:
        return [0.0] * n, [1.0] * n
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


class ChipDataset(torch.utils.data.Dataset):
    """Reads, labels, normalises and augments chips on the fly.

    ``dataset[i]`` gives ``(image (B, H, W) float32 tensor, target)``: for
    segmentation ``target`` is the ``(H, W)`` int64 mask (``IGNORE`` where not
    scored: nodata, outside the AOI), for detection a dict with ``boxes`` ``(n, 4)``
    float32 (xyxy, chip pixels) and ``labels`` ``(n,)`` int64.

    Args:
        infos: the rasters.
        chips: the chips this dataset serves.
        labels: the labels.
        task: ``"segmentation"`` or ``"detection"``.
        normalize: raw ``(N, B, H, W)`` + validity -> float32 model input (a
            :class:`~geovision.models.predictor.Normalizer`).
        augment: ``(image, mask, boxes, labels) -> same``, or ``None``.
        seed: base seed; each item's augmentation is seeded from ``(seed, epoch, index)``.
    """

    def __init__(self, infos: Sequence[RasterInfo], chips: Sequence[Chip], labels: LabelSet, task: str,
                 normalize: Callable[..., np.ndarray], augment: Callable | None = None, seed: int = 0) -> None:
        self.infos, self.chips, self.labels, self.task = list(infos), list(chips), labels, task
        self.normalize, self.augment, self.seed = normalize, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.chips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Chip ``index`` before augmentation.

        Returns:
            ``(image (B, H, W) float32, mask or None, boxes or None, labels or None)``.
        """
        c = self.chips[index]
        info = self.infos[c.raster]
        size = max(c.window.height, c.window.width)
        read, _ = read_tiles(info, [Tile((0, 0), c.window)], size)
        if read:
            data, valid = read[0].data, read[0].valid
        else:  # entirely nodata (planning works on a decimated mask)
            data = np.zeros((len(info.bands), size, size), dtype=info.dtype)
            valid = np.zeros((size, size), dtype=bool)
        image = self.normalize(data[None], valid[None])[0]
        if self.task == "segmentation":
            mask = np.full((size, size), IGNORE, dtype=np.uint8)
            mask[: c.window.height, : c.window.width] = rasterize_window(self.labels, info.affine, c.window)
            mask[~valid] = IGNORE
            return image, mask, None, None
        boxes, box_labels = boxes_in_window(self.labels, info.affine, c.window)
        return image, None, boxes.astype(np.float32), box_labels.astype(np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        image, mask, boxes, box_labels = self.read(index)
        if self.augment is not None:
            seed = int(np.random.default_rng([self.seed, self.epoch, index]).integers(2**31 - 1))
            if hasattr(self.augment, "reseed"):
                self.augment.reseed(seed)
            image, mask, boxes, box_labels = self.augment(image, mask, boxes, box_labels)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if self.task == "segmentation":
            return x, torch.from_numpy(np.ascontiguousarray(mask)).long()
        return x, {"boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)).reshape(-1, 4),
                   "labels": torch.from_numpy(np.ascontiguousarray(box_labels, dtype=np.int64))}
