"""Stream tile batches through Dask with bounded read-ahead.

Batches are submitted to a Dask client (a local in-process cluster of reader
threads by default, or an existing cluster) and consumed in submission order,
with at most ``prefetch`` batches in flight: the readers stay ahead of the
model, and memory holds only the batches in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from geovision.types import Tile

if TYPE_CHECKING:
    from distributed import Client


def batched(tiles: Sequence[Tile], size: int) -> list[list[Tile]]:
    """Split ``tiles`` (row-major) into consecutive batches of ``size``."""
    if size <= 0:
        raise ValueError(f"batch size must be positive, got {size}")
    return [list(tiles[i : i + size]) for i in range(0, len(tiles), size)]


def stream(
    client: Any,
    func: Callable[..., Any],
    batches: Sequence[Sequence[Tile]],
    *args: Any,
    prefetch: int,
    **kwargs: Any,
) -> Iterator[tuple[Sequence[Tile], Any]]:
    """Yield ``(batch, func(*args, batch, **kwargs))`` in order, running ``func`` on the Dask client.

    At most ``prefetch`` batches are submitted ahead of the one being consumed.
    If the consumer stops early, the outstanding futures are cancelled.
    """
    pending: deque[tuple[Sequence[Tile], Any]] = deque()
    it = iter(batches)
    try:
        for batch in it:
            pending.append((batch, client.submit(func, *args, batch, pure=False, **kwargs)))
            if len(pending) >= prefetch:
                break
        while pending:
            batch, future = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, client.submit(func, *args, nxt, pure=False, **kwargs)))
            yield batch, future.result()
    finally:
        for _, future in pending:
            future.cancel()


#: Dask settings for the in-process reader cluster. Its defaults suit a long-lived cluster
#: watched from a dashboard: the worker's profiler samples every thread's stack every 10 ms and
#: the monitors wake several times a second, CPU taken from the model on a small machine.
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "5s",
    "distributed.admin.tick.interval": "1s",
    "distributed.scheduler.http.routes": [],
}


def local_client(threads: int | None = None) -> Client:
    """A quiet in-process Dask cluster of ``threads`` reader threads (default 2-4) and its client.

    Closing the client does not close the cluster: close ``client.cluster`` too.
    """
    import logging
    import os

    import dask
    from distributed import Client, LocalCluster

    threads = threads or max(2, min(4, os.cpu_count() or 2))
    # an in-process cluster's start/stop chatter is not for the user (Dask's own
    # silence_logs misses the loggers that talk while the cluster starts)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with dask.config.set(QUIET_LOCAL_CLUSTER):  # read when the scheduler and worker are built
        # dashboard_address=None still opens Dask's HTTP server on :8787 (taken by, or exposed
        # next to, the user's own Dask): a random local port, no dashboard, no routes
        cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                               dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                               silence_logs=logging.CRITICAL)
    return Client(cluster)


@contextmanager
def local_cluster(threads: int | None = None) -> Iterator[Client]:
    """:func:`local_client` as a context manager that closes the client and its cluster."""
    client = local_client(threads)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
