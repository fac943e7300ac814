"""The bundle configuration: everything needed to rebuild a model and feed it the right pixels.

:class:`BundleConfig` (with :class:`ClassInfo` and :class:`Normalization`) is the
pydantic schema a bundle stores as JSON in its header: architecture, encoder,
bands, band names, normalisation, classes and colours, tile size, ground
resolution, provenance. Unknown keys are refused and every value is checked on
construction, with messages that show the bad value and the fix;
:func:`format_validation_error` turns a pydantic error into one line per problem.
:func:`default_colors` and :func:`default_normalization` fill in what a new
bundle leaves out.

This is the first module of :mod:`geovision.models`: it imports no other models
module and no torch. Reading and writing bundle files (header, digests, format
versions) is :mod:`geovision.models.bundle`'s job.
"""

from __future__ import annotations

import colorsys
import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geovision._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "BundleConfig",
    "ClassInfo",
    "Normalization",
    "default_colors",
    "default_normalization",
    "format_validation_error",
]

FORMAT_VERSION = 2
"""The bundle format this geovision writes, and the default of :attr:`BundleConfig.format_version`.

Which formats are read is :mod:`geovision.models.bundle`'s (``SUPPORTED_FORMAT_VERSIONS``).
"""

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
"""ImageNet per-channel mean (red, green, blue) on the 0-255 scale."""
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
"""ImageNet per-channel standard deviation (red, green, blue) on the 0-255 scale."""


# --- configuration ----------------------------------------------------------------


class ClassInfo(BaseModel):
    """One output class: its name and display colour.

    Attributes:
        name: class name, e.g. ``"building"``; unique within a bundle.
        color: display colour as ``"#rrggbb"`` (stored lower case).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    color: str

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str) -> str:
        text = value.strip()
        if len(text) != 7 or text[0] != "#" or any(c not in "0123456789abcdefABCDEF" for c in text[1:]):
            raise ValueError(f"colour must look like '#rrggbb' (e.g. '#ff8800'), got {value!r}")
        return text.lower()


class Normalization(BaseModel):
    """How raw band values become model input, per band.

    ``method``:

    * ``"meanstd"``: ``(x - mean) / std``; needs ``mean`` and ``std`` (``std > 0``).
    * ``"percentile"``: ``(x - low) / (high - low)`` clipped to ``[0, 1]``; needs
      ``low`` and ``high`` (``high > low``), typically the 2nd and 98th percentiles.
    * ``"none"``: values are passed through as float32; no lists.

    All lists are in raw raster units (e.g. 0-255 for 8-bit imagery) and have one
    value per model input band.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["meanstd", "percentile", "none"]
    mean: list[float] | None = None
    std: list[float] | None = None
    low: list[float] | None = None
    high: list[float] | None = None

    @model_validator(mode="after")
    def _check_lists(self) -> Normalization:
        needed: dict[str, tuple[str, ...]] = {
            "meanstd": ("mean", "std"),
            "percentile": ("low", "high"),
            "none": (),
        }
        wanted = needed[self.method]
        for name in ("mean", "std", "low", "high"):
            value = getattr(self, name)
            if name in wanted and value is None:
                raise ValueError(f"method {self.method!r} needs {' and '.join(wanted)}; {name} is missing")
            if name not in wanted and value is not None:
                raise ValueError(
                    f"method {self.method!r} does not use {name!r}; remove it"
                    + (f" (it uses {' and '.join(wanted)})" if wanted else "")
                )
            if value is not None:
                if not value:
                    raise ValueError(f"{name} must have one value per band, got an empty list")
                if not all(math.isfinite(v) for v in value):
                    raise ValueError(f"{name} must be finite numbers, got {value}")
        lists = [getattr(self, n) for n in wanted]
        if lists and len(lists[0]) != len(lists[1]):
            raise ValueError(
                f"{wanted[0]} and {wanted[1]} must have the same length (one per band), "
                f"got {len(lists[0])} and {len(lists[1])}"
            )
        if self.method == "meanstd" and self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0 for every band, got {self.std}")
        if self.method == "percentile" and self.low is not None and self.high is not None:
            bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if hi <= lo]
            if bad:
                raise ValueError(
                    f"high must be greater than low for every band; bands (0-based) {bad} have "
                    f"low={[self.low[i] for i in bad]} high={[self.high[i] for i in bad]}"
                )
        return self

    @property
    def num_bands(self) -> int | None:
        """How many bands the lists describe (``None`` for ``"none"``)."""
        values = self.mean if self.method == "meanstd" else self.low if self.method == "percentile" else None
        return None if values is None else len(values)


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class BundleConfig(BaseModel):
    """Everything needed to rebuild a model and feed it the right pixels.

    Attributes:
        format_version: bundle format the config was written in.
        task: ``"segmentation"`` or ``"detection"``.
        arch: architecture name, see :func:`geovision.models.registry.list_architectures`.
        encoder: encoder (backbone) name; ``"none"`` for the built-in ``"shallow"`` net.
        arch_params: extra keyword arguments of the architecture.
        in_channels: number of input bands the model takes.
        bands: 1-based raster band indices read by default, one per input channel.
        band_names: a name per input channel, e.g. ``["red", "green", "blue"]``.
        normalization: raw values to model input, one value per input channel.
        classes: the output classes, in output-channel order (>= 2 for segmentation).
        background_class: class id that is not vectorised (``None``: vectorise all).
        tile_size: tile edge the model was trained on (pixels, multiple of 32).
        ground_resolution_m: pixel size the model was trained on (metres), if known.
        geovision_version: geovision version that wrote the bundle.
        created: creation time, ISO 8601 UTC.
        provenance: free-form training information (data, metrics, ...); JSON values only.
        drift_reference: per-band distribution of the training pixels (``edges``,
            ``proportions``, ``pixels``; see :mod:`geovision.io.drift`), or ``None``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    task: Literal["segmentation", "detection"]
    arch: str = Field(min_length=1)
    encoder: str = Field(min_length=1)
    arch_params: dict[str, Any] = Field(default_factory=dict)
    in_channels: int = Field(ge=1)
    bands: list[int]
    band_names: list[str]
    normalization: Normalization
    classes: list[ClassInfo]
    background_class: int | None = 0
    tile_size: int = 512
    ground_resolution_m: float | None = None
    geovision_version: str = __version__
    created: str = Field(default_factory=_utc_now)
    provenance: dict[str, Any] = Field(default_factory=dict)
    drift_reference: dict[str, Any] | None = None

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, value: list[int]) -> list[int]:
        bad = [b for b in value if b < 1]
        if bad:
            raise ValueError(f"band indices are 1-based (the first band is 1), got {value}")
        return value

    @field_validator("tile_size")
    @classmethod
    def _check_tile_size(cls, value: int) -> int:
        if value <= 0 or value % 32:
            suggestion = max(32, round(value / 32) * 32)
            raise ValueError(f"tile_size must be a positive multiple of 32 pixels, got {value} (try {suggestion})")
        return value

    @field_validator("ground_resolution_m")
    @classmethod
    def _check_resolution(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"ground_resolution_m must be a positive number of metres, got {value}")
        return value

    @field_validator("created")
    @classmethod
    def _check_created(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"created must be an ISO 8601 time such as '2024-05-01T12:00:00+00:00', got {value!r}"
            ) from None
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> BundleConfig:
        n = self.in_channels
        if len(self.bands) != n:
            raise ValueError(f"bands lists {len(self.bands)} band(s) {self.bands} but in_channels is {n}")
        if len(self.band_names) != n:
            raise ValueError(
                f"band_names lists {len(self.band_names)} name(s) {self.band_names} but in_channels is {n}"
            )
        norm_bands = self.normalization.num_bands
        if norm_bands is not None and norm_bands != n:
            raise ValueError(
                f"normalization ({self.normalization.method}) has {norm_bands} value(s) per list "
                f"but in_channels is {n}; give one value per band"
            )
        minimum = 2 if self.task == "segmentation" else 1
        if len(self.classes) < minimum:
            raise ValueError(
                f"a {self.task} model needs at least {minimum} classes, got {len(self.classes)} "
                f"({[c.name for c in self.classes]})"
                + ("; add a background class, e.g. ['background', 'building']" if self.task == "segmentation" else "")
            )
        names = [c.name for c in self.classes]
        duplicates = sorted({x for x in names if names.count(x) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique, {duplicates} appear more than once in {names}")
        if self.background_class is not None and not 0 <= self.background_class < len(self.classes):
            raise ValueError(
                f"background_class {self.background_class} is not a class id; "
                f"use 0..{len(self.classes) - 1} or None to vectorise every class"
            )
        return self

    @property
    def num_classes(self) -> int:
        """Number of output classes (output channels for segmentation)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Class names in output-channel order."""
        return [c.name for c in self.classes]


def format_validation_error(error: ValidationError) -> str:
    """A pydantic error as one ``  - field: problem (got value)`` line per problem."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(config)"
        msg = item["msg"].removeprefix("Value error, ")
        if "got " in msg:
            lines.append(f"  - {loc}: {msg}")
            continue
        shown = repr(item.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  - {loc}: {msg} (got {shown})")
    return "\n".join(lines)


# --- defaults for new bundles -----------------------------------------------------

_PALETTE = (
    "#000000",  # black: class 0, usually background
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#ffe119",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
    "#a9a9a9",
    "#ffd8b1",
)


def default_colors(n: int) -> list[str]:
    """``n`` distinct display colours as ``"#rrggbb"``.

    The first is black (for class 0, usually the background), then a fixed
    20-colour qualitative palette, then hues spaced by the golden angle. The
    result depends only on ``n`` and each prefix is stable: ``default_colors(3)``
    is the start of ``default_colors(10)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colors = list(_PALETTE[:n])
    i = 0
    while len(colors) < n:
        hue = (0.1 + i * 0.618033988749895) % 1.0
        value = 0.95 if (i // 7) % 2 == 0 else 0.7
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        color = f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"
        if color not in colors:
            colors.append(color)
        i += 1
    return colors


def default_normalization(in_channels: int) -> Normalization:
    """The normalisation :func:`~geovision.models.registry.init_bundle` uses when none is given.

    3 bands: ``meanstd`` with the ImageNet mean/std on the 0-255 scale
    (:data:`IMAGENET_MEAN_255`, :data:`IMAGENET_STD_255`), for 8-bit RGB. Any
    other band count: ``meanstd`` with mean 127.5 and std 64 per band (8-bit data
    centred on 0 with roughly unit spread).
    """
    if in_channels == 3:
        return Normalization(method="meanstd", mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255))
    return Normalization(method="meanstd", mean=[127.5] * in_channels, std=[64.0] * in_channels)
