"""Output targets: where a finished run's vector layers go.

:class:`FileTarget` writes them to local files, in the format the output path's
extension names: every layer inside one GeoPackage, or one file per layer
(``<stem>.<layer>.<ext>``) for single-layer formats. It implements the engine's
:class:`~geovision.engine.protocols.OutputTarget` protocol (structurally; this module
imports nothing of the engine).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from geovision.io.outputs import AtomicOutputs, sibling, vector_driver
from geovision.io.vector import export

__all__ = ["FileTarget"]


class _Layer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def geometry_type(self) -> str: ...


class FileTarget:
    """Vector layers to local files, renamed into place on :meth:`commit`.

    Args:
        out: the main layer's path; its extension picks the format.
        layers: every layer the run will write, the main one first.
        inputs: the run's input paths (an output may not overwrite one).
        overwrite: replace existing outputs instead of refusing them.

    Raises:
        OutputFormatError: unknown extension.
        OutputExistsError: an output exists and ``overwrite`` is False (raised here, before
            any work is done).
    """

    def __init__(self, out: str | os.PathLike[str], layers: Sequence[str], inputs: Sequence[str],
                 overwrite: bool) -> None:
        self.out = Path(out)
        self.driver = vector_driver(out)
        self._outputs = AtomicOutputs(list(inputs), overwrite)
        self._paths: dict[str, Path] = {}
        self._tmps: dict[str, Path] = {}
        main_tmp = self._outputs.add(self.out)
        for k, name in enumerate(layers):
            if k == 0 or self.driver == "GPKG":
                self._paths[name], self._tmps[name] = self.out, main_tmp
            else:
                self._paths[name] = sibling(self.out, f".{name}{self.out.suffix}")
                self._tmps[name] = self._outputs.add(self._paths[name])
        self._written = False

    def locations(self) -> dict[str, str]:
        return {name: str(path) for name, path in self._paths.items()}

    def write(self, scratch: Path, layers: Sequence[_Layer]) -> None:
        """Move (GeoPackage) or convert (other formats) ``layers`` of ``scratch`` to their temporary files."""
        if self._written:
            raise RuntimeError(f"{self.out}: the layers were written already")
        self._written = True
        export(scratch, [(layer.name, self._tmps[layer.name], layer.geometry_type) for layer in layers])

    def commit(self) -> None:
        self._outputs.commit()

    def abort(self) -> None:
        self._outputs.abort()
