"""Polygons as flat arrays: vertices, ring offsets and polygon offsets, without a Python object per polygon.

The layout is shapely's ragged one (:func:`shapely.to_ragged_array`): ring ``i``
is ``coords[ring_offsets[i]:ring_offsets[i + 1]]``, closed (its last vertex
repeats its first), and polygon ``j`` is rings
``polygon_offsets[j]:polygon_offsets[j + 1]``, its exterior first. The tracer
(:mod:`geovision.stitching.trace`) builds polygons in this form, and features go
from it straight to ground measures (:func:`geovision.io.geo.measure_rings`) and
to WKB for the vector writer (:meth:`FlatPolygons.to_wkb`, compiled): a GEOS
geometry is only built when a caller asks for one (:meth:`FlatPolygons.to_shapely`).
Building GEOS polygons, moving their vertices to map coordinates and encoding
them as WKB had cost about a third of stitching a noisy class raster.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import shapely
from affine import Affine

__all__ = ["FlatPolygons", "apply_affine"]


@dataclass(frozen=True, slots=True)
class FlatPolygons:
    """``P`` polygons in shapely's ragged layout (see the module notes)."""

    coords: np.ndarray
    """``(M, 2)`` vertices ``(x, y)``: int64 pixel corners or float64 map coordinates."""
    ring_offsets: np.ndarray
    """``(R + 1,)`` int64: ring ``i`` is ``coords[ring_offsets[i]:ring_offsets[i + 1]]``, closed."""
    polygon_offsets: np.ndarray
    """``(P + 1,)`` int64: polygon ``j`` is rings ``polygon_offsets[j]:polygon_offsets[j + 1]``, exterior first."""

    def __len__(self) -> int:
        return len(self.polygon_offsets) - 1

    @classmethod
    def empty(cls, dtype: type = np.float64) -> FlatPolygons:
        return cls(np.zeros((0, 2), dtype), np.zeros(1, np.int64), np.zeros(1, np.int64))

    @classmethod
    def concat(cls, parts: Sequence[FlatPolygons]) -> FlatPolygons:
        """The polygons of ``parts``, one after another."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        coords = np.concatenate([p.coords for p in parts])
        vertex_base = np.cumsum([0] + [len(p.coords) for p in parts[:-1]])
        ring_base = np.cumsum([0] + [len(p.ring_offsets) - 1 for p in parts[:-1]])
        ring_offsets = np.concatenate([p.ring_offsets[:-1] + b for p, b in zip(parts, vertex_base, strict=True)]
                                      + [[len(coords)]])
        polygon_offsets = np.concatenate([p.polygon_offsets[:-1] + b for p, b in zip(parts, ring_base, strict=True)]
                                         + [[len(ring_offsets) - 1]])
        return cls(coords, ring_offsets.astype(np.int64), polygon_offsets.astype(np.int64))

    @classmethod
    def from_shapely(cls, polygons: np.ndarray) -> FlatPolygons:
        """Polygons (not MultiPolygons) to flat arrays."""
        if len(polygons) == 0:
            return cls.empty()
        kind, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(np.asarray(polygons, dtype=object))
        if kind != shapely.GeometryType.POLYGON:
            raise ValueError(f"FlatPolygons holds Polygons, got {kind.name}")
        return cls(coords, ring_offsets.astype(np.int64), polygon_offsets.astype(np.int64))

    def take(self, indices: np.ndarray) -> FlatPolygons:
        """Polygons ``indices`` (an int array or a boolean mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        rings_per = np.diff(self.polygon_offsets)[indices]
        rings = _ranges(self.polygon_offsets[indices], rings_per)
        vertices_per = np.diff(self.ring_offsets)[rings]
        vertices = _ranges(self.ring_offsets[rings], vertices_per)
        return FlatPolygons(self.coords[vertices], np.r_[0, np.cumsum(vertices_per)].astype(np.int64),
                            np.r_[0, np.cumsum(rings_per)].astype(np.int64))

    def transform(self, affine: Affine) -> FlatPolygons:
        """Vertices through ``affine`` (pixel ``(col, row)`` to map ``(x, y)``), as float64."""
        return FlatPolygons(apply_affine(affine, self.coords), self.ring_offsets, self.polygon_offsets)

    def ring_of_vertex(self) -> np.ndarray:
        """``(M,)`` the ring of each vertex."""
        return np.repeat(np.arange(len(self.ring_offsets) - 1), np.diff(self.ring_offsets))

    def polygon_of_ring(self) -> np.ndarray:
        """``(R,)`` the polygon of each ring."""
        return np.repeat(np.arange(len(self)), np.diff(self.polygon_offsets))

    def to_shapely(self) -> np.ndarray:
        """``(P,)`` shapely Polygons."""
        if len(self) == 0:
            return np.zeros(0, dtype=object)
        polygons: np.ndarray = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, self.coords.astype(np.float64, copy=False),
            (self.ring_offsets, self.polygon_offsets))
        return polygons

    def to_wkb(self) -> pa.BinaryArray:
        """``(P,)`` ISO WKB Polygons, as :func:`shapely.to_wkb` writes them, in an Arrow binary array."""
        coords = np.ascontiguousarray(self.coords, dtype=np.float64)
        offsets, data = _wkb(coords.reshape(-1).view(np.uint8), self.ring_offsets, self.polygon_offsets,
                             sys.byteorder == "little")
        return pa.Array.from_buffers(pa.binary(), len(self), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def apply_affine(affine: Affine, xy: np.ndarray) -> np.ndarray:
    """``(n, 2)`` points through ``affine`` (pixel ``(col, row)`` to map ``(x, y)``), float64."""
    col, row = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    t = affine
    return np.column_stack([t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, without the loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    ranges: np.ndarray = np.arange(total) + np.repeat(starts - (ends - lengths), lengths)
    return ranges


@numba.njit(cache=True, nogil=True)
def _put_uint32(data: np.ndarray, at: int, value: int, little: bool) -> None:  # pragma: no cover - compiled
    for k in range(4):
        byte = (value >> (8 * k)) & 0xFF
        data[at + (k if little else 3 - k)] = byte


@numba.njit(cache=True, nogil=True)
def _wkb(coord_bytes: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray,  # pragma: no cover - compiled
         little: bool) -> tuple[np.ndarray, np.ndarray]:
    """WKB of each polygon: ``(int32 offsets (P + 1,), uint8 data)`` of an Arrow binary array.

    Byte order marker, type 3 (Polygon), ring count, then per ring its vertex count
    and its vertices as doubles (copied as they lie in ``coord_bytes``: native order,
    which the marker states).
    """
    n = len(polygon_offsets) - 1
    offsets = np.empty(n + 1, np.int32)
    offsets[0] = 0
    for j in range(n):
        size = 9
        for r in range(polygon_offsets[j], polygon_offsets[j + 1]):
            size += 4 + 16 * (ring_offsets[r + 1] - ring_offsets[r])
        offsets[j + 1] = offsets[j] + size
    data = np.empty(offsets[n], np.uint8)
    for j in range(n):
        at = offsets[j]
        data[at] = 1 if little else 0
        _put_uint32(data, at + 1, 3, little)
        _put_uint32(data, at + 5, polygon_offsets[j + 1] - polygon_offsets[j], little)
        at += 9
        for r in range(polygon_offsets[j], polygon_offsets[j + 1]):
            first, last = ring_offsets[r], ring_offsets[r + 1]
            _put_uint32(data, at, last - first, little)
            at += 4
            size = 16 * (last - first)
            data[at:at + size] = coord_bytes[16 * first:16 * first + size]
            at += size
    return offsets, data
