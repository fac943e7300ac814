"""Class COGs written block by block (``io.cog.StreamingCOG``) against the COGs GDAL's driver makes."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geovision.io.cog import (
    BLOCK_SIZE,
    StreamingCOG,
    overview_factors,
    overview_size,
    read_ifds,
    tag_values,
)
from geovision.io.raster import BlockWriter, to_cog
from geovision.tiling.grid import BlockGrid
from geovision.tiling.reader import RasterInfo
from geovision.types import Window

COLOURS = {0: (0, 0, 0, 255), 1: (200, 30, 40, 255), 2: (10, 160, 60, 255)}


def _info(height: int, width: int, epsg: int = 32636, transform: Affine | None = None) -> RasterInfo:
    transform = transform or Affine(0.5, 0, 450_000, 0, -0.5, 40_000)
    return RasterInfo(path="in.tif", height=height, width=width, count=1, dtype="uint8",
                      crs_wkt=rasterio.crs.CRS.from_epsg(epsg).to_wkt(), transform=tuple(transform)[:6],
                      bands=(1,), nodata=None)


def _classes(height: int, width: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, size=(height, width), dtype=np.uint8)
    classes[:, : width // 5] = np.repeat(rng.integers(0, 3, size=(height, 1), dtype=np.uint8), width // 5, axis=1)
    classes[-min(height, 200):, -min(width, 200):] = 255  # a nodata corner
    return classes


def _gdal_cog(tmp: Path, classes: np.ndarray, info: RasterInfo | None = None) -> Path:
    """The COG GDAL's driver makes of ``classes`` (nearest-neighbour overviews)."""
    scratch, out = tmp / "gdal.scratch.tif", tmp / "gdal.tif"
    writer = BlockWriter(scratch, info or _info(*classes.shape), count=1, dtype="uint8", nodata=255,
                         descriptions=["class"], colormap=COLOURS)
    writer.write(Window(0, 0, *classes.shape), classes)
    writer.close()
    to_cog(scratch, out, resampling="NEAREST")
    return out


def _streamed_cog(tmp: Path, classes: np.ndarray, *, seed: int = 1, bigtiff: bool | None = None,
                  info: RasterInfo | None = None) -> Path:
    """``classes`` through :class:`StreamingCOG`, its blocks in a shuffled order (as the stitcher finishes them)."""
    out, scratch = tmp / "ours.tif", tmp / "ours.scratch.tiles"
    writer = StreamingCOG(out, scratch, info or _info(*classes.shape), nodata=255, colormap=COLOURS,
                          description="class", bigtiff=bigtiff)
    grid = BlockGrid(*classes.shape, BLOCK_SIZE)
    order = [(i, j) for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    random.Random(seed).shuffle(order)
    for index in order:
        w = grid.window(index)
        writer.write(w, classes[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width])
    assert scratch.exists() and not out.exists()
    writer.close()
    assert not scratch.exists()
    return out


def _level_sizes(path: Path) -> list[tuple[int, int]]:
    return [(tag_values(t[257])[0], tag_values(t[256])[0]) for _, t in read_ifds(path.read_bytes())]


@pytest.mark.parametrize(("size", "factors"), [
    ((512, 300), []), ((513, 10), [2]), ((1024, 1024), [2]), ((1025, 1025), [2]), ((1100, 1700), [2, 4]),
    ((1101, 1703), [2, 4]), ((2, 70001), [2, 4, 8, 16, 32, 64, 128, 256]),
])
def test_overview_levels_are_gdals(tmp_path: Path, size: tuple[int, int], factors: list[int]) -> None:
    assert overview_factors(*size) == factors
    gdal = _gdal_cog(tmp_path, np.zeros(size, np.uint8))
    assert _level_sizes(gdal) == [overview_size(*size, f) for f in (1, *factors)]


def test_overview_factors_of_large_rasters() -> None:
    assert overview_factors(4096, 4096) == [2, 4, 8]
    assert overview_factors(16384, 9000) == [2, 4, 8, 16, 32]
    assert overview_size(3, 300_001, 1024) == (1, 292)


@pytest.mark.parametrize("size", [(1100, 1700), (1101, 1703), (700, 5000), (300, 200)])
def test_streamed_cog_equals_gdals(tmp_path: Path, size: tuple[int, int]) -> None:
    classes = _classes(*size)
    ours, gdal = _streamed_cog(tmp_path, classes), _gdal_cog(tmp_path, classes)
    assert _level_sizes(ours) == _level_sizes(gdal)
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert a.tags(ns="IMAGE_STRUCTURE") == b.tags(ns="IMAGE_STRUCTURE")  # LAYOUT=COG, DEFLATE
        assert a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert a.profile == b.profile  # size, dtype, nodata, CRS, transform, tiling, compression
        assert a.overviews(1) == b.overviews(1)
        assert a.colormap(1) == b.colormap(1) and a.descriptions == b.descriptions == ("class",)
        assert a.colorinterp == b.colorinterp and a.tags() == b.tags()
        np.testing.assert_array_equal(a.read(1), classes)
    for level, f in enumerate(overview_factors(*size)):
        with rasterio.open(ours, overview_level=level) as a, rasterio.open(gdal, overview_level=level) as b:
            ov = a.read(1)
            assert ov.shape == b.shape
            # every f-th pixel; GDAL's NEAREST takes the same ones where f divides the size
            np.testing.assert_array_equal(ov, classes[::f, ::f][:ov.shape[0], :ov.shape[1]])
            if size[0] % f == 0 and size[1] % f == 0:
                np.testing.assert_array_equal(ov, b.read(1))


@pytest.mark.parametrize(("epsg", "transform"), [
    (4326, Affine(1e-5, 0, 32.58, 0, -1e-5, 0.35)),  # geographic
    (3857, Affine(0.075, 0, 3_626_000, 0, -0.075, 36_900)),  # Web Mercator
    (32631, Affine(0.3, 0.05, 500_000, 0.05, -0.3, 5_650_000)),  # rotated: a full transformation matrix
])
def test_georeferencing_is_gdals(tmp_path: Path, epsg: int, transform: Affine) -> None:
    classes = _classes(600, 700)
    info = _info(600, 700, epsg, transform)
    ours, gdal = _streamed_cog(tmp_path, classes, info=info), _gdal_cog(tmp_path, classes, info)
    with rasterio.open(ours) as a, rasterio.open(gdal) as b:
        assert a.crs == b.crs and a.crs.to_epsg() == epsg
        assert a.transform == b.transform == transform
        assert a.profile == b.profile and a.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(a.read(1), classes)


def test_every_block_order_gives_the_same_file(tmp_path: Path) -> None:
    classes = _classes(1300, 1600, seed=3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _streamed_cog(tmp_path / "a", classes, seed=1).read_bytes()
    assert _streamed_cog(tmp_path / "b", classes, seed=2).read_bytes() == first


def _chain(data: bytes, big: bool) -> list[int]:
    """Offsets of the IFDs, in chain order."""
    offsets, at = [], struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    while at:
        offsets.append(at)
        n = struct.unpack_from("<Q" if big else "<H", data, at)[0]
        at = struct.unpack_from("<Q" if big else "<I", data, at + (8 if big else 2) + n * (20 if big else 12))[0]
    return offsets


@pytest.mark.parametrize("bigtiff", [None, True])
def test_streamed_cog_layout(tmp_path: Path, bigtiff: bool | None) -> None:
    """What GDAL's COG validator checks: IFDs first, smallest overview's tiles first, each level
    row-major, every tile with its size before it and its last 4 bytes after it."""
    classes = _classes(2100, 1300)
    path = _streamed_cog(tmp_path, classes, bigtiff=bigtiff)
    data = path.read_bytes()
    big = struct.unpack_from("<H", data, 2)[0] == 43
    assert big == bool(bigtiff)
    assert data[16 if big else 8:].startswith(b"GDAL_STRUCTURAL_METADATA_SIZE=")
    ifds = read_ifds(data)
    assert [at for at, _ in ifds] == _chain(data, big) == sorted(_chain(data, big))
    levels = [(np.array(tag_values(t[324])), np.array(tag_values(t[325]))) for _, t in ifds]
    first_tile = min(int(offsets.min()) for offsets, _ in levels)
    assert max(at for at, _ in ifds) < first_tile
    assert all(tag_values(t[254]) == (1,) for _, t in ifds[1:]) and 254 not in ifds[0][1]
    previous_end = first_tile - 4
    for offsets, counts in reversed(levels):  # smallest overview first
        assert offsets[0] == previous_end + 4
        assert (np.diff(offsets) == counts[:-1] + 8).all()  # row-major, back to back
        for off, count in zip(offsets.tolist(), counts.tolist()):
            assert struct.unpack_from("<I", data, off - 4)[0] == count
            assert data[off + count:off + count + 4] == data[off + count - 4:off + count]
        previous_end = int(offsets[-1] + counts[-1] + 4)
    assert previous_end == len(data)
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(ds.read(1), classes)


def test_wrong_or_missing_blocks_are_refused(tmp_path: Path) -> None:
    classes = _classes(700, 600)
    out, scratch = tmp_path / "c.tif", tmp_path / "c.tiles"
    writer = StreamingCOG(out, scratch, _info(700, 600), nodata=255)
    with pytest.raises(ValueError, match="not a uint8 block"):
        writer.write(Window(10, 0, 512, 512), classes[10:522, :512])
    with pytest.raises(ValueError, match="not a uint8 block"):
        writer.write(Window(0, 0, 512, 512), classes[:500, :512])
    with pytest.raises(ValueError, match="not a uint8 block"):
        writer.write(Window(0, 0, 512, 512), classes[:512, :512].astype(np.int32))
    writer.write(Window(0, 0, 512, 512), classes[:512, :512])
    with pytest.raises(ValueError, match="written already"):
        writer.write(Window(0, 0, 512, 512), classes[:512, :512])
    with pytest.raises(RuntimeError, match="never arrived"):
        writer.close()
    assert not out.exists() and not scratch.exists()
    aborted = StreamingCOG(out, scratch, _info(700, 600), nodata=255)
    aborted.write(Window(0, 0, 512, 512), classes[:512, :512])
    aborted.abort()
    assert not out.exists() and not scratch.exists()
