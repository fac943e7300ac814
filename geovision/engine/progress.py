"""Progress as events: the engine counts, whoever asked decides how to show it.

A workflow makes a :class:`Progress` per stage and calls :meth:`Progress.update` as
tiles or blocks are done; each update becomes a :class:`ProgressEvent` handed to the
caller's callback. The CLI's callback is :class:`ProgressBars` (text bars, or Jupyter
widgets); a job service records the events instead; with no callback nothing is shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from geovision.progress import progress_bar

__all__ = ["Progress", "ProgressBars", "ProgressCallback", "ProgressEvent", "ProgressOption", "callback_for"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """How far a stage has come.

    Attributes:
        stage: what is being done, e.g. ``"predict"`` or ``"stress classes"``.
        done: units done so far.
        total: units in the stage.
        unit: ``"tile"`` or ``"block"``.
        megapixels: pixels done so far, in millions.
        seconds: since the stage began.
        closed: the stage has ended (the last event of a stage).
    """

    stage: str
    done: int
    total: int
    unit: str
    megapixels: float = 0.0
    seconds: float = 0.0
    closed: bool = False

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback: TypeAlias = Callable[[ProgressEvent], None]
ProgressOption: TypeAlias = bool | ProgressCallback | None
"""What library calls take: ``True`` for :class:`ProgressBars`, a callback, or ``False``/``None`` for silence."""


def callback_for(option: ProgressOption) -> ProgressCallback | None:
    """The callback a ``progress=`` option stands for."""
    if option is True:
        return ProgressBars()
    if option is False or option is None:
        return None
    return option


class Progress:
    """Counts one stage's units and reports them to ``callback`` (nothing when it is ``None``)."""

    def __init__(self, callback: ProgressCallback | None, stage: str, total: int, unit: str = "tile") -> None:
        self.callback, self.stage, self.total, self.unit = callback, stage, total, unit
        self.done = 0
        self.pixels = 0
        self.t0 = time.perf_counter()

    def update(self, units: int, pixels: int = 0) -> None:
        self.done += units
        self.pixels += pixels
        if self.callback is not None:
            self.callback(self._event(False))

    def close(self) -> None:
        if self.callback is not None:
            self.callback(self._event(True))

    def _event(self, closed: bool) -> ProgressEvent:
        return ProgressEvent(self.stage, self.done, self.total, self.unit, self.pixels / 1e6,
                             time.perf_counter() - self.t0, closed)


class ProgressBars:
    """A progress callback that draws one tqdm bar per stage (megapixels per second where known)."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.stage)
        if bar is None:
            bar = self._bars[event.stage] = progress_bar(total=event.total, unit=event.unit, desc=event.stage,
                                                         dynamic_ncols=True)
        bar.update(event.done - bar.n)
        if event.megapixels and event.seconds > 0:
            bar.set_postfix_str(f"{event.megapixels / event.seconds:.2f} MP/s", refresh=False)
        if event.closed:
            bar.close()
            del self._bars[event.stage]
