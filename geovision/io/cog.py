"""A one-band uint8 Cloud-Optimised GeoTIFF written block by block, while the run goes on.

GDAL's COG driver can only copy a finished raster: copying the class raster after the
last model pass decompressed it again, deflated every tile and made its overviews while
the cores had nothing else to do (0.47 s at 4096², the longest part of a run's end).
:class:`StreamingCOG` deflates each block the moment the stitcher finishes it
(libdeflate, level 6, as GDAL's COG driver does) and appends it to a scratch file; the
nearest-neighbour overview tiles (every ``f``-th pixel, :func:`overview_factors`) are
filled from the same blocks and deflated as soon as their last block is in. Closing
writes the COG itself: the header, GDAL's structural metadata, the IFDs of the full
resolution and of each overview, then the tiles, smallest overview first, each level
row-major, every tile with GDAL's 4-byte size before it and its last 4 bytes repeated
after: the layout GDAL's COG driver writes, so GDAL reports ``LAYOUT=COG``. What is
left after the last pass is copying already compressed bytes.

The georeferencing tags (CRS, transform, nodata, colour table, band description) are
GDAL's own: :func:`_template_tags` has GDAL write a 1 × 1 GeoTIFF in memory with the
same metadata and takes its tags.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import deflate
import numpy as np
from rasterio.io import MemoryFile

from geovision.io.raster import BLOCK_SIZE
from geovision.tiling.reader import RasterInfo, gdal_env
from geovision.types import Window

#: deflate level of GDAL's COG driver (``LEVEL`` defaults to 6)
DEFLATE_LEVEL = 6

#: GDAL's structural metadata for a COG whose tiles carry a size leader and trailer
_GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)
_GHOST_BYTES = f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST):06d} bytes\n{_GHOST}".encode("ascii")

# TIFF field types: byte sizes
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
_SHORT, _LONG, _LONG8 = 3, 4, 16
# tags
_SUBFILE, _WIDTH, _LENGTH, _COMPRESSION, _PREDICTOR = 254, 256, 257, 259, 317
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325
#: tags that describe one image's layout: ours, never the template's
_LAYOUT_TAGS = {_SUBFILE, _WIDTH, _LENGTH, _COMPRESSION, 273, 278, 279, _PREDICTOR,
                _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS}
#: template tags an overview carries as well (GDAL's COG: pixel layout, colours, nodata)
_OVERVIEW_TAGS = {258, 262, 277, 284, 320, 339, 42113}

Tag = tuple[int, int, bytes]  # (field type, count, value bytes, little-endian)


def overview_factors(height: int, width: int) -> list[int]:
    """The overview factors of GDAL's COG driver (``OVERVIEWS=AUTO``, :data:`BLOCK_SIZE` tiles).

    It halves the raster (rounding down, :func:`overview_size`) while the last level is
    larger than one tile: 4096 px gives 2, 4 and 8; 1025 px gives 2 (512 px); 512 px
    and less, none.
    """
    factors, f = [], 1
    while max(overview_size(height, width, f)) > BLOCK_SIZE:
        f *= 2
        factors.append(f)
    return factors


def overview_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """The size of GDAL's COG overview of ``factor``: the size divided by it, rounded down, at least 1."""
    return max(1, height // factor), max(1, width // factor)


class StreamingCOG:
    """Write a one-band uint8 COG with nearest-neighbour overviews, block by block.

    Blocks are the :data:`BLOCK_SIZE` grid of the raster (``tiling.grid.BlockGrid``),
    given once each, in any order. Overview level ``f`` holds every ``f``-th pixel of
    every ``f``-th row, counted from the raster's first (``classes[::f, ::f]``; GDAL's
    NEAREST gives the same where ``f`` divides the size), over GDAL's overview size
    (:func:`overview_size`). Memory: the open overview tiles,
    at most about one tile per 512 columns of the raster (256 KB each), whatever its height.

    Args:
        path: the COG to write (written by :meth:`close`).
        scratch: where the compressed tiles wait; deleted by :meth:`close` and :meth:`abort`.
        info: the raster it describes (size, CRS, transform).
        nodata: nodata value (pads partial tiles too).
        colormap: optional ``{value: (r, g, b, a)}``.
        description: optional band description.
        bigtiff: ``None`` chooses BigTIFF only when the file would pass 4 GiB.
    """

    def __init__(self, path: str | os.PathLike[str], scratch: str | os.PathLike[str], info: RasterInfo, *,
                 nodata: int, colormap: dict[int, tuple[int, int, int, int]] | None = None,
                 description: str | None = None, bigtiff: bool | None = None) -> None:
        self.path, self.scratch = Path(path), Path(scratch)
        self.height, self.width, self.nodata = info.height, info.width, nodata
        self.bigtiff = bigtiff
        self.factors = overview_factors(info.height, info.width)
        self._template = _template_tags(info, nodata, colormap, description)
        # per level (full resolution first): image size, tile grid, tile offsets/sizes in the scratch
        self._sizes = [overview_size(info.height, info.width, f) for f in (1, *self.factors)]
        self._grids = [(-(-h // BLOCK_SIZE), -(-w // BLOCK_SIZE)) for h, w in self._sizes]
        self._offsets = [np.full(r * c, -1, np.int64) for r, c in self._grids]
        self._counts = [np.zeros(r * c, np.int64) for r, c in self._grids]
        self._blocks = self._grids[0]
        #: (level, tile row, tile col) -> [tile buffer, blocks still to come]
        self._open: dict[tuple[int, int, int], list] = {}
        self._file = open(self.scratch, "wb")  # noqa: SIM115  (closed by close/abort)
        self._end = 0

    def write(self, window: Window, block: np.ndarray) -> None:
        """Add the block ``block`` (``(h, w)`` uint8) at ``window`` (one block of the grid)."""
        rows, cols = self._blocks
        br, bc = window.row_off // BLOCK_SIZE, window.col_off // BLOCK_SIZE
        expected = (min(BLOCK_SIZE, self.height - window.row_off), min(BLOCK_SIZE, self.width - window.col_off))
        if (window.row_off % BLOCK_SIZE or window.col_off % BLOCK_SIZE or not (0 <= br < rows and 0 <= bc < cols)
                or block.shape != expected or (window.height, window.width) != expected or block.dtype != np.uint8):
            raise ValueError(f"{window} with a {block.dtype} array of {block.shape} is not a uint8 block of the "
                             f"{self.height} x {self.width} raster's {BLOCK_SIZE} px grid")
        if self._offsets[0][br * cols + bc] >= 0:
            raise ValueError(f"block {window} was written already")
        self._store(0, br * cols + bc, block)
        for level, f in enumerate(self.factors, start=1):
            self._add_to_overview(level, f, window, block)

    def close(self) -> None:
        """Write the COG from the compressed tiles, then delete the scratch file."""
        try:
            missing = [lvl for lvl, off in enumerate(self._offsets) if (off < 0).any()]
            if missing:
                raise RuntimeError(f"{self.path}: tiles of levels {missing} never arrived ({len(self._open)} "
                                   "overview tiles open): every block must be written before close()")
            self._file.close()
            self._assemble()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the scratch file (the COG, if begun, is the caller's to remove)."""
        self._file.close()
        self._open.clear()
        self.scratch.unlink(missing_ok=True)

    # ------------------------------------------------------------------ internals

    def _store(self, level: int, index: int, data: np.ndarray) -> None:
        if data.shape != (BLOCK_SIZE, BLOCK_SIZE):  # partial tiles are stored full size, padded
            full = np.full((BLOCK_SIZE, BLOCK_SIZE), self.nodata, np.uint8)
            full[:data.shape[0], :data.shape[1]] = data
            data = full
        packed = deflate.zlib_compress(np.ascontiguousarray(data, dtype=np.uint8), DEFLATE_LEVEL)
        self._file.write(packed)
        self._offsets[level][index], self._counts[level][index] = self._end, len(packed)
        self._end += len(packed)

    def _add_to_overview(self, level: int, f: int, window: Window, block: np.ndarray) -> None:
        rows, cols = self._grids[level]
        tr, tc = window.row_off // (BLOCK_SIZE * f), window.col_off // (BLOCK_SIZE * f)
        if tr >= rows or tc >= cols:
            return  # past the level's last row or column (its size is rounded down)
        key = (level, tr, tc)
        entry = self._open.get(key)
        if entry is None:
            brows, bcols = self._blocks  # the blocks under this overview tile
            under = (min((tr + 1) * f, brows) - tr * f) * (min((tc + 1) * f, bcols) - tc * f)
            entry = self._open[key] = [np.full((BLOCK_SIZE, BLOCK_SIZE), self.nodata, np.uint8), under]
        # the block's pixels on the level's grid (rows and columns that are multiples of f), cut to its size
        height, width = self._sizes[level]
        r0, c0 = -window.row_off % f, -window.col_off % f
        g_row, g_col = (window.row_off + r0) // f, (window.col_off + c0) // f
        piece = block[r0::f, c0::f][:max(0, height - g_row), :max(0, width - g_col)]
        if piece.size:
            orow, ocol = g_row - tr * BLOCK_SIZE, g_col - tc * BLOCK_SIZE
            entry[0][orow:orow + piece.shape[0], ocol:ocol + piece.shape[1]] = piece
        entry[1] -= 1
        if entry[1] == 0:
            del self._open[key]
            self._store(level, tr * cols + tc, entry[0])

    def _assemble(self) -> None:
        levels = len(self._sizes)
        data_bytes = sum(int(c.sum()) + 8 * len(c) for c in self._counts)  # tiles with leader and trailer
        big = bool(self.bigtiff)
        head = self._head(big, None)
        if not big and len(head) + data_bytes >= 2**32:
            if self.bigtiff is not None:
                raise ValueError(f"{self.path}: {data_bytes} bytes of tiles need a BigTIFF")
            big, head = True, self._head(True, None)
        # where each tile's bytes go: smallest overview first, each level row-major, after a 4-byte leader
        order, starts, cursor = list(reversed(range(levels))), [np.empty(0)] * levels, len(head)
        for level in order:
            counts = self._counts[level]
            starts[level] = cursor + 4 + np.concatenate(([0], np.cumsum(counts + 8)[:-1]))
            cursor += int(counts.sum()) + 8 * len(counts)
        head = self._head(big, starts)
        with open(self.scratch, "rb") as src, open(self.path, "wb") as out:
            out.write(head)
            for level in order:
                for off, count in zip(self._offsets[level].tolist(), self._counts[level].tolist()):
                    src.seek(off)
                    tile = src.read(count)
                    out.write(struct.pack("<I", count) + tile + tile[-4:])

    def _head(self, big: bool, tile_offsets: list[np.ndarray] | None) -> bytes:
        """The header, structural metadata and every IFD with its values: all that comes before the tiles.

        Its length does not depend on ``tile_offsets`` (``None``: zeros, to measure it).
        """
        buf = bytearray(struct.pack("<2sHHHQ", b"II", 43, 8, 0, 0) if big else struct.pack("<2sHI", b"II", 42, 0))
        buf += _GHOST_BYTES
        entry_size, inline, pointer = (20, 8, "<Q") if big else (12, 4, "<I")
        link = 8 if big else 4  # where the next IFD's offset goes
        for level, ((h, w), (rows, cols)) in enumerate(zip(self._sizes, self._grids)):
            tags = {k: v for k, v in self._template.items()
                    if k not in _LAYOUT_TAGS and (level == 0 or k in _OVERVIEW_TAGS)}
            offsets = np.zeros(rows * cols) if tile_offsets is None else tile_offsets[level]
            tags.update({
                _WIDTH: _scalar(w), _LENGTH: _scalar(h), _COMPRESSION: (_SHORT, 1, struct.pack("<H", 8)),
                _PREDICTOR: (_SHORT, 1, struct.pack("<H", 1)),
                _TILE_WIDTH: (_SHORT, 1, struct.pack("<H", BLOCK_SIZE)),
                _TILE_LENGTH: (_SHORT, 1, struct.pack("<H", BLOCK_SIZE)),
                _TILE_OFFSETS: (_LONG8 if big else _LONG, rows * cols,
                                np.asarray(offsets).astype("<u8" if big else "<u4").tobytes()),
                _TILE_COUNTS: (_LONG, rows * cols, self._counts[level].astype("<u4").tobytes()),
            })
            if level:
                tags[_SUBFILE] = (_LONG, 1, struct.pack("<I", 1))  # a reduced-resolution image
            if len(buf) % 2:
                buf += b"\0"
            struct.pack_into(pointer, buf, link, len(buf))
            ifd_at, codes = len(buf), sorted(tags)
            table = ifd_at + (8 if big else 2)
            link = table + len(codes) * entry_size
            buf += bytes(link + inline - ifd_at)
            struct.pack_into("<Q" if big else "<H", buf, ifd_at, len(codes))
            for i, code in enumerate(codes):
                typ, count, data = tags[code]
                entry = table + i * entry_size
                struct.pack_into("<HHQ" if big else "<HHI", buf, entry, code, typ, count)
                if len(data) <= inline:
                    buf[entry + entry_size - inline:entry + entry_size - inline + len(data)] = data
                else:
                    if len(buf) % 2:
                        buf += b"\0"
                    struct.pack_into(pointer, buf, entry + entry_size - inline, len(buf))
                    buf += data
        if len(buf) % 2:
            buf += b"\0"
        return bytes(buf)


def _scalar(value: int) -> Tag:
    return (_SHORT, 1, struct.pack("<H", value)) if value < 65536 else (_LONG, 1, struct.pack("<I", value))


def _template_tags(info: RasterInfo, nodata: int, colormap: dict | None, description: str | None) -> dict[int, Tag]:
    """The tags GDAL writes for a one-band uint8 GeoTIFF with this CRS, transform, nodata, colours and description."""
    with gdal_env(), MemoryFile() as mem:
        with mem.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8", crs=info.crs,
                      transform=info.affine, nodata=nodata) as ds:
            if colormap:
                ds.write_colormap(1, colormap)
            if description:
                ds.set_band_description(1, description)
            ds.write(np.full((1, 1, 1), nodata, np.uint8))
        return read_ifds(mem.read())[0][1]


def read_ifds(data: bytes) -> list[tuple[int, dict[int, Tag]]]:
    """Every IFD of a little-endian TIFF or BigTIFF: its offset and ``{tag: (type, count, value bytes)}``."""
    if data[:2] != b"II":
        raise ValueError("not a little-endian TIFF")
    big = struct.unpack_from("<H", data, 2)[0] == 43
    offset = struct.unpack_from("<Q", data, 8)[0] if big else struct.unpack_from("<I", data, 4)[0]
    entry_size, inline = (20, 8) if big else (12, 4)
    ifds = []
    while offset:
        n = struct.unpack_from("<Q" if big else "<H", data, offset)[0]
        table = offset + (8 if big else 2)
        tags = {}
        for i in range(n):
            e = table + i * entry_size
            code, typ, count = struct.unpack_from("<HHQ" if big else "<HHI", data, e)
            size = _TYPE_SIZE[typ] * count
            at = e + entry_size - inline
            if size > inline:
                at = struct.unpack_from("<Q" if big else "<I", data, at)[0]
            tags[code] = (typ, count, bytes(data[at:at + size]))
        ifds.append((offset, tags))
        offset = struct.unpack_from("<Q" if big else "<I", data, table + n * entry_size)[0]
    return ifds


def tag_values(tag: Tag) -> tuple[int | float, ...]:
    """The numbers of a numeric tag."""
    typ, count, data = tag
    fmt = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q", 17: "q"}[typ]
    return struct.unpack(f"<{count}{fmt}", data)
