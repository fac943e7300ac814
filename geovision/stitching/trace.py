"""Pixel outlines of labelled components as polygons, in numpy: GDAL's polygonize without the per-vertex Python.

Used by :class:`~geovision.stitching.vectorize.PolygonCollector` for every block it
vectorises. ``rasterio.features.shapes`` traces in C but hands each polygon back as
GeoJSON, one Python tuple per vertex, which made it the largest single cost of
stitching a noisy class raster. Here the whole block is traced with array
operations:

1. Every pixel side between two different labels is a boundary edge of each
   non-zero label beside it, directed with the component on its left (as GDAL
   orients outer rings in pixel coordinates): left sides go down, bottom sides
   right, right sides up, top sides left.
2. Unit edges in a straight line with one label merge into one segment, so
   vertices sit only where the outline turns.
3. Each segment's successor starts where it ends, with the same label. Where two
   do (a vertex where the component touches itself only diagonally, which
   4-connectivity does not join), the right turn is taken: the region cut off
   behind the diagonal then gets a ring of its own, a hole touching the outer
   ring at that vertex (valid, and what GDAL gives), instead of an outer ring
   that touches itself (invalid).
4. Successors form cycles, one per ring; pointer jumping gives each segment its
   ring (the smallest segment index in the cycle) and its place in it.
5. By the shoelace sum, a component's outer ring runs one way and its holes the
   other, so each polygon is its outer ring plus its holes.

Coordinates are whole-raster pixel corners (integers), as GDAL's are, so pieces
from neighbouring blocks share exact edge coordinates.
"""

from __future__ import annotations

import numpy as np
import shapely

__all__ = ["outline_polygons"]

# segment directions, in the order of left turns (pixel rows grow downwards)
_SOUTH, _EAST, _NORTH, _WEST = 0, 1, 2, 3


def outline_polygons(labels: np.ndarray, n_labels: int, *, row_off: int = 0, col_off: int = 0) -> np.ndarray:
    """``(N,)`` polygons of the 4-connected components ``1..N`` of ``labels``.

    Args:
        labels: ``(h, w)`` integer labels, 0 outside components; each label one
            4-connected component (as :func:`scipy.ndimage.label` numbers them).
        n_labels: N; a label in ``1..N`` with no pixels gets ``None``.
        row_off: added to every row coordinate (the block's place in the raster).
        col_off: added to every column coordinate.

    Returns:
        ``(N,)`` object array: the Polygon of label ``i + 1`` at ``i``, in pixel
        coordinates ``(col, row)`` of pixel corners.
    """
    geoms = np.full(n_labels, None, dtype=object)
    labels = np.asarray(labels)
    if n_labels == 0 or not labels.any():
        return geoms
    x0, y0, x1, y1, direction, lab = _segments(labels.astype(np.int64, copy=False))
    nxt = _successors(x0, y0, x1, y1, direction, lab, *labels.shape)
    ring, place = _rings(nxt)
    # twice the signed area of each ring: outer rings come out negative, holes positive
    doubled = np.bincount(ring, weights=x0 * y1 - x1 * y0, minlength=len(nxt))
    hole = doubled[ring] > 0
    order = np.lexsort((place, ring, hole, lab))  # by component, outer ring first, each ring in walk order
    ring_sorted, lab_sorted = ring[order], lab[order]
    ring_index = np.cumsum(np.r_[True, ring_sorted[1:] != ring_sorted[:-1]]) - 1
    coords = np.column_stack([x0[order] + col_off, y0[order] + row_off]).astype(np.float64)
    rings = shapely.linearrings(coords, indices=ring_index)
    first_of_ring = np.r_[True, ring_sorted[1:] != ring_sorted[:-1]]
    ring_label = lab_sorted[first_of_ring]
    polygon_index = np.cumsum(np.r_[True, ring_label[1:] != ring_label[:-1]]) - 1
    polygons = shapely.polygons(rings, indices=polygon_index)
    geoms[np.unique(ring_label) - 1] = polygons
    return geoms


def _segments(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Maximal straight boundary segments: ``(x0, y0, x1, y1, direction, label)``, each ``(M,)`` int64."""
    padded = np.pad(labels, 1)
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]  # either side of vertical lines x = 0..w, rows 0..h-1
    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]  # either side of horizontal lines y = 0..h, cols 0..w-1
    vertical, horizontal = left != right, above != below
    parts = []
    # a right-hand pixel's left side runs down its line: (x, first) -> (x, last + 1)
    x, first, last, lab = _runs((vertical & (right > 0)).T, right.T)
    parts.append((x, first, x, last + 1, _SOUTH, lab))
    # a left-hand pixel's right side runs up: (x, last + 1) -> (x, first)
    x, first, last, lab = _runs((vertical & (left > 0)).T, left.T)
    parts.append((x, last + 1, x, first, _NORTH, lab))
    # an upper pixel's bottom side runs right: (first, y) -> (last + 1, y)
    y, first, last, lab = _runs(horizontal & (above > 0), above)
    parts.append((first, y, last + 1, y, _EAST, lab))
    # a lower pixel's top side runs left: (last + 1, y) -> (first, y)
    y, first, last, lab = _runs(horizontal & (below > 0), below)
    parts.append((last + 1, y, first, y, _WEST, lab))
    cols = [np.concatenate([np.broadcast_to(np.asarray(p[k], dtype=np.int64), p[5].shape) for p in parts])
            for k in range(6)]
    return tuple(cols)


def _runs(edges: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of ``edges`` along axis 1 with one label: ``(line, first, last, label)``, in row-major order."""
    same = lab[:, 1:] == lab[:, :-1]
    continues_before = np.zeros_like(edges)
    continues_before[:, 1:] = edges[:, :-1] & same
    continues_after = np.zeros_like(edges)
    continues_after[:, :-1] = edges[:, 1:] & same
    line, first = np.nonzero(edges & ~continues_before)
    _, last = np.nonzero(edges & ~continues_after)
    return line, first, last, lab[line, first]


def _successors(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, direction: np.ndarray,
                lab: np.ndarray, height: int, width: int) -> np.ndarray:
    """Index of the segment that follows each one around its ring."""
    def key(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ((lab * (height + 1) + y) * (width + 1) + x) * 4

    starts = key(x0, y0) + direction
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    last = len(order) - 1
    ends = key(x1, y1)
    # a right turn where there is one (the only way on, or the one that splits a diagonal touch) ...
    right_turn = ends + (direction + 3) % 4
    i = np.minimum(np.searchsorted(sorted_starts, right_turn), last)
    # ... else the only segment starting there
    j = np.minimum(np.searchsorted(sorted_starts, ends), last)
    return np.where(sorted_starts[i] == right_turn, order[i], order[j])


def _rings(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a permutation ``nxt`` (disjoint cycles): each element's cycle (its smallest member) and place in it.

    Pointer jumping: both take about log2(longest cycle) rounds of array gathers.
    """
    n = len(nxt)
    index = np.arange(n)
    ring, jump = index.copy(), nxt.copy()
    while True:  # smallest index within 2**k steps; stable once 2**k covers every cycle
        smaller = np.minimum(ring, ring[jump])
        if np.array_equal(smaller, ring):
            break
        ring, jump = smaller, jump[jump]
    # steps from each element forward to its cycle's smallest member
    is_first = ring == index
    steps = (~is_first).astype(np.int64)
    hop = np.where(is_first, index, nxt)
    while True:
        further = hop[hop]
        if np.array_equal(further, hop):
            break
        steps += steps[hop]
        hop = further
    length = np.bincount(ring, minlength=n)[ring]
    return ring, (length - steps) % length
