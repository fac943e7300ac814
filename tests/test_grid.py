"""Property tests for the pure tile-grid math and the blend weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovision.tiling.blend import taper_weights
from geovision.tiling.grid import BlockGrid, TileGrid, axis_starts

SIZES = st.integers(1, 3000)


@st.composite
def tile_and_overlap(draw: st.DrawFn, max_tile: int = 600) -> tuple[int, int]:
    tile = draw(st.integers(8, max_tile))
    overlap = draw(st.integers(0, tile - 1))
    return tile, overlap


def check_axis(size: int, tile: int, overlap: int, starts: list[int]) -> None:
    """Every property one axis of a tile grid must have."""
    if size <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] + tile == size  # first at the start, last flush with the end
    assert all(0 <= s and s + tile <= size for s in starts)  # inside the raster, full size
    assert all(b > a for a, b in zip(starts, starts[1:]))  # strictly increasing: no duplicates
    overlaps = [a + tile - b for a, b in zip(starts, starts[1:])]
    assert all(o == overlap for o in overlaps[:-1])  # exact overlap ...
    assert overlaps[-1] >= overlap  # ... except the last pair, which slid back
    assert overlaps[-1] < tile  # (and still advances)
    covered = np.zeros(size, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@settings(max_examples=300, deadline=None)
@given(size=SIZES, to=tile_and_overlap())
def test_axis_starts(size: int, to: tuple[int, int]) -> None:
    tile, overlap = to
    check_axis(size, tile, overlap, axis_starts(size, tile, overlap))


def test_axis_starts_example() -> None:
    assert axis_starts(1000, 512, 64) == [0, 448, 488]
    assert axis_starts(512, 512, 64) == [0]
    assert axis_starts(513, 512, 0) == [0, 1]


@settings(max_examples=200, deadline=None)
@given(height=SIZES, width=SIZES, to=tile_and_overlap())
def test_tile_grid(height: int, width: int, to: tuple[int, int]) -> None:
    tile, overlap = to
    grid = TileGrid(height, width, tile, overlap)
    check_axis(height, tile, overlap, grid.row_starts)
    check_axis(width, tile, overlap, grid.col_starts)
    rows, cols = grid.shape
    assert len(grid) == rows * cols
    if len(grid) > 20_000:  # stride-1 grids over big rasters: the per-axis checks above cover them
        return

    tiles = grid.tiles
    assert len(tiles) == len(grid)
    th, tw = min(tile, height), min(tile, width)
    windows = [t.window for t in tiles]
    assert len(set(windows)) == len(windows)  # no duplicate tiles
    assert [t.index for t in tiles] == [(i, j) for i in range(rows) for j in range(cols)]  # row-major
    for w in windows:
        assert (w.height, w.width) == (th, tw)  # full size unless the raster is smaller
        assert w.row_off >= 0 and w.col_off >= 0 and w.row_end <= height and w.col_end <= width

    # Every pixel covered at least once: 2-D difference array, exact for any grid.
    diff = np.zeros((height + 1, width + 1), dtype=np.int32)
    r0 = np.array([w.row_off for w in windows])
    c0 = np.array([w.col_off for w in windows])
    np.add.at(diff, (r0, c0), 1)
    np.add.at(diff, (r0 + th, c0), -1)
    np.add.at(diff, (r0, c0 + tw), -1)
    np.add.at(diff, (r0 + th, c0 + tw), 1)
    counts = diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]
    assert counts.min() >= 1


@settings(max_examples=100, deadline=None)
@given(data=st.data(), to=tile_and_overlap())
def test_raster_smaller_than_a_tile(data: st.DataObject, to: tuple[int, int]) -> None:
    tile, overlap = to
    height = data.draw(st.integers(1, tile), label="height")
    width = data.draw(st.integers(1, 3000), label="width")
    grid = TileGrid(height, width, tile, overlap)
    assert grid.row_starts == [0]
    assert all(t.window.height == height and t.window.row_off == 0 for t in grid.tiles[:50])
    small = TileGrid(height, min(width, tile), tile, overlap)
    assert len(small) == 1
    (only,) = small.tiles
    assert (only.window.height, only.window.width) == (height, min(width, tile))


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 160),
    width=st.integers(1, 160),
    to=tile_and_overlap(max_tile=64),
    block=st.integers(1, 80),
)
def test_block_tile_counts_brute_force(height: int, width: int, to: tuple[int, int], block: int) -> None:
    tile, overlap = to
    tiles = TileGrid(height, width, tile, overlap).tiles
    blocks = BlockGrid(height, width, block)
    counts = blocks.tile_counts(tiles)
    assert counts.shape == blocks.shape == (-(-height // block), -(-width // block))

    area = 0
    for i in range(blocks.shape[0]):
        for j in range(blocks.shape[1]):
            bw = blocks.window((i, j))
            area += bw.height * bw.width
            assert bw.row_end <= height and bw.col_end <= width
            expected = sum(
                t.window.row_off < bw.row_end
                and bw.row_off < t.window.row_end
                and t.window.col_off < bw.col_end
                and bw.col_off < t.window.col_end
                for t in tiles
            )
            assert counts[i, j] == expected, (i, j)
    assert area == height * width  # the blocks partition the raster
    assert counts.min() >= 1  # every block is fed by some tile
    assert counts.sum() == sum(len(blocks.blocks_touching(t.window)) for t in tiles)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 10, 8, 0), "positive"),
        ((10, 0, 8, 0), "positive"),
        ((-5, 10, 8, 0), "positive"),
        ((10, 10, 0, 0), "tile_size"),
        ((10, 10, -8, 0), "tile_size"),
        ((10, 10, 8, -1), "overlap"),
        ((10, 10, 8, 8), "overlap"),
        ((10, 10, 8, 20), "overlap"),
    ],
)
def test_tile_grid_invalid_args(args: tuple[int, int, int, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        TileGrid(*args)


@pytest.mark.parametrize("args", [(0, 8, 0), (-1, 8, 0), (100, 0, 0), (100, 10, -1), (100, 10, 10), (100, 10, 20)])
def test_axis_starts_invalid_args(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        axis_starts(*args)


@pytest.mark.parametrize("args", [(10, 10, 0), (10, 10, -4), (0, 10, 8), (10, -1, 8)])
def test_block_grid_invalid_args(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        BlockGrid(*args)


# --- blend weights ----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 200), width=st.integers(1, 200), ramp=st.integers(0, 60))
def test_taper_weights(height: int, width: int, ramp: int) -> None:
    w = taper_weights(height, width, ramp)
    assert w.shape == (height, width) and w.dtype == np.float32
    assert (w > 0).all() and (w <= 1).all()
    np.testing.assert_array_equal(w, w[::-1, :])  # symmetric top/bottom
    np.testing.assert_array_equal(w, w[:, ::-1])  # and left/right
    if height == width:
        np.testing.assert_array_equal(w, w.T)
    if ramp == 0:
        assert (w == 1).all()
        return
    assert np.isclose(w[0, 0], 1 / (ramp + 1))  # the edge is lowest
    assert np.isclose(w.min(), 1 / (ramp + 1))
    interior = w[ramp : height - ramp, ramp : width - ramp]  # >= ramp pixels from every edge
    assert (interior == 1).all()
    if height > 2 * ramp and width > 2 * ramp:
        assert interior.size > 0
    half = w[: (height + 1) // 2, (width - 1) // 2]  # rises (weakly) towards the centre
    assert (np.diff(half) >= 0).all()
    assert not w.flags.writeable  # cached: callers must not change it
