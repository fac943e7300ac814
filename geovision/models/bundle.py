"""Model bundles: one ``.safetensors`` file with the weights and the whole configuration.

A bundle is a single safetensors file. Its tensors are the model's
``state_dict``; its header metadata (a ``dict[str, str]``) holds:

``"geovision"``
    the :class:`BundleConfig` as JSON: architecture, encoder, bands, band names,
    normalisation, classes and colours, tile size, ground resolution, provenance.
``"geovision_format"``
    the bundle format version (:data:`FORMAT_VERSION`), so a future geovision can
    tell old bundles from new ones and an old geovision can refuse new ones.
``"geovision_sha256"``
    sha256 over the config JSON plus the sorted tensor names and shapes
    (:func:`bundle_digest`), so a hand-edited header is detected on reading.

Reading uses safetensors only, which stores raw tensors and no code, so a
bundle from an untrusted source cannot run anything when loaded.
:func:`read_config` reads the header alone (no tensor data, no torch import),
which makes ``geovision model info`` fast.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geovision import __version__
from geovision.errors import BundleError, BundleVersionError, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "BundleConfig",
    "ClassInfo",
    "Normalization",
    "bundle_digest",
    "default_colors",
    "init_bundle",
    "load_bundle",
    "read_config",
    "save_bundle",
]

FORMAT_VERSION = 1
"""The bundle format this geovision writes."""

SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
"""The bundle formats this geovision can read."""

META_CONFIG = "geovision"
META_FORMAT = "geovision_format"
META_SHA256 = "geovision_sha256"

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
"""ImageNet per-channel mean (red, green, blue) on the 0-255 scale."""
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
"""ImageNet per-channel standard deviation (red, green, blue) on the 0-255 scale."""

_INIT_HINT = "create one with `geovision model init` (or geovision.models.bundle.init_bundle / save_bundle)"


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
            raise ValueError(f"created must be an ISO 8601 time such as '2024-05-01T12:00:00+00:00', got {value!r}")
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


# --- header integrity -------------------------------------------------------------


def bundle_digest(config_json: str, shapes: Mapping[str, Sequence[int]]) -> str:
    """sha256 (hex) that binds a bundle's config JSON to its tensors.

    Hashes the exact config JSON text, then every tensor name (sorted) with its
    shape. Editing either the header or the tensor layout changes it.

    Args:
        config_json: the text stored under the ``"geovision"`` header key.
        shapes: tensor name -> shape.
    """
    h = hashlib.sha256()
    h.update(config_json.encode("utf-8"))
    for name in sorted(shapes):
        h.update(b"\x00" + name.encode("utf-8") + b"\x00" + ",".join(str(int(d)) for d in shapes[name]).encode())
    return h.hexdigest()


def _format_validation_error(error: ValidationError) -> str:
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


def _parse_header(path: Path, metadata: Mapping[str, str] | None, shapes: Mapping[str, Sequence[int]]) -> BundleConfig:
    """Check a bundle header and turn it into a :class:`BundleConfig`."""
    metadata = metadata or {}
    config_json = metadata.get(META_CONFIG)
    if config_json is None:
        raise BundleError(
            f"{path} is a safetensors file but not a geovision bundle: its header has no "
            f"{META_CONFIG!r} metadata (keys found: {sorted(metadata) or 'none'}). To use these weights, {_INIT_HINT}."
        )

    supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
    raw_version = metadata.get(META_FORMAT)
    try:
        version = int(raw_version) if raw_version is not None else None
    except ValueError:
        version = None
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleVersionError(
            f"{path} uses bundle format version {raw_version!r}; this geovision ({__version__}) reads "
            f"format version(s) {supported}. Upgrade geovision (pip install -U geovision) to read it."
        )

    expected = bundle_digest(config_json, shapes)
    stored = metadata.get(META_SHA256)
    if stored != expected:
        raise BundleError(
            f"{path}: the bundle header was modified after the bundle was saved (its {META_SHA256} "
            f"{stored!r} does not match the configuration and tensors, expected {expected[:12]}...). "
            "Do not edit bundles by hand: read the config with read_config, change it with "
            "config.model_copy(update=...) and write a new bundle with save_bundle."
        )

    try:
        raw = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: the {META_CONFIG!r} header is not valid JSON ({exc}); re-export the bundle.")
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: the {META_CONFIG!r} header must be a JSON object, got {type(raw).__name__}")
    config_version = raw.get("format_version", FORMAT_VERSION)
    if config_version != version:
        raise BundleVersionError(
            f"{path}: the config says format_version {config_version!r} but the header says {version}; "
            f"this geovision ({__version__}) reads format version(s) {supported}. "
            "Upgrade geovision or re-export the bundle."
        )
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(
            f"{path} has an invalid geovision configuration:\n{_format_validation_error(exc)}\n"
            "Fix these values where the bundle was made and export it again."
        ) from None


def _open_error(path: Path, exc: Exception) -> BundleError:
    if isinstance(exc, FileNotFoundError):
        return BundleError(f"model bundle {path} does not exist; check the path, or {_INIT_HINT}")
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return BundleError(f"model bundle {path} is a folder; give the path of the .safetensors file inside it")
    if isinstance(exc, PermissionError):
        return BundleError(f"cannot read model bundle {path}: permission denied; check the file's permissions")
    if isinstance(exc, OSError):
        return BundleError(f"cannot read model bundle {path}: {exc}")
    return BundleError(
        f"{path} is not a readable .safetensors model bundle ({exc}); it may be truncated or not a "
        "bundle at all. Copy or download it again, or " + _INIT_HINT + "."
    )


# --- reading and writing ----------------------------------------------------------


def read_config(path: str | os.PathLike[str]) -> BundleConfig:
    """Read and check a bundle's configuration from its header, without loading weights.

    Only the header is read (no tensor data, no torch import), so this is fast
    even for large bundles. The header's sha256 and format version are checked.

    Args:
        path: the bundle's ``.safetensors`` file.

    Raises:
        BundleError: the file is missing, unreadable, truncated, not a geovision
            bundle, has been hand-edited, or holds an invalid configuration.
        BundleVersionError: the bundle's format version is not supported.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata()
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError, FileNotFoundError or OSError
        raise _open_error(path, exc) from exc
    return _parse_header(path, metadata, shapes)


def load_bundle(path: str | os.PathLike[str]) -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """Read a bundle: its checked configuration and its weights (on the CPU).

    Uses safetensors only (raw tensors, no code is executed). Whether the weights fit the
    architecture is checked when they are loaded into the model
    (:func:`geovision.models.registry.load_weights`).

    Args:
        path: the bundle's ``.safetensors`` file.

    Returns:
        ``(config, state_dict)``.

    Raises:
        BundleError: as :func:`read_config`.
        BundleVersionError: the bundle's format version is not supported.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            config = _parse_header(path, metadata, shapes)
            tensors = {name: f.get_tensor(name) for name in sorted(f.keys())}
    except BundleError:
        raise
    except Exception as exc:
        raise _open_error(path, exc) from exc
    return config, tensors


def load_bundle_bytes(data: bytes, name: str = "<bundle bytes>") -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """:func:`load_bundle` for a bundle held in memory (e.g. sent to Dask workers as raw bytes).

    The same checks apply; ``name`` stands for the file in error messages.
    """
    from safetensors.torch import load

    path = Path(name)
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        tensors = load(data)
    except Exception as exc:
        raise _open_error(path, exc) from exc
    metadata = header.get("__metadata__")
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    config = _parse_header(path, metadata, shapes)
    return config, {k: tensors[k] for k in sorted(tensors)}


def save_bundle(
    path: str | os.PathLike[str], config: BundleConfig, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Write a bundle atomically: a temporary file in the same folder, then ``os.replace``.

    A reader never sees a half-written bundle, and a failed write leaves any
    existing file at ``path`` untouched. Tensors are copied to contiguous CPU
    memory first (safetensors refuses tensors that share storage).

    Args:
        path: the ``.safetensors`` file to write (replaced if it exists).
        config: the configuration to store in the header.
        state_dict: the model's weights, ``name -> tensor``.

    Raises:
        BundleError: the folder does not exist, the path is a folder, a value is not
            a tensor, or writing failed.
        BundleVersionError: ``config.format_version`` is not the one this geovision writes.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if config.format_version != FORMAT_VERSION:
        raise BundleVersionError(
            f"cannot write {path} with format_version {config.format_version}; this geovision writes "
            f"format {FORMAT_VERSION}. Use config.model_copy(update={{'format_version': {FORMAT_VERSION}}})."
        )
    if path.is_dir():
        raise BundleError(
            f"cannot write bundle {path}: it is a folder; give a file name such as {path / 'model.safetensors'}"
        )
    if not path.parent.is_dir():
        raise BundleError(f"cannot write bundle {path}: the folder {path.parent} does not exist; create it first")

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise BundleError(
                f"cannot write bundle {path}: state_dict entry {name!r} is a {type(tensor).__name__}, "
                "expected str -> torch.Tensor (pass model.state_dict())"
            )
        tensors[name] = tensor.detach().to("cpu").contiguous().clone()

    config_json = config.model_dump_json()
    metadata = {
        META_CONFIG: config_json,
        META_FORMAT: str(FORMAT_VERSION),
        META_SHA256: bundle_digest(config_json, {k: tuple(v.shape) for k, v in tensors.items()}),
    }
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


# --- creating bundles -------------------------------------------------------------

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
    """The normalisation :func:`init_bundle` uses when none is given.

    3 bands: ``meanstd`` with the ImageNet mean/std on the 0-255 scale
    (:data:`IMAGENET_MEAN_255`, :data:`IMAGENET_STD_255`), for 8-bit RGB. Any
    other band count: ``meanstd`` with mean 127.5 and std 64 per band (8-bit data
    centred on 0 with roughly unit spread).
    """
    if in_channels == 3:
        return Normalization(method="meanstd", mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255))
    return Normalization(method="meanstd", mean=[127.5] * in_channels, std=[64.0] * in_channels)


def _class_name(c: str | ClassInfo) -> str:
    return c.name if isinstance(c, ClassInfo) else str(c)


def init_bundle(
    path: str | os.PathLike[str],
    *,
    task: Literal["segmentation", "detection"] = "segmentation",
    arch: str = "unet",
    encoder: str | None = None,
    bands: int | Sequence[int] = 3,
    classes: Sequence[str | ClassInfo],
    band_names: Sequence[str] | None = None,
    normalization: Normalization | Mapping[str, Any] | None = None,
    tile_size: int = 512,
    ground_resolution_m: float | None = None,
    encoder_weights: str | None = None,
    arch_params: Mapping[str, Any] | None = None,
) -> BundleConfig:
    """Create an untrained (or encoder-pretrained) model and save it as a bundle.

    The model is built through :func:`geovision.models.registry.build_model`, so
    the architecture, encoder and ``arch_params`` are checked before anything is
    written.

    Args:
        path: the ``.safetensors`` file to write (replaced if it exists).
        task: ``"segmentation"`` or ``"detection"``.
        arch: architecture name: for segmentation see
            :func:`~geovision.models.registry.list_architectures`; for detection
            ``"fasterrcnn"``, ``"retinanet"`` or ``"fcos"``.
        encoder: encoder name; default ``"resnet18"``, or ``"none"`` for ``arch="shallow"``.
        bands: how many bands (read as raster bands ``1..n``), or the 1-based raster
            band indices to read, e.g. ``[4, 3, 2]``.
        classes: class names (or :class:`ClassInfo`) in output order; class 0 is the
            background. Names get :func:`default_colors`. For detection a
            ``"background"`` class is put first when the list does not start with one.
        band_names: a name per band; default ``["red", "green", "blue"]`` for 3 bands,
            else ``["band_<index>", ...]``.
        normalization: default :func:`default_normalization`: for 3 bands ``meanstd``
            with the ImageNet mean/std scaled to 0-255
            (mean ``[123.675, 116.28, 103.53]``, std ``[58.395, 57.12, 57.375]``);
            for any other band count ``meanstd`` with mean 127.5 and std 64 per band.
        tile_size: tile edge in pixels (multiple of 32).
        ground_resolution_m: pixel size of the intended imagery (metres), if known.
        encoder_weights: pretrained encoder weights to download (e.g. ``"imagenet"``);
            ``None`` (default) gives random weights and needs no network.
        arch_params: extra architecture arguments (e.g. ``{"depth": 3, "width": 16}``
            for ``"shallow"``).

    Returns:
        The configuration that was saved.

    Raises:
        ConfigError: an option is invalid (unknown architecture or encoder, wrong
            band count, ...), or pretrained weights could not be fetched.
        BundleError: the bundle could not be written.
    """
    from geovision.models.registry import build_model

    if isinstance(bands, int) and not isinstance(bands, bool):
        if bands < 1:
            raise ConfigError(f"bands must be >= 1 (a band count) or a list of 1-based band indices, got {bands}")
        band_list = list(range(1, bands + 1))
    else:
        band_list = [int(b) for b in bands]
        if not band_list:
            raise ConfigError("bands is an empty list; give a band count such as 3 or indices such as [1, 2, 3]")
    n = len(band_list)
    if band_names is None:
        band_names = ["red", "green", "blue"] if n == 3 else [f"band_{b}" for b in band_list]
    if encoder is None:
        encoder = "none" if arch.lower() == "shallow" else "resnet18"
    if normalization is None:
        normalization = default_normalization(n)
    classes = list(classes)
    if task == "detection" and (not classes or _class_name(classes[0]) != "background"):
        classes = ["background", *classes]  # torchvision detectors reserve label 0 for the background
    colors = default_colors(len(classes))
    class_infos = [c if isinstance(c, ClassInfo) else {"name": c, "color": colors[i]} for i, c in enumerate(classes)]
    provenance: dict[str, Any] = {
        "created_by": "init_bundle",
        "trained": False,
        "encoder_weights": encoder_weights,
    }
    try:
        config = BundleConfig(
            task=task,
            arch=arch,
            encoder=encoder,
            arch_params=dict(arch_params or {}),
            in_channels=n,
            bands=band_list,
            band_names=list(band_names),
            normalization=normalization,  # type: ignore[arg-type]  # pydantic validates a mapping too
            classes=class_infos,  # type: ignore[arg-type]
            tile_size=tile_size,
            ground_resolution_m=ground_resolution_m,
            provenance=provenance,
        )
    except ValidationError as exc:
        raise ConfigError(f"cannot create bundle {path}:\n{_format_validation_error(exc)}") from None
    model = build_model(config, encoder_weights=encoder_weights)
    save_bundle(path, config, model.state_dict())
    return config
