"""Tile reading: datasets kept open per reading thread for a run, validity masks, first read tasks."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import write_raster

from geovision.engine.cluster import Clients
from geovision.engine.reading import read, read_batches, reads
from geovision.tiling import reader
from geovision.tiling.grid import TileGrid
from geovision.tiling.reader import open_raster, read_tiles, release


def _grid_raster(path: Path, *, nodata: float | None = None, mask: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, size=(3, 300, 420), dtype=np.uint8)
    if nodata is not None:
        data[:, :40, :] = nodata  # a strip of nodata across the top
    return write_raster(path, data, nodata=nodata, mask=mask)


def _read_all(info, tiles, keep):
    """Every tile, read by two threads in tasks of three tiles, as predict's readers do."""
    batches = [tiles[i:i + 3] for i in range(0, len(tiles), 3)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: read_tiles(info, b, 128, keep=keep), batches))
    read = {t.tile.index: t for r, _ in results for t in r}
    skipped = {t.index for _, s in results for t in s}
    return read, skipped


@pytest.mark.parametrize("kind", ["plain", "nodata", "mask"])
def test_kept_datasets_read_what_fresh_ones_do_and_close_on_release(tmp_path: Path, kind: str) -> None:
    mask = None
    if kind == "mask":
        mask = np.ones((300, 420), dtype=bool)
        mask[100:180, 200:330] = False
    path = _grid_raster(tmp_path / "r.tif", nodata=0 if kind == "nodata" else None, mask=mask)
    info = open_raster(str(path), [3, 1, 2], 3)
    tiles = TileGrid(info.height, info.width, 128, 32).tiles

    keep = f"run-{uuid.uuid4().hex}"  # a released run's name is not kept again
    fresh, fresh_skipped = _read_all(info, tiles, keep=None)
    kept, kept_skipped = _read_all(info, tiles, keep=keep)
    held = [e.dataset for (k, _, _), e in reader._KEPT.items() if k == keep]
    assert 1 <= len(held) <= 2 and all(not ds.closed for ds in held)  # one per reading thread
    release(keep)
    assert all(ds.closed for ds in held)
    assert not [k for k in reader._KEPT if k[0] == keep]

    assert kept.keys() == fresh.keys() and kept_skipped == fresh_skipped
    for index, t in fresh.items():
        np.testing.assert_array_equal(kept[index].data, t.data)
        np.testing.assert_array_equal(kept[index].valid, t.valid)
    valid = np.zeros((info.height, info.width), dtype=bool)
    for t in fresh.values():
        w = t.tile.window
        valid[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = t.valid[:w.height, :w.width]
    expected = np.ones((300, 420), dtype=bool)
    if kind == "nodata":
        expected[:40] = False
    if kind == "mask":
        expected = mask
    np.testing.assert_array_equal(valid, expected)


def test_reads_after_release_open_their_own(tmp_path: Path) -> None:
    info = open_raster(str(_grid_raster(tmp_path / "r.tif")), [1, 2, 3], 3)
    tiles = TileGrid(info.height, info.width, 128, 32).tiles
    read_tiles(info, tiles[:2], 128, keep="run-b")
    release("run-b")
    late, _ = read_tiles(info, tiles[:2], 128, keep="run-b")  # a read task that ran after the end
    fresh, _ = read_tiles(info, tiles[:2], 128)
    np.testing.assert_array_equal(late[1].data, fresh[1].data)
    assert not [k for k in reader._KEPT if k[0] == "run-b"]


@pytest.mark.parametrize(("n", "streams", "batch", "per_read"),
                         [(81, 2, 1, 4), (3, 4, 1, 4), (30, 2, 3, 4), (0, 2, 1, 4)])
def test_first_read_tasks_hold_one_pass_per_stream(n: int, streams: int, batch: int, per_read: int) -> None:
    tiles = list(range(n))
    batches = read_batches(tiles, streams, batch, per_read)
    assert [t for b in batches for t in b] == tiles
    head = min(n, streams * batch)
    assert all(len(b) <= batch for b in batches[: -(-head // batch)])
    assert all(len(b) <= max(batch, per_read) for b in batches)


def test_first_passes_are_read_here_the_rest_by_dask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict's reads: the first pass of each stream by the calling thread (before Dask's cluster
    starts), every later batch by the cluster's reader threads; all in grid order, as read alone."""
    import threading

    from geovision.engine import reading

    info = open_raster(str(_grid_raster(tmp_path / "r.tif", nodata=0)), [1, 2, 3], 3)
    tiles = TileGrid(info.height, info.width, 128, 32).tiles
    batches = read_batches(tiles, 2, 1, 4)
    readers: list[str] = []

    def noting(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return read_tiles(*args, **kwargs)

    monkeypatch.setattr(reading, "read_tiles", noting)
    clients = Clients()
    keep = f"run-{uuid.uuid4().hex}"
    try:
        got = list(reads(clients.get, batches, 2, info, 128, keep, prefetch=2))
        assert clients._client is not None
    finally:
        release(keep)
        clients.close()
    monkeypatch.undo()
    assert [b for b, _ in got] == batches
    assert readers[:2] == [threading.current_thread().name] * 2
    assert all(name != threading.current_thread().name for name in readers[2:]) and len(readers) == len(batches)
    for batch, (done, skipped) in got:
        alone, alone_skipped = read(info, 128, None, batch)
        assert [t.tile for t in done] == [t.tile for t in alone] and skipped == alone_skipped
        for a, b in zip(done, alone):
            np.testing.assert_array_equal(a.data, b.data)

    small = Clients()
    assert len(list(reads(small.get, batches[:2], 2, info, 128, keep, prefetch=2))) == 2
    assert small._client is None  # a raster of one pass per stream never starts a cluster
