"""Pixel outlines of labelled components as polygons, compiled: GDAL's polygonize without Python per vertex.

Used by :class:`~geovision.stitching.vectorize.PolygonCollector` for every block it
vectorises. ``rasterio.features.shapes`` traces in C but hands each polygon back as
GeoJSON, one Python tuple per vertex, which made it the largest single cost of
stitching a noisy class raster. Here a block is traced in one pass of compiled code
(numba, ``nogil``: the model's threads run meanwhile) into flat coordinate arrays
(:class:`~geovision.stitching.flat.FlatPolygons`), with no Python object per polygon:

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
4. Following successors walks each ring once. By the shoelace sum a component's
   outer ring runs one way and its holes the other, so each polygon is its outer
   ring plus its holes.

:func:`merge_rings` joins pieces of objects cut by block seams the same way: the
pixel steps two pieces share along a seam cancel, and what is left is linked into
rings by steps 3 and 4.

Coordinates are whole-raster pixel corners (integers), as GDAL's are, so pieces
from neighbouring blocks share exact edge coordinates.

The compiled functions are cached on disk by numba (``__pycache__``, else the
user's cache directory): the first run after installing compiles them, later
processes load them.
"""

from __future__ import annotations

from collections.abc import Collection

import numba
import numpy as np

from geovision.stitching.flat import FlatPolygons

__all__ = ["merge_outlines", "merge_rings", "outline_polygons", "outline_rings"]

# segment directions, in the order of left turns (pixel rows grow downwards)
_SOUTH, _EAST, _NORTH, _WEST = 0, 1, 2, 3

#: what the compiled tracers return: ``(coords, ring_offsets, polygon_offsets, polygon_label)``
_Rings = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def outline_rings(labels: np.ndarray, n_labels: int, *, row_off: int = 0,
                  col_off: int = 0) -> tuple[FlatPolygons, np.ndarray]:
    """Polygons of the 4-connected components ``1..N`` of ``labels``, as flat arrays.

    Args:
        labels: ``(h, w)`` integer labels, 0 outside components; each label one
            4-connected component (as :func:`scipy.ndimage.label` numbers them).
        n_labels: N.
        row_off: added to every row coordinate (the block's place in the raster).
        col_off: added to every column coordinate.

    Returns:
        ``(polygons, label)``: the polygons, in int64 pixel-corner coordinates
        ``(col, row)``, by increasing label, and ``(P,)`` the label of each (labels
        with no pixels have none).
    """
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    if n_labels == 0 or labels.size == 0:
        return FlatPolygons.empty(np.int64), np.zeros(0, np.int64)
    coords, ring_offsets, polygon_offsets, polygon_label = _trace(labels, n_labels, row_off, col_off)
    return FlatPolygons(coords, ring_offsets, polygon_offsets), polygon_label


def outline_polygons(labels: np.ndarray, n_labels: int, *, row_off: int = 0, col_off: int = 0) -> np.ndarray:
    """``(N,)`` shapely polygons of the 4-connected components ``1..N`` of ``labels`` (see :func:`outline_rings`).

    Returns:
        ``(N,)`` object array: the Polygon of label ``i + 1`` at ``i`` (``None`` for a
        label with no pixels), in pixel coordinates ``(col, row)`` of pixel corners.
    """
    geoms = np.full(n_labels, None, dtype=object)
    polygons, label = outline_rings(labels, n_labels, row_off=row_off, col_off=col_off)
    if len(label):
        geoms[label - 1] = polygons.to_shapely()
    return geoms


def merge_rings(pieces: FlatPolygons, group: np.ndarray, n_groups: int, rows: Collection[int],
                cols: Collection[int]) -> FlatPolygons:
    """The union of each group of pixel-outline ``pieces`` that meet along block seams.

    The pieces are traced pixel outlines in whole-raster pixel coordinates
    (integers), each ring with its polygon's inside on the left (as
    :func:`outline_rings` and GDAL give them), and those of a group meet only along
    the given seam rows and columns, without overlapping. Their edges on the seams
    are cut into pixel steps; a step that two pieces share comes once in each
    direction and both go; what is left is the union's outline, linked into rings
    as :func:`outline_rings` does. Exact, and without building an overlay as GEOS's
    unions do.

    Args:
        pieces: ``P`` polygons, int64 pixel coordinates.
        group: ``(P,)`` group number of each piece, ``0..G-1``, every number used.
        n_groups: G.
        rows: seam rows (horizontal lines between pixel rows).
        cols: seam columns.

    Returns:
        One polygon per group, in group order (int64 pixel coordinates).
    """
    ring_owner = np.asarray(group, dtype=np.int64)[pieces.polygon_of_ring()]
    seam_rows = np.sort(np.fromiter(rows, np.int64, len(rows)))
    seam_cols = np.sort(np.fromiter(cols, np.int64, len(cols)))
    coords, ring_offsets, polygon_offsets, _ = _merge(pieces.coords.astype(np.int64, copy=False),
                                                      pieces.ring_of_vertex(), ring_owner, n_groups, seam_rows,
                                                      seam_cols)
    return FlatPolygons(coords, ring_offsets, polygon_offsets)


def merge_outlines(polygons: np.ndarray, group: np.ndarray, rows: Collection[int], cols: Collection[int]) -> np.ndarray:
    """:func:`merge_rings` on shapely polygons: ``(G,)`` one Polygon per group."""
    pieces = FlatPolygons.from_shapely(polygons)
    pieces = FlatPolygons(pieces.coords.astype(np.int64), pieces.ring_offsets, pieces.polygon_offsets)
    group = np.asarray(group, dtype=np.int64)
    return merge_rings(pieces, group, int(group.max()) + 1, rows, cols).to_shapely()


# --------------------------------------------------------------------------- compiled


@numba.njit(cache=True, nogil=True)
def _trace(labels: np.ndarray, n_labels: int, row_off: int, col_off: int) -> _Rings:  # pragma: no cover - compiled
    """Outlines of labels ``1..n_labels`` of a block: ``(coords, ring_offsets, polygon_offsets, polygon_label)``."""
    h, w = labels.shape
    cap = 2 * (h + 1) * (w + 1) + 4  # maximal segments: at most one per corner and axis
    # int32 within a block: half the memory traffic of int64, twice as fast
    x0, y0, x1, y1, direction, lab = np.empty((6, cap), np.int32)
    n = 0
    # open vertical runs on each line x = 0..w: the label whose left side runs down it, and
    # the label whose right side runs up it, with the row each started at
    down_lab = np.zeros(w + 1, np.int64)
    down_start = np.zeros(w + 1, np.int64)
    up_lab = np.zeros(w + 1, np.int64)
    up_start = np.zeros(w + 1, np.int64)
    for r in range(h + 1):
        for x in range(w + 1):  # vertical pixel sides of row r; row h closes every run
            left = labels[r, x - 1] if r < h and x > 0 else 0
            right = labels[r, x] if r < h and x < w else 0
            down = right if right > 0 and right != left else 0
            if down_lab[x] != down:
                if down_lab[x] > 0:  # a right-hand pixel's left side runs down: (x, first) -> (x, last + 1)
                    x0[n], y0[n], x1[n], y1[n], direction[n], lab[n] = x, down_start[x], x, r, _SOUTH, down_lab[x]
                    n += 1
                down_lab[x] = down
                down_start[x] = r
            up = left if left > 0 and left != right else 0
            if up_lab[x] != up:
                if up_lab[x] > 0:  # a left-hand pixel's right side runs up: (x, last + 1) -> (x, first)
                    x0[n], y0[n], x1[n], y1[n], direction[n], lab[n] = x, r, x, up_start[x], _NORTH, up_lab[x]
                    n += 1
                up_lab[x] = up
                up_start[x] = r
        right_lab, right_start, left_lab, left_start = 0, 0, 0, 0
        for c in range(w + 1):  # horizontal pixel sides on line y = r; column w closes the runs
            above = labels[r - 1, c] if r > 0 and c < w else 0
            below = labels[r, c] if r < h and c < w else 0
            east = above if above > 0 and above != below else 0
            if right_lab != east:
                if right_lab > 0:  # an upper pixel's bottom side runs right: (first, y) -> (last + 1, y)
                    x0[n], y0[n], x1[n], y1[n], direction[n], lab[n] = right_start, r, c, r, _EAST, right_lab
                    n += 1
                right_lab = east
                right_start = c
            west = below if below > 0 and above != below else 0
            if left_lab != west:
                if left_lab > 0:  # a lower pixel's top side runs left: (last + 1, y) -> (first, y)
                    x0[n], y0[n], x1[n], y1[n], direction[n], lab[n] = c, r, left_start, r, _WEST, left_lab
                    n += 1
                left_lab = west
                left_start = c
    # each (corner, direction) starts at most one segment: a dense table finds successors
    stride = w + 1
    table = np.full((h + 1) * stride * 4, -1, np.int32)
    for i in range(n):
        table[(y0[i] * stride + x0[i]) * 4 + direction[i]] = i
    nxt = np.empty(n, np.int64)
    for i in range(n):
        base = (y1[i] * stride + x1[i]) * 4
        found = table[base + (direction[i] + 3) % 4]  # the right turn, where there is one
        if found < 0 or lab[found] != lab[i]:
            found = -1
            for d in range(4):  # else the only way on
                candidate = table[base + d]
                if candidate >= 0 and lab[candidate] == lab[i]:
                    found = candidate
                    break
        nxt[i] = found
    # whole-raster coordinates in int64
    return _rings(x0[:n] + np.int64(col_off), y0[:n] + np.int64(row_off), x1[:n] + np.int64(col_off),
                  y1[:n] + np.int64(row_off), direction[:n], lab[:n], nxt, n_labels + 1, False)


@numba.njit(cache=True, nogil=True)
def _merge(coords: np.ndarray, ring_of: np.ndarray, ring_owner: np.ndarray,  # pragma: no cover - compiled
           n_groups: int, seam_rows: np.ndarray, seam_cols: np.ndarray) -> _Rings:
    """:func:`merge_outlines` on flat coordinates: ``(coords, ring_offsets, polygon_offsets, polygon_label)``."""
    m = len(coords)
    # ring edges, those along a seam cut into pixel steps (counted first)
    total = 0
    for i in range(m - 1):
        if ring_of[i] == ring_of[i + 1]:
            total += _pieces_of_edge(coords, i, seam_rows, seam_cols)
    x0, y0, x1, y1, owner = np.empty((5, total), np.int64)
    seam = np.zeros(total, np.bool_)
    k = 0
    for i in range(m - 1):
        if ring_of[i] != ring_of[i + 1]:
            continue
        ax, ay, bx, by = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
        if not _on_seam(ax, ay, bx, by, seam_rows, seam_cols):  # whole
            x0[k], y0[k], x1[k], y1[k], owner[k] = ax, ay, bx, by, ring_owner[ring_of[i]]
            k += 1
            continue
        ux, uy = np.sign(bx - ax), np.sign(by - ay)
        for j in range(abs(bx - ax) + abs(by - ay)):  # pixel steps
            x0[k], y0[k], x1[k], y1[k] = ax + ux * j, ay + uy * j, ax + ux * (j + 1), ay + uy * (j + 1)
            owner[k] = ring_owner[ring_of[i]]
            seam[k] = True
            k += 1
    # a seam step shared by two pieces of a group: the same two corners, once each way; both go
    min_x, min_y = min(x0.min(), x1.min()), min(y0.min(), y1.min())
    span_x, span_y = max(x0.max(), x1.max()) - min_x + 1, max(y0.max(), y1.max()) - min_y + 1
    steps = np.flatnonzero(seam)
    key = np.empty(len(steps), np.int64)
    for j in range(len(steps)):
        i = steps[j]
        lo_x, lo_y = min(x0[i], x1[i]), min(y0[i], y1[i])
        key[j] = ((owner[i] * span_y + (lo_y - min_y)) * span_x + (lo_x - min_x)) * 2 + (y0[i] == y1[i])
    keep = np.ones(total, np.bool_)
    by_key = np.argsort(key)
    for j in range(len(by_key) - 1):
        if key[by_key[j]] == key[by_key[j + 1]]:
            keep[steps[by_key[j]]] = False
            keep[steps[by_key[j + 1]]] = False
    x0, y0, x1, y1, owner = x0[keep], y0[keep], x1[keep], y1[keep], owner[keep]
    n = len(x0)
    direction = np.empty(n, np.int64)
    for i in range(n):
        if y1[i] > y0[i]:
            direction[i] = _SOUTH
        elif x1[i] > x0[i]:
            direction[i] = _EAST
        elif y1[i] < y0[i]:
            direction[i] = _NORTH
        else:
            direction[i] = _WEST
    # successors over a wide span: starts sorted by (owner, corner, direction) and searched
    start = np.empty(n, np.int64)
    for i in range(n):
        start[i] = ((owner[i] * span_y + (y0[i] - min_y)) * span_x + (x0[i] - min_x)) * 4 + direction[i]
    order = np.argsort(start)
    sorted_start = start[order]
    nxt = np.empty(n, np.int64)
    for i in range(n):
        end = ((owner[i] * span_y + (y1[i] - min_y)) * span_x + (x1[i] - min_x)) * 4
        right = end + (direction[i] + 3) % 4  # the right turn, where there is one
        j = np.searchsorted(sorted_start, right)
        if j < n and sorted_start[j] == right:
            nxt[i] = order[j]
        else:  # else the only segment starting there
            nxt[i] = order[np.searchsorted(sorted_start, end)]
    return _rings(x0, y0, x1, y1, direction, owner, nxt, n_groups, True)


@numba.njit(cache=True, nogil=True, inline="always")
def _is_seam(value: int, seams: np.ndarray) -> np.bool_:  # pragma: no cover - compiled
    j = np.searchsorted(seams, value)
    return j < len(seams) and seams[j] == value


@numba.njit(cache=True, nogil=True, inline="always")
def _on_seam(ax: int, ay: int, bx: int, by: int,  # pragma: no cover - compiled
             seam_rows: np.ndarray, seam_cols: np.ndarray) -> np.bool_:
    """Whether the edge (a, b) lies along a seam: horizontal on a seam row, or vertical on a seam column."""
    if ay == by:
        return _is_seam(ay, seam_rows)
    return _is_seam(ax, seam_cols)


@numba.njit(cache=True, nogil=True, inline="always")
def _pieces_of_edge(coords: np.ndarray, i: int,  # pragma: no cover - compiled
                    seam_rows: np.ndarray, seam_cols: np.ndarray) -> int:
    """How many segments edge ``i -> i + 1`` becomes: one pixel step each along a seam, else one."""
    ax, ay, bx, by = coords[i, 0], coords[i, 1], coords[i + 1, 0], coords[i + 1, 1]
    if _on_seam(ax, ay, bx, by, seam_rows, seam_cols):
        steps: int = abs(bx - ax) + abs(by - ay)
        return steps
    return 1


@numba.njit(cache=True, nogil=True)
def _rings(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray,  # pragma: no cover - compiled
           direction: np.ndarray, lab: np.ndarray, nxt: np.ndarray, n_labels: int, straight_vertices: bool) -> _Rings:
    """Directed segments (inside on the left) and their successors to one polygon per label present.

    Walks each ring once, from its lowest segment; with ``straight_vertices`` segments
    may continue each other in a straight line and the vertices between them are
    dropped. Labels must be below ``n_labels``.

    Returns:
        ``(coords, ring_offsets, polygon_offsets, polygon_label)``: closed rings in
        shapely's ragged layout, each polygon its outer ring then its holes, by label.
    """
    n = len(x0)
    visited = np.zeros(n, np.bool_)
    walk = np.empty(n, np.int64)  # segments in walk order, ring after ring
    ring_start = np.empty(n + 1, np.int64)
    ring_lab = np.empty(n, np.int64)
    ring_hole = np.empty(n, np.bool_)
    k, n_rings = 0, 0
    for s in range(n):
        if visited[s]:
            continue
        ring_start[n_rings] = k
        doubled = 0  # twice the signed area: outer rings come out negative, holes positive
        i = s
        while not visited[i]:
            visited[i] = True
            walk[k] = i
            k += 1
            doubled += x0[i] * y1[i] - x1[i] * y0[i]
            i = nxt[i]
        ring_lab[n_rings] = lab[s]
        ring_hole[n_rings] = doubled > 0
        n_rings += 1
    ring_start[n_rings] = k
    # rings by label, the outer ring first (a counting sort)
    slot = np.zeros(n_labels + 1, np.int64)
    for r in range(n_rings):
        slot[ring_lab[r] + 1] += 1
    slot = np.cumsum(slot)
    ring_order = np.empty(n_rings, np.int64)
    for hole in (False, True):
        for r in range(n_rings):
            if ring_hole[r] == hole:
                ring_order[slot[ring_lab[r]]] = r
                slot[ring_lab[r]] += 1
    coords = np.empty((k + n_rings, 2), x0.dtype)
    ring_offsets = np.empty(n_rings + 1, np.int64)
    polygon_offsets = np.empty(n_rings + 1, np.int64)
    polygon_label = np.empty(n_rings, np.int64)
    m, n_polygons = 0, 0
    for j in range(n_rings):
        r = ring_order[j]
        ring_offsets[j] = m
        if not ring_hole[r]:
            polygon_offsets[n_polygons] = j
            polygon_label[n_polygons] = ring_lab[r]
            n_polygons += 1
        first, last = ring_start[r], ring_start[r + 1]
        before = walk[last - 1]
        opening = m
        for q in range(first, last):
            i = walk[q]
            if not straight_vertices or direction[i] != direction[before]:
                coords[m, 0] = x0[i]
                coords[m, 1] = y0[i]
                m += 1
            before = i
        coords[m, 0] = coords[opening, 0]  # closed
        coords[m, 1] = coords[opening, 1]
        m += 1
    ring_offsets[n_rings] = m
    polygon_offsets[n_polygons] = n_rings
    return coords[:m], ring_offsets, polygon_offsets[:n_polygons + 1], polygon_label[:n_polygons]
