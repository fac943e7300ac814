"""A deterministic synthetic scene: the built-in sample that ``geovision demo`` segments.

:func:`render_scene` draws a peri-urban landscape in plain numpy (no per-pixel
Python loops; objects are drawn into their own small windows):

* textured soil and grass (low-frequency noise),
* roads (grey tarmac or orange murram bands) on a slightly rotated street grid,
* fields with crop rows (periodic green/NIR stripes) and stressed patches (lower NIR),
* tree crowns (dark green discs, high NIR) with their shadows,
* buildings: rotated rectangles of 6-25 m with grey metal, red/brown tile, light
  concrete or rusty roofs, most with a shadow on the side away from the sun,
* an irregular nodata strip along one edge (every band 0; real pixels are >= 1).

:func:`make_sample_scene` writes it as a 4-band uint8 GeoTIFF (red, green, blue,
NIR) in UTM, plus ``<stem>.truth.tif`` with the building mask and
``<stem>.trees.gpkg`` with one box per visible tree crown (the detection truth).
The same arguments give byte-identical rasters and the same boxes. Sizes are in
metres and converted with ``pixel_m``, so other resolutions give the same
landscape at a different pixel size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from geovision.errors import ConfigError

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine
    from rasterio.crs import CRS

__all__ = [
    "BAND_NAMES",
    "BUILDING",
    "CROP",
    "GROUND",
    "LAND_COVER",
    "NODATA",
    "ROAD",
    "STRESSED_CROP",
    "TREE",
    "TREES_LAYER",
    "TREE_MIN_VISIBLE",
    "SampleScene",
    "SceneArrays",
    "fields_path",
    "make_sample_scene",
    "read_tree_truth",
    "read_truth",
    "render_scene",
    "tree_truth_path",
    "truth_path",
]

BAND_NAMES = ("red", "green", "blue", "nir")
"""Band order of the sample image."""

TREES_LAYER = "trees"
"""Layer of ``<stem>.trees.gpkg``."""

# Land-cover codes of SceneArrays.land_cover (what was drawn last at each pixel).
GROUND, BUILDING, ROAD, TREE, CROP, STRESSED_CROP = 0, 1, 2, 3, 4, 5
NODATA = 255
LAND_COVER = {GROUND: "ground", BUILDING: "building", ROAD: "road", TREE: "tree", CROP: "crop",
              STRESSED_CROP: "stressed_crop"}
"""Land-cover code -> name (255 is nodata)."""

TREE_MIN_VISIBLE = 0.5
"""A drawn crown is a tree of the truth when at least this share of its pixels inside the
scene is still tree at the end (not under a later crown, a building or nodata)."""

_TREE_MIN_WHOLE = 0.25  # ... and at least this share of its whole disc (drops slivers at the scene edge)

DEFAULT_ORIGIN = (450_000.0, 40_000.0)
"""Upper-left corner (x, y) in metres: near Kampala in UTM zone 36N (EPSG:32636)."""

# Reflectances on the 0-255 scale, (red, green, blue, nir).
_SOIL = (168.0, 122.0, 92.0, 150.0)  # laterite
_GRASS = (92.0, 118.0, 64.0, 200.0)
_TARMAC = (128.0, 128.0, 130.0, 125.0)
_MURRAM = (182.0, 128.0, 92.0, 160.0)
_CROP = (70.0, 125.0, 55.0, 215.0)
_TREE = (48.0, 80.0, 42.0, 200.0)
_ROOFS = {  # name: (colour, probability)
    "metal": ((172.0, 176.0, 182.0, 165.0), 0.4),
    "tile": ((166.0, 82.0, 60.0, 120.0), 0.3),
    "concrete": ((214.0, 208.0, 198.0, 195.0), 0.2),
    "rust": ((122.0, 88.0, 72.0, 105.0), 0.1),
}


@dataclass(frozen=True, slots=True)
class SceneArrays:
    """A rendered scene in memory.

    Attributes:
        image: ``(4, rows, cols)`` uint8 red, green, blue, NIR; 0 only on nodata pixels.
        land_cover: ``(rows, cols)`` uint8 codes (:data:`LAND_COVER`), 255 on nodata.
        buildings: how many buildings were drawn (some may be cut by the nodata strip).
        tree_bbox_xyxy: ``(n, 4)`` float64 boxes of the visible tree crowns, ``(col0, row0,
            col1, row1)`` in pixels of the scene (pixel edges: a crown covering columns
            10..19 has ``col0 = 10``, ``col1 = 20``): the bounds of the pixels where the
            crown is still tree at the end. A crown counts when at least
            :data:`TREE_MIN_VISIBLE` of its pixels inside the scene (and a quarter of its
            whole disc) are still tree; crowns mostly hidden by later crowns, buildings or
            nodata, or mostly outside the scene, are left out.
        tree_crowns: ``(n, 3)`` float64 ``(col, row, radius)`` in pixels of the same crowns
            (centre in pixel-edge coordinates, like the boxes).
        field_id: ``(rows, cols)`` uint16, the field (1..) each pixel belongs to, 0 outside the
            fields: the crop pixels at the end (roads drawn across a field cut it; nodata does not).
    """

    image: np.ndarray
    land_cover: np.ndarray
    buildings: int
    tree_bbox_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    tree_crowns: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    field_id: np.ndarray | None = None
    stress_patch: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """``(rows, cols)`` bool, true where the image has data."""
        return self.land_cover != NODATA

    @property
    def truth(self) -> np.ndarray:
        """``(rows, cols)`` uint8 building mask: 0 background, 1 building, 255 nodata."""
        truth = (self.land_cover == BUILDING).astype(np.uint8)
        truth[~self.valid] = NODATA
        return truth


@dataclass(frozen=True, slots=True)
class SampleScene:
    """A sample scene written to disk by :func:`make_sample_scene`.

    Attributes:
        path: the 4-band GeoTIFF (red, green, blue, NIR; uint8, nodata 0).
        truth_path: ``<stem>.truth.tif``: uint8, 0 background, 1 building, 255 nodata.
        size: edge in pixels.
        pixel_m: pixel size in metres.
        seed: the random seed.
        crs: the CRS, e.g. ``"EPSG:32636"``.
        buildings: buildings drawn.
        trees_path: ``<stem>.trees.gpkg``: layer ``trees``, one box polygon per visible
            tree crown in map coordinates, column ``class_name`` = ``"tree"``.
        trees: boxes in ``trees_path``.
        fields_path: ``<stem>.fields.gpkg``: layer ``fields``, one polygon per field with
            ``field_id``, ``area_m2`` and ``stressed_m2`` (stressed crop drawn in it: the truth
            for the crop-stress workflow).
        fields: polygons in ``fields_path``.
    """

    path: Path
    truth_path: Path
    size: int
    pixel_m: float
    seed: int
    crs: str
    buildings: int
    trees_path: Path | None = None
    trees: int = 0
    fields_path: Path | None = None
    fields: int = 0

    def truth(self) -> np.ndarray:
        """The building truth mask, ``(rows, cols)`` uint8 (0, 1, 255 nodata)."""
        return read_truth(self.path)

    def tree_truth(self) -> gpd.GeoDataFrame:
        """The tree crown boxes, a GeoDataFrame (see :func:`read_tree_truth`)."""
        return read_tree_truth(self.path)


def truth_path(path: str | os.PathLike[str]) -> Path:
    """Where the truth raster of the sample image ``path`` lives: ``<stem>.truth.tif`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".truth.tif")


def read_truth(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the building truth mask of the sample image ``path`` (``(rows, cols)`` uint8, 255 nodata)."""
    import rasterio

    with rasterio.open(truth_path(path)) as ds:
        return ds.read(1)


def tree_truth_path(path: str | os.PathLike[str]) -> Path:
    """Where the tree truth of the sample image ``path`` lives: ``<stem>.trees.gpkg`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".trees.gpkg")


def read_tree_truth(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read the tree crown boxes of the sample image ``path``.

    Returns:
        A GeoDataFrame in the scene's CRS: one box polygon per visible crown, with
        ``class_name`` (``"tree"``) and ``radius_m`` (the drawn crown's radius).
    """
    import pyogrio

    return pyogrio.read_dataframe(tree_truth_path(path), layer=TREES_LAYER)


# --------------------------------------------------------------------------- rendering


def render_scene(size: int = 2048, *, pixel_m: float = 0.3, seed: int = 0) -> SceneArrays:
    """Draw the sample landscape in memory.

    Args:
        size: edge in pixels (square scene), >= 64.
        pixel_m: pixel size in metres (every object size is given in metres).
        seed: random seed; the same arguments give identical arrays.

    Returns:
        The image, its land cover, the number of buildings and the visible tree crowns.

    Raises:
        ConfigError: ``size`` or ``pixel_m`` out of range.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 64:
        raise ConfigError(f"sample size must be an integer of at least 64 pixels, got {size!r}")
    if not (np.isfinite(pixel_m) and 0.05 <= pixel_m <= 5.0):
        raise ConfigError(f"sample pixel_m must be between 0.05 and 5 metres, got {pixel_m!r}")
    return _Painter(size, float(pixel_m), np.random.default_rng(seed)).paint()


class _Painter:
    """Draws one scene; each ``_draw_*`` step paints ``img`` (4, H, W float32) and ``cover``."""

    def __init__(self, size: int, pixel_m: float, rng: np.random.Generator) -> None:
        self.n, self.px, self.rng = size, pixel_m, rng
        self.img = np.empty((4, size, size), dtype=np.float32)
        self.cover = np.full((size, size), GROUND, dtype=np.uint8)
        self.extent_m = size * pixel_m
        # street grid direction (radians) and the direction shadows fall (unit row, col step)
        self.grid_angle = float(rng.uniform(-0.35, 0.35))
        sun = float(rng.uniform(0.0, 2 * np.pi))
        self.shadow_dir = (float(np.sin(sun)), float(np.cos(sun)))
        # which crown drew each pixel last (-1: none) and each crown's (col, row, radius, pixels in scene):
        # only recorded, never drawn, so the image is the same with or without it
        self.crown_owner: np.ndarray | None = None
        self.crowns: list[tuple[float, float, float, int]] = []

    @overload
    def m(self, metres: float) -> float: ...

    @overload
    def m(self, metres: np.ndarray) -> np.ndarray: ...

    def m(self, metres: float | np.ndarray) -> float | np.ndarray:
        """Metres to pixels."""
        return metres / self.px

    def count(self, per_km2: float) -> int:
        """A Poisson count for a density per km²."""
        return int(self.rng.poisson(per_km2 * (self.extent_m / 1000.0) ** 2))

    def paint(self) -> SceneArrays:
        self._draw_ground()
        self._draw_fields()
        road = self._draw_roads()
        self._draw_trees()
        buildings = self._draw_buildings(road)
        self._finish()
        # a field is what is still crop at the end (roads cross fields); imagery nodata does not cut it
        field_id = np.where(np.isin(self.cover, (CROP, STRESSED_CROP)), self.field_id, 0).astype(np.uint16)
        valid = self._nodata_strip()
        image = np.empty(self.img.shape, dtype=np.uint8)
        for b in range(4):
            band = np.rint(self.img[b], out=self.img[b])
            np.clip(band, 1, 255, out=band)
            np.copyto(image[b], band, casting="unsafe")
            image[b][~valid] = 0
        self.cover[~valid] = NODATA
        boxes, crowns = self._visible_crowns()
        return SceneArrays(image=image, land_cover=self.cover, buildings=buildings, tree_bbox_xyxy=boxes,
                           tree_crowns=crowns, field_id=field_id,
                           stress_patch=self.stress_patch & (field_id > 0))

    # --- ground ----------------------------------------------------------------------

    def _draw_ground(self) -> None:
        n, rng = self.n, self.rng
        veg = _smooth_noise(rng, (n, n), self.m(60.0)) + 0.5 * _smooth_noise(rng, (n, n), self.m(12.0))
        veg = 1.0 / (1.0 + np.exp(-1.6 * veg + 0.2))
        texture = 1.0 + 0.05 * _smooth_noise(rng, (n, n), self.m(2.5))
        soil, grass = np.asarray(_SOIL, np.float32), np.asarray(_GRASS, np.float32)
        for b in range(4):
            np.multiply(veg, grass[b] - soil[b], out=self.img[b])
            self.img[b] += soil[b]
            self.img[b] *= texture
        self.veg = veg

    # --- fields ----------------------------------------------------------------------

    def _draw_fields(self) -> None:
        rng = self.rng
        self.field = np.zeros((self.n, self.n), dtype=bool)
        self.field_id = np.zeros((self.n, self.n), dtype=np.uint16)  # last field drawn at each pixel
        self.stress_patch = np.zeros((self.n, self.n), dtype=bool)  # stressed part of that field, rows and gaps
        next_id = 0
        crop = np.asarray(_CROP, np.float32)[:, None]
        soil = np.asarray(_SOIL, np.float32)[:, None] * 0.92
        for _ in range(self.count(10.0)):
            half_l, half_w = self.m(rng.uniform(20.0, 60.0)), self.m(rng.uniform(15.0, 45.0))
            angle = self.grid_angle + float(rng.choice([0.0, np.pi / 2])) + rng.uniform(-0.1, 0.1)
            cy, cx = rng.uniform(0, self.n, size=2)
            period = self.m(rng.uniform(0.75, 1.5))  # crop row spacing
            stress_seed = int(rng.integers(2**31))
            stress_level = rng.uniform(0.3, 0.9)
            shape = _rect(cy, cx, half_l, half_w, angle, self.n)
            if shape is None:
                continue
            (rows, cols), inside, u, _ = shape
            if not inside.any():
                continue
            rows_on = np.clip(1.6 * np.cos(2 * np.pi * u / period) + 0.6, 0.0, 1.0)[inside]
            local = np.random.default_rng(stress_seed)
            stress = _smooth_noise(local, inside.shape, self.m(8.0))[inside] > stress_level
            vigour = np.where(stress, 0.55, 1.0).astype(np.float32)
            patch = soil + rows_on * (crop - soil)
            patch[3] = soil[3, 0] + rows_on * vigour * (crop[3, 0] - soil[3, 0])  # stressed: lower NIR
            patch[0] += rows_on * (1 - vigour) * 60.0  # ... and yellower
            patch[1] += rows_on * (1 - vigour) * 25.0
            window = self.img[:, rows, cols]
            window[:, inside] = patch
            cover = self.cover[rows, cols]
            cover[inside] = np.where(stress & (rows_on > 0.5), STRESSED_CROP, CROP)
            self.field[rows, cols] |= inside
            next_id += 1
            self.field_id[rows, cols][inside] = next_id
            self.stress_patch[rows, cols][inside] = stress

    # --- roads -----------------------------------------------------------------------

    def _draw_roads(self) -> np.ndarray:
        n, rng = self.n, self.rng
        ys = np.arange(n, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(n, dtype=np.float32)[None, :] + 0.5
        road = np.zeros((n, n), dtype=bool)
        for _ in range(max(1, round(self.extent_m / 200.0 + rng.uniform(0, 1.5)))):
            angle = self.grid_angle + float(rng.choice([0.0, np.pi / 2])) + rng.uniform(-0.05, 0.05)
            cy, cx = rng.uniform(0.1 * n, 0.9 * n, size=2)
            half = self.m(rng.uniform(2.5, 5.0))
            colour = np.asarray(_TARMAC if rng.random() < 0.5 else _MURRAM, np.float32) * rng.uniform(0.9, 1.1)
            # distance from the road's centre line, which runs along ``angle`` through (cy, cx)
            dist = np.abs((xs - cx) * np.float32(np.sin(angle)) - (ys - cy) * np.float32(np.cos(angle)))
            on = dist <= half
            for b in range(4):
                np.copyto(self.img[b], colour[b], where=on)
            road |= on
        self.cover[road] = ROAD
        return road

    # --- trees -----------------------------------------------------------------------

    def _draw_trees(self) -> None:
        rng, n = self.rng, self.n
        candidates = self.count(3000.0)
        yx = rng.uniform(0, n, size=(candidates, 2))
        radius = self.m(rng.uniform(1.5, 5.0, size=candidates))
        shade = rng.uniform(0.8, 1.15, size=candidates)
        keep = rng.random(candidates) < self.veg[yx[:, 0].astype(int), yx[:, 1].astype(int)] ** 2
        keep &= ~self.field[yx[:, 0].astype(int), yx[:, 1].astype(int)]
        tree = np.asarray(_TREE, np.float32)[:, None]
        dy, dx = self.shadow_dir
        for (cy, cx), r, s in zip(yx[keep], radius[keep], shade[keep]):
            shadow = _disc(cy + dy * 0.8 * r, cx + dx * 0.8 * r, r, n)
            if shadow is not None:
                (rows, cols), inside, _ = shadow
                window = self.img[:, rows, cols]
                window[:, inside] *= 0.55
            crown = _disc(cy, cx, r, n)
            if crown is None:
                continue
            (rows, cols), inside, d = crown
            # brighter towards the centre, with leafy texture
            light = (1.15 - 0.35 * d[inside] / r) * s * (1 + 0.12 * np.cos(3.1 * d[inside]) ** 2)
            window = self.img[:, rows, cols]
            window[:, inside] = tree * light.astype(np.float32)
            self.cover[rows, cols][inside] = TREE
            self._record_crown(rows, cols, inside, float(cx), float(cy), float(r))

    def _record_crown(self, rows: slice, cols: slice, inside: np.ndarray, cx: float, cy: float, r: float) -> None:
        """Note a drawn crown: it owns its pixels until something is drawn over them."""
        if self.crown_owner is None:
            self.crown_owner = np.full((self.n, self.n), -1, dtype=np.int32)
        self.crown_owner[rows, cols][inside] = len(self.crowns)
        self.crowns.append((cx, cy, r, int(inside.sum())))

    def _visible_crowns(self) -> tuple[np.ndarray, np.ndarray]:
        """The crowns still visible in the finished scene: ``(n, 4)`` boxes xyxy and ``(n, 3)`` (col, row, radius).

        A crown's visible pixels are those it drew last whose final land cover is still
        TREE (a later crown, a building or the nodata strip takes pixels away). It is kept
        when they are at least TREE_MIN_VISIBLE of its pixels inside the scene and
        _TREE_MIN_WHOLE of its whole disc; its box is their bounds.
        """
        empty = np.zeros((0, 4)), np.zeros((0, 3))
        if self.crown_owner is None or not self.crowns:
            return empty
        owner = np.where(self.cover == TREE, self.crown_owner, -1)
        rows, cols = np.nonzero(owner >= 0)
        ids = owner[rows, cols]
        k = len(self.crowns)
        visible = np.bincount(ids, minlength=k)
        crowns = np.asarray(self.crowns, dtype=np.float64)  # col, row, radius, pixels in scene
        whole = np.pi * crowns[:, 2] ** 2
        keep = (visible >= TREE_MIN_VISIBLE * crowns[:, 3]) & (visible >= _TREE_MIN_WHOLE * whole) & (visible > 0)
        if not keep.any():
            return empty
        col0 = np.full(k, self.n, dtype=np.int64)
        row0 = np.full(k, self.n, dtype=np.int64)
        col1 = np.full(k, -1, dtype=np.int64)
        row1 = np.full(k, -1, dtype=np.int64)
        np.minimum.at(col0, ids, cols)
        np.minimum.at(row0, ids, rows)
        np.maximum.at(col1, ids, cols)
        np.maximum.at(row1, ids, rows)
        boxes = np.column_stack([col0, row0, col1 + 1, row1 + 1]).astype(np.float64)[keep]
        return boxes, crowns[keep, :3].copy()

    # --- buildings -------------------------------------------------------------------

    def _draw_buildings(self, road: np.ndarray) -> int:
        """Buildings on a grid of 30 m cells, at most one per cell, none on roads or fields."""
        rng, n = self.rng, self.n
        cell = round(float(self.m(30.0)))
        cells = n // cell
        if cells == 0:
            return 0
        margin = self.m(2.0)
        blocked = road | self.field
        cropped = blocked[: cells * cell, : cells * cell].reshape(cells, cell, cells, cell)
        free = ~cropped.any(axis=(1, 3))
        density = 0.45 + 0.35 * _smooth_noise(rng, (cells, cells), 4.0)
        chosen = free & (rng.random((cells, cells)) < density)
        ci, cj = np.nonzero(chosen)
        k = len(ci)
        length = self.m(rng.uniform(6.0, 25.0, size=k))
        width = self.m(rng.uniform(6.0, 25.0, size=k))
        aligned = rng.random(k) < 0.75
        angle = np.where(aligned, self.grid_angle + rng.uniform(-0.08, 0.08, size=k), rng.uniform(0, np.pi, size=k))
        # fit the rotated rectangle inside its cell (less the margin), then place it at random
        ext_y = np.abs(length / 2 * np.sin(angle)) + np.abs(width / 2 * np.cos(angle))
        ext_x = np.abs(length / 2 * np.cos(angle)) + np.abs(width / 2 * np.sin(angle))
        shrink = np.minimum(1.0, (cell / 2 - margin) / np.maximum(ext_y, ext_x))
        length, width, ext_y, ext_x = length * shrink, width * shrink, ext_y * shrink, ext_x * shrink
        cy = ci * cell + margin + ext_y + rng.random(k) * np.maximum(0, cell - 2 * margin - 2 * ext_y)
        cx = cj * cell + margin + ext_x + rng.random(k) * np.maximum(0, cell - 2 * margin - 2 * ext_x)
        names = list(_ROOFS)
        roof = rng.choice(len(names), size=k, p=[p for _, p in _ROOFS.values()])
        tint = rng.uniform(0.85, 1.12, size=k)
        shadow_len = np.where(rng.random(k) < 0.75, self.m(rng.uniform(1.0, 3.5, size=k)), 0.0)
        gable = rng.random(k) < 0.6

        dy, dx = self.shadow_dir
        for i in range(k):  # all shadows first, so no shadow falls on a neighbour's roof
            if shadow_len[i] > 0:
                shape = _rect(cy[i] + dy * shadow_len[i], cx[i] + dx * shadow_len[i],
                              length[i] / 2, width[i] / 2, angle[i], n)
                if shape is not None:
                    (rows, cols), inside, _, _ = shape
                    window = self.img[:, rows, cols]
                    window[:, inside] *= 0.45
        for i in range(k):
            shape = _rect(cy[i], cx[i], length[i] / 2, width[i] / 2, angle[i], n)
            if shape is None:
                continue
            (rows, cols), inside, u, v = shape
            colour = np.asarray(_ROOFS[names[roof[i]]][0], np.float32)[:, None] * np.float32(tint[i])
            light = np.ones(inside.sum(), dtype=np.float32)
            ui, vi = u[inside], v[inside]
            if gable[i]:  # two roof halves lit differently, ridge along the long side
                light *= np.where(vi > 0, 1.08, 0.9).astype(np.float32)
            match names[roof[i]]:
                case "metal" | "rust":  # corrugations across the slope
                    light *= (1 + 0.05 * np.cos(2 * np.pi * vi / self.m(0.7))).astype(np.float32)
                case "concrete":  # darker parapet
                    edge = np.minimum(length[i] / 2 - np.abs(ui), width[i] / 2 - np.abs(vi))
                    light *= np.where(edge < self.m(0.4), 0.8, 1.0).astype(np.float32)
                case "tile":
                    light *= (1 + 0.04 * np.cos(2 * np.pi * ui / self.m(0.35))).astype(np.float32)
            window = self.img[:, rows, cols]
            window[:, inside] = colour * light
            self.cover[rows, cols][inside] = BUILDING
        return k

    # --- sensor ----------------------------------------------------------------------

    def _finish(self) -> None:
        """A slight optical blur (3-tap, about a 0.5 px Gaussian) and sensor noise (about ±2.6)."""
        side = np.float32(0.107)
        for b in range(4):
            band = self.img[b]
            for axis_band in (band, band.T):  # rows, then columns, in place
                pair = axis_band[:, :-2] + axis_band[:, 2:]
                axis_band[:, 1:-1] *= 1 - 2 * side
                pair *= side
                axis_band[:, 1:-1] += pair
            band += self.rng.integers(-4, 5, size=band.shape, dtype=np.int8)

    def _nodata_strip(self) -> np.ndarray:
        """An irregular strip along one edge. Returns ``(rows, cols)`` bool, true where valid."""
        n, rng = self.n, self.rng
        edge = int(rng.integers(4))
        wobble = _smooth_noise(rng, (1, n), max(8.0, n / 12))[0]
        depth = n * (0.045 + 0.02 * np.clip(wobble, -2, 2))  # pixels from the edge, per position along it
        pos = np.arange(n, dtype=np.float32) + 0.5
        invalid = pos[None, :] < depth[:, None]  # rows: position along the edge, cols: distance into the scene
        match edge:
            case 0:  # left
                pass
            case 1:  # right
                invalid = invalid[:, ::-1]
            case 2:  # top
                invalid = invalid.T
            case _:  # bottom
                invalid = invalid.T[::-1, :]
        return ~invalid


def _interp_matrix(n: int, scale_px: float, grid: int) -> np.ndarray:
    """``(n, grid)`` Gaussian interpolation weights from ``grid`` coarse nodes ``scale_px`` pixels apart.

    Rows are scaled to unit L2 norm, so ``A @ noise`` has unit variance everywhere.
    """
    t = (np.arange(n, dtype=np.float64) + 0.5) / scale_px + 1.0
    w = np.exp(-0.5 * ((t[:, None] - np.arange(grid)[None, :]) / 0.6) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """``shape`` float32 noise with unit variance and features about ``scale_px`` pixels across.

    A coarse grid of normal noise is interpolated with Gaussian weights: two small
    matrix products, so 4096² costs a fraction of a second.
    """
    h, w = shape
    scale_px = max(float(scale_px), 1.0)
    gh, gw = int(np.ceil(h / scale_px)) + 3, int(np.ceil(w / scale_px)) + 3
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    return _interp_matrix(h, scale_px, gh) @ coarse @ _interp_matrix(w, scale_px, gw).T


def _rect(cy: float, cx: float, half_l: float, half_w: float, angle: float,
          n: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
    """A rotated rectangle in its bounding window of an ``n``×``n`` raster.

    Returns ``((rows, cols) slices, inside (h, w) bool, u, v)`` with ``u`` along and
    ``v`` across the rectangle's long axis (pixels from its centre), or ``None``
    when the window lies outside the raster.
    """
    r = float(np.hypot(half_l, half_w)) + 1
    r0, r1 = max(0, int(cy - r)), min(n, int(np.ceil(cy + r)))
    c0, c1 = max(0, int(cx - r)), min(n, int(np.ceil(cx + r)))
    if r0 >= r1 or c0 >= c1:
        return None
    dy = np.arange(r0, r1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    dx = np.arange(c0, c1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    inside = (np.abs(u) <= half_l) & (np.abs(v) <= half_w)
    return (slice(r0, r1), slice(c0, c1)), inside, u, v


def _disc(cy: float, cx: float, radius: float, n: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """A disc in its bounding window: ``((rows, cols), inside, distance)`` or ``None``."""
    r0, r1 = max(0, int(cy - radius - 1)), min(n, int(np.ceil(cy + radius + 1)))
    c0, c1 = max(0, int(cx - radius - 1)), min(n, int(np.ceil(cx + radius + 1)))
    if r0 >= r1 or c0 >= c1:
        return None
    dy = np.arange(r0, r1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    dx = np.arange(c0, c1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    d = np.sqrt(dy * dy + dx * dx)
    return (slice(r0, r1), slice(c0, c1)), d <= radius, d


# --------------------------------------------------------------------------- writing


def make_sample_scene(
    path: str | os.PathLike[str],
    *,
    size: int = 2048,
    pixel_m: float = 0.3,
    seed: int = 0,
    crs: str = "EPSG:32636",
    origin: tuple[float, float] = DEFAULT_ORIGIN,
) -> SampleScene:
    """Write the sample scene and its building truth as GeoTIFFs, and its tree truth as boxes.

    The image is 4 bands of uint8 (red, green, blue, NIR; band descriptions set),
    tiled 256×256, deflate-compressed, nodata 0. ``<stem>.truth.tif`` beside it is
    uint8: 0 background, 1 building, 255 nodata. Same arguments, same bytes.
    ``<stem>.trees.gpkg`` holds layer ``trees``: one box polygon per visible tree crown
    (:attr:`SceneArrays.tree_bbox_xyxy`) in map coordinates, with ``class_name``
    ``"tree"`` and ``radius_m``; same arguments, same boxes (the GeoPackage's bytes
    may differ: it holds timestamps).

    Args:
        path: the GeoTIFF to write (replaced if it exists); its folder must exist.
        size: edge in pixels.
        pixel_m: pixel size in metres.
        seed: random seed.
        crs: a projected CRS in metres; the default is UTM 36N (Kampala).
        origin: upper-left corner ``(x, y)`` in ``crs`` metres.

    Returns:
        Where the files are, and what was drawn.

    Raises:
        ConfigError: a bad size, pixel size or CRS, or a folder that does not exist.
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    path = Path(path)
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise ConfigError(f"sample crs {crs!r} is not a CRS ({exc}); use e.g. 'EPSG:32636'") from None
    if not crs_obj.is_projected or (crs_obj.linear_units or "").lower() not in ("metre", "meter", "m"):
        raise ConfigError(
            f"sample crs {crs!r} must be projected in metres (the scene is drawn in metres); "
            "use a UTM zone such as 'EPSG:32636'"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")

    scene = render_scene(size, pixel_m=pixel_m, seed=seed)
    transform = Affine(pixel_m, 0.0, origin[0], 0.0, -pixel_m, origin[1])
    common = {"driver": "GTiff", "height": size, "width": size, "crs": crs_obj, "transform": transform,
              "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    tags = {"geovision_sample_seed": str(seed), "geovision_sample_pixel_m": repr(pixel_m)}
    # RGB photometric with an unspecified 4th sample: NIR is data, not alpha
    with rasterio.open(path, "w", count=4, dtype="uint8", nodata=0, interleave="pixel", photometric="RGB",
                       alpha="UNSPECIFIED", **common) as ds:
        ds.write(scene.image)
        for i, name in enumerate(BAND_NAMES, start=1):
            ds.set_band_description(i, name)
        ds.update_tags(**tags)
    tpath = truth_path(path)
    with rasterio.open(tpath, "w", count=1, dtype="uint8", nodata=NODATA, **common) as ds:
        ds.write(scene.truth, 1)
        ds.set_band_description(1, "building")
        ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (230, 25, 75, 255)})
        ds.update_tags(**tags)
    trees = _write_trees(tree_truth_path(path), scene, transform, crs_obj, pixel_m)
    fields, n_fields = _write_fields(fields_path(path), scene, transform, crs_obj, pixel_m)
    return SampleScene(path=path, truth_path=tpath, size=size, pixel_m=float(pixel_m), seed=seed,
                       crs=crs_obj.to_string(), buildings=scene.buildings, trees_path=trees,
                       trees=len(scene.tree_bbox_xyxy), fields_path=fields, fields=n_fields)


def fields_path(path: str | os.PathLike[str]) -> Path:
    """Where the field boundaries of the sample image ``path`` live: ``<stem>.fields.gpkg`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".fields.gpkg")


def _write_fields(path: Path, scene: SceneArrays, transform: Affine, crs: CRS, pixel_m: float) -> tuple[Path, int]:
    """Write one polygon per field (parts under 200 m², slivers between roads, dropped) to ``path``."""
    import geopandas as gpd
    import pyogrio
    import shapely
    from rasterio.features import shapes

    ids = scene.field_id
    assert ids is not None  # the painter always draws fields
    parts: dict[int, list] = {}
    for geom, value in shapes(ids, mask=ids > 0, transform=transform, connectivity=4):
        poly = shapely.geometry.shape(geom)
        if poly.area >= 200.0:
            parts.setdefault(int(value), []).append(poly)
    keys = sorted(parts)
    stressed = np.bincount(ids[scene.stress_patch].ravel(), minlength=int(ids.max()) + 1)
    geoms = [shapely.union_all(parts[k]) for k in keys]
    frame = gpd.GeoDataFrame(
        {"field_id": np.arange(1, len(keys) + 1), "crop": np.full(len(keys), "maize", dtype=object),
         "area_m2": np.round(shapely.area(geoms), 2),
         "stressed_m2": np.round(stressed[keys] * pixel_m**2, 2) if keys else np.zeros(0)},
        geometry=geoms, crs=crs.to_wkt(),
    )
    path.unlink(missing_ok=True)
    pyogrio.write_dataframe(frame, path, layer="fields", driver="GPKG", promote_to_multi=True)
    return path, len(frame)


def _write_trees(path: Path, scene: SceneArrays, transform: Affine, crs: CRS, pixel_m: float) -> Path:
    """Write the visible crowns' boxes in map coordinates to ``path`` (replaced), layer :data:`TREES_LAYER`."""
    import geopandas as gpd
    import pyogrio
    import shapely

    boxes = scene.tree_bbox_xyxy
    t = transform
    x0, y0 = t.a * boxes[:, 0] + t.b * boxes[:, 1] + t.c, t.d * boxes[:, 0] + t.e * boxes[:, 1] + t.f
    x1, y1 = t.a * boxes[:, 2] + t.b * boxes[:, 3] + t.c, t.d * boxes[:, 2] + t.e * boxes[:, 3] + t.f
    geoms = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))
    frame = gpd.GeoDataFrame(
        {"class_name": np.full(len(boxes), "tree", dtype=object),
         "radius_m": np.round(scene.tree_crowns[:, 2] * pixel_m, 3)},
        geometry=np.asarray(geoms, dtype=object).reshape(-1), crs=crs.to_wkt(),
    )
    path.unlink(missing_ok=True)
    pyogrio.write_dataframe(frame, path, layer=TREES_LAYER, driver="GPKG")
    return path
