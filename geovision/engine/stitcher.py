"""The stitcher thread: tile outputs to the task's consumer, behind the model.

The model's thread hands each pass's messages to :meth:`Stitcher.put` and goes on; the
consumer (blending, vectorising, writing) runs here. The inbox is bounded, so a slow
consumer holds the model back instead of letting memory grow.
"""

from __future__ import annotations

import queue
import threading

from geovision.engine.protocols import StitchMessage, TileConsumer, TileResult

__all__ = ["Stitcher"]

#: passes' worth of messages waiting for the consumer before the model waits
INBOX = 8


class Stitcher(threading.Thread):
    """Feeds :data:`StitchMessage` lists to ``consumer`` on a thread of its own.

    Use as a context manager around the loop that calls :meth:`put`: leaving it ends the
    thread (after :meth:`TileConsumer.finish` when the block succeeded), closes the
    consumer, and raises the consumer's error if it had one.
    """

    def __init__(self, consumer: TileConsumer) -> None:
        super().__init__(name="geovision-stitcher", daemon=True)
        self.inbox: queue.Queue[list[StitchMessage] | None] = queue.Queue(maxsize=INBOX)
        self.consumer = consumer
        self.error: BaseException | None = None
        #: set when the producer failed: skip the consumer's finish, just drain
        self.aborted = False

    def run(self) -> None:
        while True:
            messages = self.inbox.get()
            if messages is None:
                break
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                for m in messages:
                    if isinstance(m, TileResult):
                        self.consumer.add(m.tile, m.output, m.valid)
                    else:
                        self.consumer.skip(m.tile)
            except BaseException as exc:  # handed to the producer's thread
                self.error = exc
        if self.error is None and not self.aborted:
            try:
                self.consumer.finish()
            except BaseException as exc:
                self.error = exc

    def put(self, messages: list[StitchMessage]) -> None:
        """Queue one pass's messages (grid order); raises the consumer's error as soon as there is one."""
        if self.error is not None:
            raise self.error
        self.inbox.put(messages)

    def __enter__(self) -> Stitcher:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.aborted = True
        self.inbox.put(None)
        self.join()
        self.consumer.close()
        if exc_type is None and self.error is not None:
            raise self.error
