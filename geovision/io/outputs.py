"""Output paths, formats and atomic commits.

Every output is first written under a temporary name in its own directory and
renamed into place only when the whole job has succeeded, so a failed or
interrupted run leaves no half-written output behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType

from geovision.errors import OutputExistsError, OutputFormatError, OutputOverwritesInputError

#: vector output formats by file extension -> GDAL/OGR driver
VECTOR_FORMATS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".parquet": "Parquet",
}


def vector_driver(path: str | os.PathLike[str]) -> str:
    """The driver for ``path``'s extension, or an :class:`OutputFormatError` listing the valid ones."""
    ext = Path(path).suffix.lower()
    try:
        return VECTOR_FORMATS[ext]
    except KeyError:
        raise OutputFormatError(
            f"{path}: unknown output extension {ext or '(none)'!r}. Use one of "
            f"{', '.join(VECTOR_FORMATS)} (for example {Path(path).with_suffix('.gpkg')})."
        ) from None


def sibling(out: str | os.PathLike[str], suffix: str) -> Path:
    """``<dir>/<stem><suffix>`` beside the vector output, e.g. ``sibling('a/run.gpkg', '.classes.tif')``."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


class AtomicOutputs:
    """A group of outputs that appear together or not at all.

    ``add(final)`` returns a temporary path in the same directory (same extension,
    so GDAL drivers recognise it). ``commit()`` renames every temporary into
    place; ``abort()`` deletes them. Use as a context manager: an exception aborts.
    """

    def __init__(self, inputs: list[str], overwrite: bool) -> None:
        self._inputs = {os.path.realpath(p) for p in inputs if "://" not in p and not p.startswith("/vsi")}
        self._overwrite = overwrite
        self._pairs: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []
        self._token = uuid.uuid4().hex[:8]

    def add(self, final: str | os.PathLike[str]) -> Path:
        final = Path(final)
        if os.path.realpath(final) in self._inputs:
            raise OutputOverwritesInputError(
                f"{final}: this output would overwrite an input raster. Choose another --out."
            )
        if final.exists() and not self._overwrite:
            raise OutputExistsError(
                f"{final}: output exists already. Pass --overwrite (overwrite=True) to replace it, "
                "or choose another --out."
            )
        if not final.parent.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.partial-{self._token}{final.suffix}")
        self._pairs.append((tmp, final))
        return tmp

    def scratch(self, tmp: Path, suffix: str) -> Path:
        """A scratch file beside temporary output ``tmp``; deleted by both ``commit`` and ``abort``."""
        path = tmp.with_name(tmp.stem + suffix)
        self._scratch.append(path)
        return path

    def commit(self) -> None:
        for tmp, final in self._pairs:
            if tmp.exists():
                os.replace(tmp, final)
        self._pairs.clear()
        self._remove(self._scratch)

    def abort(self) -> None:
        self._remove([tmp for tmp, _ in self._pairs] + self._scratch)
        self._pairs.clear()

    def _remove(self, paths: list[Path]) -> None:
        for tmp in paths:
            for path in (tmp, Path(str(tmp) + ".aux.xml")):
                path.unlink(missing_ok=True)
        paths.clear()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
