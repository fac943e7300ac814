"""One raster through the engine: reading ahead, the model, the stitcher behind.

:func:`run_local` reads on Dask threads and runs the model in this process
(:class:`~geovision.models.inference.InferencePool`); :func:`run_on_cluster` sends
read-and-predict tasks to a cluster's workers and only stitches here. Both hand the
consumer one :data:`~geovision.engine.protocols.StitchMessage` per tile, in grid order,
through the :class:`~geovision.engine.stitcher.Stitcher`.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from geovision.engine.cluster import Clients, read_and_predict
from geovision.engine.progress import Progress
from geovision.engine.protocols import StitchMessage, TileConsumer, TileResult, TileSkipped
from geovision.engine.reading import READ_BATCH, in_grid_order, passes, read_batches, reads, watched
from geovision.engine.stitcher import Stitcher
from geovision.engine.summary import RasterRun
from geovision.models.inference import InferencePool
from geovision.tiling.grid import TileGrid
from geovision.tiling.reader import release
from geovision.tiling.stream import batched, stream
from geovision.types import Tile

__all__ = ["ClusterModel", "RasterFinisher", "heap_frozen", "run_local", "run_on_cluster"]


def run_local(run: RasterRun, grid: TileGrid, consumer: TileConsumer, pool: InferencePool, clients: Clients,
              progress: Progress, tile_size: int, workers: int | None = None) -> None:
    """Stream one raster's tiles through Dask readers, the pool's passes and ``consumer``."""
    tiles = grid.tiles
    run.tiles_total = len(tiles)
    plan = pool.plan
    # readers stay a few read tasks ahead of the passes in flight
    prefetch = max(2, workers or 2, plan.streams)
    keep = f"predict-{uuid.uuid4().hex}"  # the token under which the reading threads keep the raster open
    batches = read_batches(tiles, plan.streams, plan.batch_size, READ_BATCH)
    read = reads(clients.get, batches, plan.streams, run.info, tile_size, keep, prefetch)
    jobs = (
        ((part, done, skipped),
         np.stack([t.data for t in done]) if done else None,
         np.stack([t.valid for t in done]) if done else None)
        for whole, (all_done, all_skipped) in watched(read, run.drift_monitor)
        for part, done, skipped in passes(whole, all_done, all_skipped, plan.batch_size)
    )
    try:
        with Stitcher(consumer) as stitcher:
            for (part, done, skipped), outs in pool.map(jobs):
                messages: list[StitchMessage] = [TileSkipped(t) for t in skipped]
                if done:
                    messages += [TileResult(t.tile, o, t.valid) for t, o in zip(done, outs)]
                _account(run, progress, len(done), len(skipped), part)
                stitcher.put(in_grid_order(messages, part))
    finally:
        release(keep)


class ClusterModel:
    """The bundle as a cluster's workers get it: its bytes, broadcast once, and their digest."""

    def __init__(self, clients: Clients, raw: bytes, digest: str, device: str, precision: str,
                 batch_size: int) -> None:
        [self.future] = clients.get().scatter([raw], broadcast=True)
        self.digest, self.device, self.precision, self.batch_size = digest, device, precision, batch_size


def run_on_cluster(run: RasterRun, grid: TileGrid, consumer: TileConsumer, model: ClusterModel, clients: Clients,
                   progress: Progress, tile_size: int, workers: int | None = None) -> None:
    """Stream one raster's tiles as read-and-predict tasks on the cluster's workers into ``consumer``."""
    tiles = grid.tiles
    run.tiles_total = len(tiles)
    prefetch = max(2, 2 * (workers or 2))
    results = stream(clients.get(), read_and_predict, batched(tiles, model.batch_size), run.info, tile_size,
                     model.future, model.digest, model.device, model.precision, prefetch=prefetch)
    with Stitcher(consumer) as stitcher:
        for batch, (done, skipped) in results:
            messages: list[StitchMessage] = [TileResult(t, o, v) for t, o, v in done]
            messages += [TileSkipped(t) for t in skipped]
            _account(run, progress, len(done), len(skipped), batch)
            stitcher.put(in_grid_order(messages, batch))


def _account(run: RasterRun, progress: Progress, processed: int, skipped: int, batch: Sequence[Tile]) -> None:
    run.tiles_processed += processed
    run.tiles_skipped += skipped
    progress.update(len(batch), sum(t.window.height * t.window.width for t in batch))


class RasterFinisher:
    """Runs each raster's COG copies on one thread of its own.

    GDAL's COG copy (overviews, deflate) then overlaps the next raster's inference, or,
    after the last, the vector writer's end.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geovision-cog")
        self._jobs: list[Future[None]] = []

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.append(self._pool.submit(job))

    def wait(self) -> None:
        """Wait for every copy; raise the first error."""
        try:
            for job in self._jobs:
                job.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Drop the copies not begun and wait for the one under way (its files go with the outputs)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the objects alive at the start (torch, pandas, the model...) out of the collector's sweeps.

    A run makes hundreds of thousands of short-lived objects, whose full collections
    would otherwise walk every object in the process while holding the GIL. Left alone
    when the collector is off or the caller froze the heap already.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
