"""The geovision error tree.

Every error says which file or value is wrong and what to do about it. Each
class also inherits the matching built-in exception (as rasterio does), so a
caller can catch either ``GeovisionError`` or, say, ``FileExistsError``.
"""

from __future__ import annotations

import warnings


class GeovisionError(Exception):
    """Base class of every error geovision raises on purpose."""


class ConfigError(GeovisionError, ValueError):
    """An option or configuration value is invalid."""


# --- raster input -----------------------------------------------------------------


class RasterError(GeovisionError):
    """A problem with an input raster."""


class RasterReadError(RasterError, OSError):
    """The raster cannot be opened or read (missing, unreadable, truncated)."""


class NoCRSError(RasterError, ValueError):
    """The raster has no coordinate reference system."""


class BandMismatchError(RasterError, ValueError):
    """The raster's bands do not match what the model expects."""


class NodataOnlyError(RasterError, ValueError):
    """Every pixel of the raster is nodata, so there is nothing to predict."""


# --- vector input -----------------------------------------------------------------


class VectorError(GeovisionError):
    """A problem with an input vector layer."""


class VectorReadError(VectorError, OSError):
    """The vector file cannot be opened or read."""


class VectorContentError(VectorError, ValueError):
    """The vector layer has no usable features: wrong geometry type, no features or no CRS."""


# --- model bundles ----------------------------------------------------------------


class BundleError(GeovisionError, ValueError):
    """A model bundle is missing, invalid, tampered with or of an unknown version."""


class BundleVersionError(BundleError):
    """The bundle was written by a format version this geovision cannot read."""


class TaskMismatchError(BundleError):
    """The bundle's task does not fit the command (for example detection vs segmentation)."""


# --- outputs ----------------------------------------------------------------------


class OutputError(GeovisionError):
    """A problem with where or how outputs are written."""


class OutputExistsError(OutputError, FileExistsError):
    """An output exists already and ``overwrite`` was not given."""


class OutputFormatError(OutputError, ValueError):
    """The output file extension names no supported format."""


class OutputOverwritesInputError(OutputError, ValueError):
    """An output path is one of the inputs."""


# --- warnings ---------------------------------------------------------------------


class GeovisionWarning(UserWarning):
    """Something is suspicious but not fatal (for example a resolution mismatch)."""


def warn(message: str) -> None:
    """Emit a :class:`GeovisionWarning` pointing at the caller's caller."""
    warnings.warn(message, GeovisionWarning, stacklevel=3)
