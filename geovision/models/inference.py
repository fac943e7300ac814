"""Running a predictor over a stream of batches: several forward passes side by side on the CPU.

On a CPU, torch splits each operation of one forward pass over its threads and
waits for all of them at the end of every operation. Two things follow on a
small machine:

* Two single-threaded forward passes side by side get through more tiles per
  second than one pass spread over two threads, because each pass does without
  the per-operation barriers.
* When other work (reading tiles, stitching blocks) takes a core, a pass split
  over both cores stalls at every barrier until it gets the core back; of two
  independent passes only the one that lost the core slows down.

:func:`plan_inference` picks the number of passes (*streams*), the threads per
pass and the tiles per pass for a device; :class:`InferencePool` runs them,
handing results back in the order the batches came in. On a GPU there is one
stream: the GPU runs the passes and the CPU cores are left to reading and
stitching.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from geovision.errors import ConfigError

__all__ = ["InferencePlan", "InferencePool", "plan_inference"]

K = TypeVar("K")

#: most concurrent forward passes on a CPU: each holds its own activations
#: (a U-Net-ResNet18 pass over one 512 px tile peaks at a few hundred MB)
MAX_CPU_STREAMS = 4

#: tiles per forward pass on a GPU unless asked otherwise
GPU_BATCH = 8


@dataclass(frozen=True, slots=True)
class InferencePlan:
    """How forward passes run.

    Attributes:
        streams: forward passes running at the same time.
        threads: torch intra-op threads per pass (CPU); ``None`` leaves torch's setting alone.
        batch_size: tiles per forward pass.
    """

    streams: int
    threads: int | None
    batch_size: int

    def __post_init__(self) -> None:
        if self.streams < 1 or self.batch_size < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError(
                f"streams ({self.streams}), threads ({self.threads}) and batch size ({self.batch_size}) "
                "must be at least 1"
            )


def cpu_budget() -> int:
    """CPU threads torch may use here: ``torch.get_num_threads()`` (cores, or ``OMP_NUM_THREADS``)."""
    return max(1, torch.get_num_threads())


def plan_inference(device: torch.device | str, *, streams: int | None = None, batch_size: int | None = None,
                   cores: int | None = None) -> InferencePlan:
    """The plan for ``device``.

    On the CPU: ``streams`` defaults to the cores torch may use (at most
    :data:`MAX_CPU_STREAMS`), each pass gets ``cores // streams`` threads and one
    tile (measured best on 2 cores; bigger batches only add cache pressure). On a
    GPU: one stream of :data:`GPU_BATCH` tiles.

    Args:
        device: where the model runs.
        streams: concurrent forward passes; ``None`` picks.
        batch_size: tiles per pass; ``None`` picks.
        cores: the CPU threads to share out (default :func:`cpu_budget`).

    Raises:
        ConfigError: ``streams`` or ``batch_size`` below 1.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cpu":
        return InferencePlan(streams or 1, None, batch_size or GPU_BATCH)
    cores = cores or cpu_budget()
    n = streams or max(1, min(MAX_CPU_STREAMS, cores))
    return InferencePlan(n, max(1, cores // n), batch_size or 1)


class InferencePool:
    """Runs ``predictor.predict`` for a stream of batches with ``plan.streams`` passes at once.

    Use as a context manager; :meth:`map` yields results in input order. While the
    pool is open on a CPU, torch's thread count is ``plan.threads`` (restored on
    exit), so the passes do not oversubscribe the cores.

    Args:
        predictor: anything with ``predict(tiles, valid)`` and a ``device``; the
            predictors of :mod:`geovision.models` are safe to call from several
            threads (evaluation mode, no state changes).
        plan: from :func:`plan_inference`.
    """

    def __init__(self, predictor: Any, plan: InferencePlan) -> None:
        self.predictor = predictor
        self.plan = plan
        self._executor: ThreadPoolExecutor | None = None
        self._old_threads: int | None = None

    def __enter__(self) -> InferencePool:  # noqa: PYI034  (typing.Self needs Python 3.11)
        threads = self.plan.threads
        if threads is not None and threads != torch.get_num_threads():
            self._old_threads = torch.get_num_threads()
            # sets torch's global count too, which threads created later start from
            torch.set_num_threads(threads)
        self._executor = ThreadPoolExecutor(
            self.plan.streams, thread_name_prefix="geovision-model",
            initializer=_set_threads, initargs=(threads,),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._executor is not None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        if self._old_threads is not None:
            torch.set_num_threads(self._old_threads)
            self._old_threads = None

    def map(self, items: Iterable[tuple[K, np.ndarray | None, np.ndarray | None]]) -> Iterator[tuple[K, Any]]:
        """Yield ``(key, predictor.predict(tiles, valid))`` per item, in the items' order.

        Items are ``(key, tiles, valid)``; ``tiles`` of ``None`` (a batch with nothing
        to predict) yields ``(key, None)`` in its place. At most ``streams + 1``
        batches are taken from ``items`` ahead of the one being yielded, so a pass
        never waits for the next batch and memory holds only those.
        """
        if self._executor is None:
            raise RuntimeError("use InferencePool as a context manager: `with InferencePool(...) as pool:`")
        pending: deque[tuple[K, Future[Any] | None]] = deque()
        for key, tiles, valid in items:
            future = None if tiles is None else self._executor.submit(self.predictor.predict, tiles, valid)
            pending.append((key, future))
            while len(pending) > self.plan.streams:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())


def _result(entry: tuple[K, Future[Any] | None]) -> tuple[K, Any]:
    key, future = entry
    return key, None if future is None else future.result()


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
