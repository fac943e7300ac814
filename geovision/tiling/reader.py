"""Reading rasters tile by tile: validation up front, windowed reads per batch.

Nothing here ever reads a whole raster. Each read opens the dataset inside a
``rasterio.Env`` whose GDAL block cache is capped (``GDAL_CACHEMAX``), which
keeps a streaming reader's memory flat: GDAL's default cache grows to 5% of RAM.
The functions are plain and picklable so Dask can run them on local threads or
on the worker processes of a cluster.

GDAL's cached blocks belong to a dataset handle and go when it closes, while
neighbouring tiles share blocks (a 512 px tile at a 448 px stride touches four
512 px blocks, each shared with up to three other tiles). A local run therefore
passes ``keep``: each reading thread keeps its dataset open for the run, until
:func:`release`, and neighbouring tiles find their blocks decompressed already.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError

from geovision.errors import BandMismatchError, NoCRSError, RasterReadError
from geovision.types import Tile

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

#: GDAL block cache per reading process, in megabytes.
GDAL_CACHE_MB = int(os.environ.get("GEOVISION_GDAL_CACHEMAX", "64"))


def gdal_env() -> rasterio.Env:
    """A ``rasterio.Env`` with GDAL's block cache capped at :data:`GDAL_CACHE_MB` megabytes.

    rasterio hands an integer ``GDAL_CACHEMAX`` to ``GDALSetCacheMax64``, which counts
    bytes (unlike the environment variable, where small numbers mean megabytes): 64
    would be a 64-byte cache, so every row of a decimated read would decompress its
    blocks again.
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")


@dataclass(frozen=True, slots=True)
class RasterInfo:
    """What geovision needs to know about an input raster (no pixel data).

    ``bands`` are the 1-based band indices that will be read, in model order.
    """

    path: str
    height: int
    width: int
    count: int
    dtype: str
    crs_wkt: str
    transform: tuple[float, ...]
    bands: tuple[int, ...]
    nodata: float | None

    @property
    def affine(self) -> Affine:
        from affine import Affine

        return Affine(*self.transform[:6])

    @property
    def crs(self) -> CRS:
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt)

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def open_raster(path: str, bands: Sequence[int], expected_bands: int, *, bands_from: str = "--bands") -> RasterInfo:
    """Open ``path``, check it can serve a model reading ``expected_bands`` bands.

    Args:
        path: file path or GDAL path (``/vsis3/...``, ``.vrt``), passed to GDAL untouched.
        bands: 1-based band indices to read, in model order (the user's ``--bands``, or
            the bundle's band order).
        expected_bands: how many bands the model takes.
        bands_from: where ``bands`` came from, for error messages.

    Raises:
        RasterReadError: the file cannot be opened.
        NoCRSError: the raster has no CRS.
        BandMismatchError: the bands asked for do not exist or do not match the model.
    """
    try:
        with gdal_env(), rasterio.open(path) as ds:
            height, width, count = ds.height, ds.width, ds.count
            crs, transform, dtype, nodata = ds.crs, ds.transform, ds.dtypes[0], ds.nodata
    except RasterioError as exc:
        raise RasterReadError(
            f"{path}: cannot open as a raster ({exc}). Check that the path is right and the file is a "
            "complete GeoTIFF, COG or VRT (re-export or re-download it if it was truncated)."
        ) from exc
    if crs is None:
        raise NoCRSError(
            f"{path}: the raster has no coordinate reference system, so outputs could not be placed "
            "on a map or measured. Assign one, e.g. `gdal_edit.py -a_srs EPSG:32631 FILE`."
        )
    bands = tuple(int(b) for b in bands)
    if len(bands) != expected_bands:
        raise BandMismatchError(
            f"{path}: {bands_from} names {len(bands)} band(s) {list(bands)} but the model takes "
            f"{expected_bands}. Name exactly {expected_bands} band indices."
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise BandMismatchError(
            f"{path}: the model takes {expected_bands} bands, read as raster band(s) {list(bands)} "
            f"({bands_from}), but the raster has {count} band(s), so band(s) {bad} do not exist. "
            "Use a raster with the bands the model was trained on, pass --bands to choose "
            f"{expected_bands} of bands 1-{count}, or use a model made for {count} band(s)."
        )
    return RasterInfo(
        path=path,
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        crs_wkt=crs.to_wkt(),
        transform=tuple(transform)[:6],
        bands=bands,
        nodata=nodata,
    )


@dataclass(slots=True)
class TileData:
    """Pixels of one tile, padded to ``tile_size`` when the raster is smaller.

    ``data`` is ``(bands, tile_size, tile_size)`` in the raster's dtype; ``valid`` is
    ``(tile_size, tile_size)`` bool, False for nodata, masked and padding pixels.
    """

    tile: Tile
    data: np.ndarray
    valid: np.ndarray


class _Kept:
    """A dataset one reading thread keeps open for a run; the lock is held while it reads."""

    __slots__ = ("dataset", "lock", "released")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dataset = None
        self.released = False


_KEPT: dict[tuple[str, str, int], _Kept] = {}
_RELEASED: set[str] = set()
_KEPT_LOCK = threading.Lock()


@contextlib.contextmanager
def _reading(path: str, keep: str | None) -> Iterator[DatasetReader]:
    """The dataset at ``path``: this thread's kept one for run ``keep``, or one opened for this read."""
    entry = None
    if keep is not None:
        with _KEPT_LOCK:
            if keep not in _RELEASED:
                entry = _KEPT.setdefault((keep, path, threading.get_ident()), _Kept())
    if entry is None:
        with rasterio.open(path) as ds:
            yield ds
        return
    with entry.lock:
        if entry.released:  # released between the lookup and the lock: read without keeping
            with rasterio.open(path) as ds:
                yield ds
            return
        if entry.dataset is None:
            entry.dataset = rasterio.open(path)
        yield entry.dataset


def release(keep: str) -> None:
    """Close the datasets kept for run ``keep``; later reads for it open their own.

    Waits for a read in progress on a kept dataset to end before closing it.
    """
    with _KEPT_LOCK:
        _RELEASED.add(keep)
        entries = [_KEPT.pop(key) for key in [k for k in _KEPT if k[0] == keep]]
    for entry in entries:
        with entry.lock:
            entry.released = True
            if entry.dataset is not None:
                entry.dataset.close()
                entry.dataset = None


def read_tiles(info: RasterInfo, tiles: Sequence[Tile], tile_size: int, *,
               keep: str | None = None) -> tuple[list[TileData], list[Tile]]:
    """Read a batch of tiles. Returns ``(read, skipped)``: tiles that are entirely nodata are skipped.

    The validity mask comes from GDAL's per-band masks (nodata values, internal
    mask bands, alpha), combined so a pixel is valid only when every band read is
    valid; NaNs in float rasters count as nodata. ``keep`` names a run whose
    reading threads keep the dataset open (see :func:`release`); ``None`` opens and
    closes it here.
    """
    read: list[TileData] = []
    skipped: list[Tile] = []
    try:
        with gdal_env(), _reading(info.path, keep) as ds:
            # bands without nodata, mask or alpha: every pixel read is valid
            all_valid = all(ds.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in info.bands)
            for tile in tiles:
                rw = tile.window.to_rasterio()
                if all_valid:
                    valid = np.ones((int(rw.height), int(rw.width)), dtype=bool)
                else:
                    valid = np.all(ds.read_masks(info.bands, window=rw) > 0, axis=0)
                if not valid.any():
                    skipped.append(tile)
                    continue
                data = ds.read(info.bands, window=rw)
                if data.dtype.kind == "f":
                    valid &= ~np.isnan(data).any(axis=0)
                    if not valid.any():
                        skipped.append(tile)
                        continue
                h, w = valid.shape
                if (h, w) != (tile_size, tile_size):
                    padded = np.zeros((data.shape[0], tile_size, tile_size), dtype=data.dtype)
                    padded[:, :h, :w] = data
                    pvalid = np.zeros((tile_size, tile_size), dtype=bool)
                    pvalid[:h, :w] = valid
                    data, valid = padded, pvalid
                read.append(TileData(tile, data, valid))
    except RasterioError as exc:
        problem = str(exc.__cause__ or exc)
    else:
        return read, skipped
    # Raised outside the except block on purpose: Dask pickles an error with its context, and
    # rasterio's CPLE errors cannot be unpickled, which would turn ours into a bare Exception.
    raise RasterReadError(
        f"{info.path}: reading pixels failed near window {tiles[0].window} ({problem}). The file may be "
        "truncated or corrupt: re-export or re-download it."
    )
