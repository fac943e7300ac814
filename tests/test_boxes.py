"""Merging per-tile detections into one box per object (geovision.stitching.boxes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geovision.errors import ConfigError, GeovisionWarning
from geovision.stitching.boxes import DetectionMerger, Detections, merge_detections
from geovision.tiling.grid import TileGrid
from geovision.types import Tile, Window

TileBoxes = tuple[Tile, np.ndarray, np.ndarray, np.ndarray]


# --- helpers ------------------------------------------------------------------------


def perfect_views(grid: TileGrid, truth: np.ndarray, labels: np.ndarray, score: float = 0.9) -> list[TileBoxes]:
    """What a perfect detector reports per tile: ``object ∩ window`` for every object it sees
    with both sides >= 1 px, in grid order."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64)
    views = []
    for tile in grid:
        w = tile.window
        lo = np.maximum(truth[:, :2], [w.col_off, w.row_off])
        hi = np.minimum(truth[:, 2:], [w.col_end, w.row_end])
        seen = ((hi - lo) >= 1).all(axis=1)
        boxes = np.concatenate([lo, hi], axis=1)[seen]
        views.append((tile, boxes, np.full(len(boxes), score), labels[seen]))
    return views


def stream(grid: TileGrid, views: list[TileBoxes], *, skip_empty: bool = False, **options: Any) -> Detections:
    """Everything a :class:`DetectionMerger` returns for ``views`` fed in grid order."""
    merger = DetectionMerger(grid, **options)
    parts = []
    for tile, boxes, scores, labels in views:
        if skip_empty and len(boxes) == 0:
            parts.append(merger.skip(tile))
        else:
            parts.append(merger.add(tile, boxes, scores, labels))
    parts.append(merger.finish())
    assert merger.pending == 0
    return Detections.concat(parts)


def table(det: Detections) -> np.ndarray:
    """``(N, 7)`` rows (boxes, score, label, sources) in a canonical order, for exact comparison."""
    rows = np.column_stack([det.boxes, det.scores, det.labels, det.sources])
    return rows[np.lexsort(rows.T[::-1])]


def assert_same(a: Detections, b: Detections) -> None:
    np.testing.assert_array_equal(table(a), table(b))


def assert_objects(det: Detections, truth: np.ndarray, labels: np.ndarray) -> None:
    """Exactly one box per true object: equal to it, with its label."""
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    assert len(det) == len(truth)
    got = np.column_stack([det.boxes, det.labels])
    want = np.column_stack([truth, labels])
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])])


# --- a hand-made scene -------------------------------------------------------------

# 704 x 704 raster, 256 px tiles, 32 px overlap: windows [0, 256), [224, 480), [448, 704) on each axis.
GRID = TileGrid(704, 704, 256, 32)
SCENE = np.array([
    # col0, row0, col1, row1, label
    (200, 20, 240, 60, 0),  # vertical seam: whole in the left tile, a fragment in the right one
    (240, 70, 270, 110, 1),  # crosses the whole overlap: whole in the right tile only
    (150, 120, 300, 170, 0),  # 150 px, wider than the overlap: fragments only
    (60, 200, 100, 240, 2),  # horizontal seam
    (210, 210, 270, 270, 1),  # four-tile corner
    (380, 380, 530, 530, 0),  # 150 px over four tiles, fragments only
    (0, 300, 30, 340, 2),  # on the raster's left edge
    (674, 0, 704, 20, 1),  # in the raster's top-right corner
    (300, 684, 340, 704, 0),  # on the raster's bottom edge
    (230, 560, 250, 590, 2),  # fully inside a vertical overlap: whole in two tiles
    (455, 228, 475, 250, 0),  # fully inside a four-tile overlap: whole in four tiles
    (245, 620, 255, 640, 1),  # 1 px from a tile side (flagged cut there) but whole in the next tile
    (100, 455, 130, 500, 1),  # horizontal seam, whole in the lower tile
    (500, 100, 690, 300, 2),  # large, over two tiles
])
TRUTH, LABELS = SCENE[:, :4], SCENE[:, 4]


def test_hand_made_scene_one_whole_box_per_object() -> None:
    views = perfect_views(GRID, TRUTH, LABELS)
    merged = merge_detections(views)
    assert_objects(merged, TRUTH, LABELS)
    seen_by = {tuple(b): n for b, n in zip(merged.boxes.tolist(), merged.sources.tolist())}
    assert seen_by[(455.0, 228.0, 475.0, 250.0)] == 4
    assert seen_by[(380.0, 380.0, 530.0, 530.0)] == 4
    assert seen_by[(0.0, 300.0, 30.0, 340.0)] == 1
    np.testing.assert_array_equal(merged.scores, 0.9)
    assert_same(stream(GRID, views), merged)


@pytest.mark.parametrize("fusion", ["best", "wbf"])
def test_hand_made_scene_both_fusions_and_skipped_tiles(fusion: str) -> None:
    views = perfect_views(GRID, TRUTH, LABELS)
    merged = merge_detections(views, fusion=fusion)
    assert_objects(merged, TRUTH, LABELS)
    assert_same(stream(GRID, views, skip_empty=True, fusion=fusion), merged)


def test_classes_are_kept_apart_and_touching_objects_are_not_merged() -> None:
    truth = np.array([
        (200, 40, 240, 80),  # two classes at the same place, on a seam
        (200, 40, 240, 80),
        (230, 120, 240, 150),  # two touching objects of one class, inside the overlap
        (240, 120, 250, 150),
        (180, 180, 240, 200),  # and two touching across the seam
        (240, 180, 300, 200),
    ])
    labels = np.array([0, 1, 2, 2, 2, 2])
    grid = TileGrid(256, 480, 256, 32)
    views = perfect_views(grid, truth, labels)
    merged = merge_detections(views)
    assert_objects(merged, truth, labels)
    assert_same(stream(grid, views), merged)


# --- imperfect detectors ------------------------------------------------------------

# One row of two tiles: windows [0, 256) and [224, 480), overlap [224, 256).
PAIR = TileGrid(256, 480, 256, 32)
LEFT, RIGHT = PAIR.tiles


def views_of(*per_tile: list[tuple[tuple[float, float, float, float], float, int]]) -> list[TileBoxes]:
    """Tile views from ``[(bbox_xyxy, score, label), ...]`` per tile, in grid order."""
    views = []
    for tile, items in zip(PAIR.tiles, per_tile):
        boxes = np.array([b for b, _, _ in items], dtype=np.float64).reshape(-1, 4)
        scores, labels = np.array([s for _, s, _ in items]), np.array([c for _, _, c in items], np.int64)
        views.append((tile, boxes, scores, labels))
    return views


def test_two_uncut_duplicates_become_one_best_box() -> None:
    views = views_of([((230, 100, 250, 130), 0.9, 3)], [((231, 101, 251, 131), 0.8, 3)])
    merged = merge_detections(views)
    np.testing.assert_array_equal(merged.boxes, [[230, 100, 250, 130]])
    assert merged.scores.tolist() == [0.9] and merged.labels.tolist() == [3] and merged.sources.tolist() == [2]
    assert_same(stream(PAIR, views), merged)


def test_duplicates_that_do_not_link_are_suppressed_by_nms() -> None:
    views = views_of([((230, 100, 250, 130), 0.9, 3)], [((231, 101, 251, 131), 0.8, 3)])
    merged = merge_detections(views, match_iou=0.95)  # IoU 0.85: not linked, but above nms_iou
    np.testing.assert_array_equal(merged.boxes, [[230, 100, 250, 130]])
    assert merged.sources.tolist() == [1]
    assert_same(stream(PAIR, views, match_iou=0.95), merged)


def test_fragment_inside_a_whole_box_is_dropped_without_linking() -> None:
    whole = ((200, 100, 240, 140), 0.7, 1)
    # the right tile sees a shifted, too short piece: IoU 0.39 with the whole box's part in the
    # overlap (no link), IoU 0.16 with the whole box (no NMS), but cut and fully inside it
    fragment = ((224, 102, 231, 138), 0.95, 1)
    views = views_of([whole], [fragment])
    merged = merge_detections(views)
    np.testing.assert_array_equal(merged.boxes, [[200, 100, 240, 140]])
    assert merged.scores.tolist() == [0.7] and merged.sources.tolist() == [1]
    assert_same(stream(PAIR, views), merged)

    # the same box not touching the tile edge is no fragment: it stays
    uncut = ((226, 102, 233, 138), 0.95, 1)
    assert len(merge_detections(views_of([whole], [uncut]))) == 2


def test_boxes_are_compared_only_where_their_detections_overlap() -> None:
    # A (left tile, cut on the right) and B (right tile, cut on the left) link; the fused box
    # (150, 110, 300, 180) takes its lower rows from B, so it covers a corner neither saw
    a, b = ((150, 100, 256, 140), 0.6, 0), ((224, 110, 300, 180), 0.9, 0)
    corner = ((150, 140, 224, 180), 0.5, 0)  # touches A and B, IoU 0.28 with the fused box
    views = views_of([a, corner], [b])
    merged = merge_detections(views, match_iou=0.3, nms_iou=0.25)
    np.testing.assert_array_equal(table(merged)[:, :4], [[150, 110, 300, 180], [150, 140, 224, 180]])
    assert_same(stream(PAIR, views, match_iou=0.3, nms_iou=0.25), merged)


def test_wbf_averages_uncut_duplicates_by_score() -> None:
    views = views_of([((230, 100, 250, 130), 0.9, 0)], [((232, 104, 254, 136), 0.6, 0)])
    merged = merge_detections(views, fusion="wbf")
    assert len(merged) == 1
    expected = [(0.9 * a + 0.6 * b) / 1.5 for a, b in zip((230, 100, 250, 130), (232, 104, 254, 136))]
    assert merged.boxes[0].tolist() == pytest.approx(expected)  # 230.8, 101.6, 251.6, 132.4
    assert merged.scores.tolist() == [0.9] and merged.sources.tolist() == [2]
    assert_same(stream(PAIR, views, fusion="wbf"), merged)


def test_wbf_keeps_the_extreme_of_sides_every_member_has_cut() -> None:
    # an object wider than the overlap: the left piece is cut on the right, the right one on the left
    views = views_of([((150, 100, 256, 130), 0.9, 0)], [((224, 100, 300, 130), 0.5, 0)])
    merged = merge_detections(views, fusion="wbf")
    np.testing.assert_array_equal(merged.boxes, [[150, 100, 300, 130]])


def test_clipping_and_min_size() -> None:
    views = views_of([((-20, 10, 40, 50), 0.5, 0), ((100, 100, 100.5, 140), 0.5, 0)], [])
    merged = merge_detections(views)
    np.testing.assert_array_equal(merged.boxes, [[0, 10, 40, 50]])  # clipped; the 0.5 px sliver dropped


# --- empty inputs, skipped and missing tiles ---------------------------------------


def test_empty_inputs() -> None:
    assert len(merge_detections([])) == 0
    empty = [(t, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)) for t in GRID]
    merged = merge_detections(empty)
    assert len(merged) == 0 and merged.boxes.shape == (0, 4) and merged.labels.dtype == np.int64
    merger = DetectionMerger(GRID)
    assert all(len(merger.skip(t)) == 0 for t in GRID)
    assert len(merger.finish()) == 0
    assert len(Detections.concat([])) == 0 and len(Detections.concat([Detections.empty()] * 2)) == 0


def test_skipped_tiles_release_what_they_complete() -> None:
    grid = TileGrid(256, 480, 256, 32)
    left, right = grid.tiles
    merger = DetectionMerger(grid)
    boxes = np.array([[10, 10, 30, 30], [200, 10, 250, 30]])
    out = merger.add(left, boxes, np.array([0.9, 0.8]), np.array([0, 0]))
    np.testing.assert_array_equal(out.boxes, [[10, 10, 30, 30]])  # meets no other tile: final at once
    assert merger.pending == 1  # the other one reaches into the right tile
    out = merger.skip(right)
    np.testing.assert_array_equal(out.boxes, [[200, 10, 250, 30]])
    assert merger.pending == 0 and len(merger.finish()) == 0


def test_finish_warns_about_missing_tiles_and_returns_what_is_held() -> None:
    views = perfect_views(GRID, TRUTH, LABELS)
    merger = DetectionMerger(GRID)
    parts = [merger.add(*view) for view in views[:4]]
    held = merger.pending
    assert held > 0
    with pytest.warns(GeovisionWarning, match="4 of the grid's 9 tiles"):
        parts.append(merger.finish())
    assert merger.pending == 0
    # what came back is the one-shot merge of the tiles that arrived
    assert_same(Detections.concat(parts), merge_detections(views[:4], raster_shape=(704, 704)))
    with pytest.raises(RuntimeError, match="finished"):
        merger.add(*views[4])


def test_tiles_must_arrive_in_grid_order() -> None:
    merger = DetectionMerger(GRID)
    tiles = GRID.tiles
    with pytest.raises(ValueError, match=r"next tile in grid order is \(0, 0\)"):
        merger.skip(tiles[1])
    merger.skip(tiles[0])
    with pytest.raises(ValueError, match="twice|next tile"):
        merger.skip(tiles[0])
    with pytest.raises(ValueError, match="window"):
        merger.skip(Tile((0, 1), Window(0, 200, 256, 256)))

    # a tile whose arrays are refused has not arrived: it can be added again
    merger = DetectionMerger(GRID)
    with pytest.raises(ValueError, match="col1 < col0"):
        merger.add(tiles[0], np.array([[50, 10, 40, 20]]), np.ones(1), np.zeros(1, np.int64))
    assert len(merger.add(tiles[0], np.array([[5, 10, 40, 20]]), np.ones(1), np.zeros(1, np.int64))) == 1


def test_bad_options_and_arrays() -> None:
    with pytest.raises(ConfigError, match="best, wbf"):
        merge_detections([], fusion="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="match_iou"):
        DetectionMerger(GRID, match_iou=0)
    tile = GRID.tiles[0]
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        merge_detections([(tile, np.zeros((2, 5)), np.zeros(2), np.zeros(2, np.int64))])
    with pytest.raises(ValueError, match="col1 < col0"):
        merge_detections([(tile, np.array([[50, 10, 40, 20]]), np.ones(1), np.zeros(1, np.int64))])
    with pytest.raises(ValueError, match="one score and label per box"):
        merge_detections([(tile, np.array([[5, 10, 40, 20]]), np.ones(2), np.zeros(1, np.int64))])


# --- memory -------------------------------------------------------------------------


def test_pending_stays_within_about_two_tile_rows() -> None:
    grid = TileGrid(4000, 600, 128, 16)  # 36 x 6 tiles
    rng = np.random.default_rng(7)
    truth = random_objects(rng, grid, 900, max_side=60)
    views = perfect_views(grid, truth, np.zeros(len(truth), np.int64))
    per_row = np.zeros(grid.shape[0], np.int64)
    for tile, boxes, _, _ in views:
        per_row[tile.index[0]] += len(boxes)
    two_rows = int((per_row[:-1] + per_row[1:]).max())

    merger = DetectionMerger(grid)
    parts, most = [], 0
    for view in views:
        parts.append(merger.add(*view))
        most = max(most, merger.pending)
    parts.append(merger.finish())
    assert_objects(Detections.concat(parts), truth, np.zeros(len(truth), np.int64))
    assert 0 < most <= two_rows
    assert most < per_row.sum() / 8  # far from everything


def random_objects(rng: np.random.Generator, grid: TileGrid, n: int, max_side: int) -> np.ndarray:
    """Up to ``n`` random integer boxes that share no area."""
    kept: list[tuple[int, int, int, int]] = []
    occupied = np.zeros((grid.height, grid.width), dtype=bool)
    for _ in range(n):
        w, h = rng.integers(1, max_side + 1, size=2)
        x, y = rng.integers(0, grid.width - w + 1), rng.integers(0, grid.height - h + 1)
        if not occupied[y : y + h, x : x + w].any():
            occupied[y : y + h, x : x + w] = True
            kept.append((x, y, x + w, y + h))
    return np.array(kept, dtype=np.float64).reshape(-1, 4)


# --- properties ---------------------------------------------------------------------


@st.composite
def scenes(draw: st.DrawFn) -> tuple[TileGrid, np.ndarray, np.ndarray]:
    """A grid and non-overlapping objects, some larger than the overlap (some than a tile)."""
    height, width = draw(st.integers(64, 700)), draw(st.integers(64, 700))
    tile = draw(st.integers(48, 256))
    overlap = draw(st.integers(1, tile // 2 - 1))
    grid = TileGrid(height, width, tile, overlap)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    max_side = draw(st.sampled_from([8, 40, tile, 2 * tile]))
    truth = random_objects(rng, grid, draw(st.integers(0, 40)), max_side=min(max_side, height, width))
    labels = rng.integers(0, 3, size=len(truth))
    return grid, truth, labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_perfect_detector_gives_every_object_once_and_streaming_agrees(
    scene: tuple[TileGrid, np.ndarray, np.ndarray],
) -> None:
    grid, truth, labels = scene
    views = perfect_views(grid, truth, labels)
    merged = merge_detections(views)
    assert_objects(merged, truth, labels)
    assert_same(stream(grid, views), merged)


@st.composite
def merge_options(draw: st.DrawFn) -> dict[str, Any]:
    return dict(
        fusion=draw(st.sampled_from(["best", "wbf"])),
        match_iou=draw(st.sampled_from([0.3, 0.5])),
        nms_iou=draw(st.sampled_from([0.3, 0.5, 0.7])),
        contain=draw(st.sampled_from([0.5, 0.8])),
        edge_tol=draw(st.sampled_from([0.0, 1.0, 3.0])),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes(), merge_options(), st.sampled_from([0.5, 2.0, 6.0]), st.integers(0, 2**32 - 1))
def test_streaming_equals_one_shot_merge_for_noisy_detectors(
    scene: tuple[TileGrid, np.ndarray, np.ndarray], options: dict[str, Any], noise: float, seed: int
) -> None:
    """Jittered views, repeated and spurious boxes, random scores with ties: same boxes either way."""
    grid, truth, labels = scene
    rng = np.random.default_rng(seed)
    noisy = []
    for tile, boxes, _, view_labels in perfect_views(grid, truth, labels):
        again = rng.random(len(boxes)) < 0.3
        extra = rng.integers(0, 6)
        spurious = rng.uniform(0, 1, size=(extra, 4)) * [grid.width, grid.height, 120, 120]
        spurious[:, 2:] += spurious[:, :2]
        boxes = np.concatenate([boxes, boxes[again]])
        boxes = np.concatenate([boxes + rng.normal(0, noise, size=boxes.shape), spurious])
        if rng.random() < 0.5:
            boxes = boxes.round()  # equal coordinates happen too
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        scores = rng.uniform(0.1, 1.0, size=len(boxes)).round(1)  # ties happen
        view_labels = np.concatenate([view_labels, view_labels[again], rng.integers(0, 3, size=extra)])
        noisy.append((tile, boxes, scores, view_labels))
    merged = merge_detections(noisy, **options)
    assert_same(stream(grid, noisy, **options), merged)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.sampled_from([0.3, 0.5, 0.7]))
def test_duplicate_suppression_is_torchvisions_batched_nms(seed: int, n: int, nms_iou: float) -> None:
    """Within one tile (nothing cut, nothing to link) the merge keeps what batched_nms keeps."""
    import torch
    from torchvision.ops import batched_nms

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, size=(n, 2))
    wh = rng.uniform(5, 30, size=(n, 2))
    # unrounded coordinates: with rounded ones an IoU can land on the threshold itself
    # (0.30000000000000004 against 0.3), where two correct formulas may round either way
    boxes = np.hstack([xy, xy + wh])
    scores = rng.permutation(n) / n + 0.01  # distinct scores: batched_nms's order is then unambiguous
    labels = rng.integers(1, 3, size=n)
    tile = Tile((0, 0), Window(0, 0, 128, 128))
    merged = merge_detections([(tile, boxes, scores, labels)], nms_iou=nms_iou, contain=1.0)
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), nms_iou)
    expected = {tuple(b) for b in boxes[keep.numpy()].tolist()}
    assert {tuple(b) for b in merged.boxes.tolist()} == expected
