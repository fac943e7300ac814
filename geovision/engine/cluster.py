"""Dask clients for a run, and the predictor each cluster worker keeps.

:class:`Clients` gives a run its client when first asked: of an existing cluster
(``--scheduler``) or of a quiet in-process cluster of reader threads. ``predict`` takes its
client from here (runs that are always local, such as ``stress``, use
:func:`geovision.tiling.stream.local_cluster`). On a cluster the workers read *and* predict:
the bundle's bytes are broadcast once and :func:`worker_predictor` loads them once per
worker process (:func:`read_and_predict` is the task).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from geovision.engine.protocols import Backend
from geovision.errors import ConfigError
from geovision.models.bundle import load_bundle_bytes
from geovision.models.factory import make_predictor
from geovision.tiling.reader import RasterInfo, read_tiles
from geovision.tiling.stream import local_client
from geovision.types import Tile

__all__ = ["Clients", "read_and_predict", "worker_predictor"]


class Clients:
    """The run's Dask client, made when first asked for, closed by :meth:`close`.

    Args:
        scheduler: address of an existing Dask scheduler; ``None`` for an in-process cluster.
        workers: reader threads of the in-process cluster (default 2-4).
    """

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self._client: Any = None

    @property
    def remote(self) -> bool:
        """Whether the run is on an existing cluster (whose workers cannot see this process's memory)."""
        return bool(self.scheduler)

    def get(self) -> Any:
        """The client: of the cluster at ``scheduler``, else of a new in-process one."""
        if self._client is not None:
            return self._client
        from distributed import Client

        if self.scheduler:
            try:
                self._client = Client(self.scheduler, timeout="20s")
            except OSError as exc:
                raise ConfigError(
                    f"cannot reach the Dask scheduler at {self.scheduler} ({exc}). Check the address "
                    "(e.g. tcp://10.0.0.5:8786) and that `dask scheduler` is running."
                ) from exc
        else:
            self._client = local_client(self.workers)
        return self._client

    def close(self) -> None:
        """Close the client, and the cluster if it is the run's own."""
        client, self._client = self._client, None
        if client is None:
            return
        client.close()
        if getattr(client, "cluster", None) is not None and not self.scheduler:
            client.cluster.close()


_WORKER_PREDICTORS: dict[tuple[str, str, str], Backend] = {}
_WORKER_LOCK = threading.Lock()


def worker_predictor(bundle_bytes: bytes, digest: str, device: str, precision: str) -> Backend:
    """The predictor for a bundle sent as raw safetensors bytes, loaded once per worker process."""
    key = (digest, device, precision)
    with _WORKER_LOCK:
        if key not in _WORKER_PREDICTORS:
            config, state = load_bundle_bytes(bundle_bytes, f"bundle {digest}")
            _WORKER_PREDICTORS[key] = make_predictor(config, state, device=device, precision=precision)
        return _WORKER_PREDICTORS[key]


def read_and_predict(
    info: RasterInfo, tile_size: int, bundle_bytes: bytes, digest: str, device: str, precision: str,
    tiles: Sequence[Tile],
) -> tuple[list[tuple[Tile, Any, np.ndarray | None]], list[Tile]]:
    """Cluster task: read a batch and run the model on the worker.

    Returns ``(tile, output, valid)`` per tile read (probabilities and validity for
    segmentation; boxes, and no validity, for detection) and the skipped tiles.
    """
    done, skipped = read_tiles(info, tiles, tile_size)
    if not done:
        return [], skipped
    predictor = worker_predictor(bundle_bytes, digest, device, precision)
    outs = predictor.predict(np.stack([t.data for t in done]), np.stack([t.valid for t in done]))
    keep_valid = predictor.task == "segmentation"
    return [(t.tile, o, t.valid if keep_valid else None) for t, o in zip(done, outs)], skipped
