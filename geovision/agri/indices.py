"""Vegetation indices and sensor band presets for a crop-stress workflow.

Pure numpy: nothing here opens a file. The flow is

1. :func:`resolve_bands` turns a sensor preset (:data:`SENSORS`) and/or an explicit band mapping
   (``--bands red=3,nir=4``, parsed by :func:`parse_band_mapping`) into the 1-based band
   positions an index needs, plus the preset's reflectance ``scale`` and ``offset``;
2. the caller reads those bands and :func:`to_reflectance` scales the digital numbers (DN) to
   surface reflectance, ``reflectance = DN * scale + offset`` (offset in reflectance units), NaN
   where the caller says the pixel is nodata;
3. :func:`compute_index` evaluates an index of :data:`INDICES` on the reflectance arrays.

Conventions: band names are the lower-case names of :data:`BAND_NAMES`; band positions are
1-based, as rasterio and GDAL count them; arrays are float32 of any (identical) shape, usually
``(rows, cols)``. Division by zero, a negative square root and non-finite input give NaN, never
inf, and numpy stays quiet about it. Values outside an index's ``valid_range`` (which only
happen with negative reflectance or a near-zero denominator, e.g. EVI over cloud) become NaN by
default; ``out_of_range="clip"`` or ``"keep"`` changes that.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

from geovision.errors import BandMismatchError, ConfigError

__all__ = [
    "BAND_NAMES",
    "INDICES",
    "SENSORS",
    "IndexSpec",
    "SensorPreset",
    "compute_index",
    "parse_band_mapping",
    "resolve_bands",
    "sentinel2_offset",
    "to_reflectance",
]

BAND_NAMES: tuple[str, ...] = (
    "coastal",      # ~443 nm (S2 B01, Landsat B1, SuperDove coastal blue)
    "blue",         # ~490 nm
    "green_i",      # ~531 nm (PlanetScope SuperDove "Green I" only)
    "green",        # ~560 nm
    "yellow",       # ~610 nm (PlanetScope SuperDove only)
    "red",          # ~665 nm
    "rededge",      # first red-edge band, 705-730 nm: the one NDRE uses
    "rededge2",     # ~740 nm (S2 B06)
    "rededge3",     # ~783 nm (S2 B07)
    "nir",          # broad near infrared, 840-865 nm
    "nir_narrow",   # ~865 nm (S2 B8A)
    "watervapour",  # ~945 nm (S2 B09)
    "swir1",        # ~1610 nm
    "swir2",        # ~2200 nm
)
"""Band names understood by presets, ``--bands`` and :func:`compute_index`."""

OutOfRange = Literal["nan", "clip", "keep"]
_RANGE_TOL = 1e-6  # float32 rounding slack at the edges of a valid range


# --- indices ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """A vegetation index: the bands it reads and the range its values can take.

    Attributes:
        name: Registry key, e.g. ``"ndvi"``.
        bands: Band names the formula reads, e.g. ``("nir", "red")``.
        formula: The formula on surface reflectance (0-1), for docs and ``--help``.
        valid_range: ``(low, high)`` the index takes for reflectance in [0, 1] (EVI: its usual
            physical range); values outside come from bad input, see :func:`compute_index`.
        description: One line on what the index is good for.
    """

    name: str
    bands: tuple[str, ...]
    formula: str
    valid_range: tuple[float, float]
    description: str


INDICES: Mapping[str, IndexSpec] = MappingProxyType({
    spec.name: spec
    for spec in (
        IndexSpec("ndvi", ("nir", "red"), "(NIR - RED) / (NIR + RED)", (-1.0, 1.0),
                  "Normalised difference vegetation index: green biomass; saturates over dense canopy."),
        IndexSpec("ndre", ("nir", "rededge"), "(NIR - REDEDGE) / (NIR + REDEDGE)", (-1.0, 1.0),
                  "Normalised difference red edge: chlorophyll/nitrogen status; keeps contrast in dense canopy."),
        IndexSpec("gndvi", ("nir", "green"), "(NIR - GREEN) / (NIR + GREEN)", (-1.0, 1.0),
                  "Green NDVI: chlorophyll content, more sensitive than NDVI at mid to high biomass."),
        IndexSpec("savi", ("nir", "red"), "(1 + L) * (NIR - RED) / (NIR + RED + L), L = 0.5", (-1.0, 1.0),
                  "Soil-adjusted vegetation index: NDVI with less soil-brightness influence (sparse canopy)."),
        IndexSpec("evi", ("nir", "red", "blue"),
                  "G * (NIR - RED) / (NIR + C1 * RED - C2 * BLUE + L), G = 2.5, C1 = 6, C2 = 7.5, L = 1",
                  (-1.0, 1.0),
                  "Enhanced vegetation index: corrects for aerosols and canopy background; no NDVI saturation."),
        IndexSpec("msavi2", ("nir", "red"), "(2 * NIR + 1 - sqrt((2 * NIR + 1)^2 - 8 * (NIR - RED))) / 2",
                  (-1.0, 1.0),
                  "Modified SAVI (Qi et al. 1994) with a self-adjusting L: early season, much bare soil."),
    )
})
"""Vegetation indices by name."""


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b) / (a + b)


def _savi(nir: np.ndarray, red: np.ndarray, soil: float = 0.5) -> np.ndarray:
    return (1.0 + soil) * (nir - red) / (nir + red + soil)


def _evi(nir: np.ndarray, red: np.ndarray, blue: np.ndarray) -> np.ndarray:
    return 2.5 * (nir - red) / (nir + 6.0 * red - 7.5 * blue + 1.0)


def _msavi2(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    b = 2.0 * nir + 1.0
    # sqrt of a negative number is NaN (invalid warning silenced by the caller's errstate)
    return (b - np.sqrt(b * b - 8.0 * (nir - red))) / 2.0


_FORMULAS: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "ndvi": lambda b: _normalised_difference(b["nir"], b["red"]),
    "ndre": lambda b: _normalised_difference(b["nir"], b["rededge"]),
    "gndvi": lambda b: _normalised_difference(b["nir"], b["green"]),
    "savi": lambda b: _savi(b["nir"], b["red"]),
    "evi": lambda b: _evi(b["nir"], b["red"], b["blue"]),
    "msavi2": lambda b: _msavi2(b["nir"], b["red"]),
}


# --- sensors ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensorPreset:
    """Where a sensor's usual product file keeps each band, and how to make it reflectance.

    Attributes:
        name: Registry key, e.g. ``"sentinel2-l2a"``.
        product: The file and band order assumed, in words.
        bands: Band name -> 1-based band position in that file.
        band_count: Number of bands in that file.
        scale: Reflectance = DN * scale + offset.
        offset: In reflectance units (Sentinel-2: the value for baseline >= 04.00, see
            :func:`sentinel2_offset`).
        notes: Assumptions a user may need to override.
    """

    name: str
    product: str
    bands: Mapping[str, int]
    band_count: int
    scale: float
    offset: float
    notes: str = ""


def _preset(name: str, product: str, order: tuple[str, ...], scale: float, offset: float,
            notes: str = "") -> SensorPreset:
    bands = MappingProxyType({band: i for i, band in enumerate(order, start=1) if band})
    return SensorPreset(name, product, bands, len(order), scale, offset, notes)


SENSORS: Mapping[str, SensorPreset] = MappingProxyType({
    p.name: p
    for p in (
        _preset(
            "sentinel2-l2a",
            "Sentinel-2 L2A surface reflectance, the 12 bands stacked in ESA band-number order "
            "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12 (no B10: L2A drops the cirrus band), as the "
            "SAFE/COG per-band files sort by band number with B8A after B08",
            ("coastal", "blue", "green", "red", "rededge", "rededge2", "rededge3", "nir", "nir_narrow",
             "watervapour", "swir1", "swir2"),
            1e-4, -0.1,
            "reflectance = (DN + BOA_ADD_OFFSET) / 10000: BOA_ADD_OFFSET = -1000 from processing baseline "
            "04.00 (25 Jan 2022 on, and the reprocessed Collection-1 archive), 0 before; pass baseline= "
            "(e.g. '03.01' or 'N0301' from the product name) for older products. Bands 1-8 (blue=2, green=3, "
            "red=4, rededge=B05=5, nir=8) are the same in a 13-band L1C stack with B10 or an alphabetical "
            "B01..B12,B8A stack; swir1/swir2/nir_narrow are not: use --bands for those.",
        ),
        _preset(
            "landsat8-9-oli",
            "Landsat 8/9 OLI Collection 2 Level-2 surface reflectance, SR_B1..SR_B7 stacked in order "
            "(coastal, blue, green, red, NIR, SWIR1, SWIR2)",
            ("coastal", "blue", "green", "red", "nir", "swir1", "swir2"),
            2.75e-5, -0.2,
            "Collection 2 L2 scaling: reflectance = DN * 0.0000275 - 0.2. No red-edge band, so no NDRE.",
        ),
        _preset(
            "planetscope-4band",
            "PlanetScope 4-band analytic surface reflectance (AnalyticMS_SR), band order blue, green, red, NIR",
            ("blue", "green", "red", "nir"),
            1e-4, 0.0,
            "Planet SR: reflectance = DN / 10000. No red-edge band, so no NDRE.",
        ),
        _preset(
            "planetscope-8band",
            "PlanetScope SuperDove 8-band surface reflectance (AnalyticMS_SR_8b), band order coastal blue, "
            "blue, green I, green, yellow, red, red edge, NIR",
            ("coastal", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"),
            1e-4, 0.0,
            "Planet SR: reflectance = DN / 10000. 'green' is band 4 (565 nm, the 4-band green); "
            "band 3 (531 nm) is 'green_i'.",
        ),
        _preset(
            "micasense-rededge-mx",
            "MicaSense RedEdge-MX reflectance orthomosaic in the camera's band (file suffix) order: "
            "1 blue, 2 green, 3 red, 4 NIR, 5 red edge",
            ("blue", "green", "red", "nir", "rededge"),
            1.0, 0.0,
            "Assumes a float reflectance map (0-1) as Pix4D/Metashape export after panel calibration. An "
            "integer export is scaled: pass scale= (e.g. 1/32768 or 1/65535, whatever the export used).",
        ),
        _preset(
            "dji-p4-multispectral",
            "DJI Phantom 4 Multispectral reflectance orthomosaic in the camera's band order: "
            "1 blue, 2 green, 3 red, 4 red edge, 5 NIR (the RGB image is not part of the stack)",
            ("blue", "green", "red", "rededge", "nir"),
            1.0, 0.0,
            "Assumes a float reflectance map (0-1) as DJI Terra/Pix4D export. An integer export is scaled: "
            "pass scale= (e.g. 1/10000 or 1/65535, whatever the export used).",
        ),
    )
})
"""Sensor presets by name."""


_BASELINE = re.compile(r"^(?:N(?P<n_major>\d{2})(?P<n_minor>\d{2})|(?P<major>\d{1,2})(?:\.(?P<minor>\d{1,2}))?)$")


def sentinel2_offset(baseline: str | None) -> float:
    """The Sentinel-2 L2A reflectance offset for a processing baseline.

    Args:
        baseline: ``"04.00"``, ``"4.0"``, ``"05.10"`` or the product-name form ``"N0400"``.
            ``None`` assumes a current product (baseline >= 04.00).

    Returns:
        ``-0.1`` (BOA_ADD_OFFSET -1000 / 10000) from baseline 04.00 on, else ``0.0``.
    """
    if baseline is None:
        return -0.1
    match = _BASELINE.match(baseline.strip().upper())
    if match is None:
        raise ConfigError(
            f"Sentinel-2 processing baseline {baseline!r} is not understood; give it as in the product "
            "metadata, e.g. '04.00' or 'N0400' (the 'Nxxxx' part of the SAFE name)."
        )
    major = int(match["n_major"] or match["major"])
    return -0.1 if major >= 4 else 0.0


# --- band mappings ----------------------------------------------------------------


def _unknown(kind: str, value: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {value!r}.{hint} Valid {kind}s: {', '.join(valid)}."


def _check_mapping(bands: Mapping[str, int], source: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, position in bands.items():
        key = str(name).strip().lower()
        if key not in BAND_NAMES:
            raise ConfigError(f"{source}: " + _unknown("band name", key, BAND_NAMES))
        if not isinstance(position, (int, np.integer)) or isinstance(position, bool) or position < 1:
            raise ConfigError(f"{source}: band {key!r} must be a 1-based band number (1, 2, ...), got {position!r}.")
        if key in out:
            raise ConfigError(f"{source}: band {key!r} is given twice.")
        out[key] = int(position)
    seen: dict[int, str] = {}
    for key, position in out.items():
        if position in seen:
            raise ConfigError(f"{source}: {seen[position]!r} and {key!r} both point at band {position}; "
                              "each band name needs its own band number.")
        seen[position] = key
    return out


def parse_band_mapping(text: str) -> dict[str, int]:
    """Parse ``"red=3,nir=4,rededge=5"`` into ``{"red": 3, "nir": 4, "rededge": 5}``.

    Names are case-insensitive and must be in :data:`BAND_NAMES`; numbers are 1-based. Spaces
    around names, numbers and commas are allowed.

    Raises:
        ConfigError: Empty text, an item without ``=``, a number that is not a positive integer,
            an unknown band name, a name given twice or two names on the same band.
    """
    source = f"--bands {text!r}"
    items = [item.strip() for item in text.split(",")] if text and text.strip() else []
    if not items:
        raise ConfigError(f"{source}: no bands given; write name=number pairs, e.g. --bands red=3,nir=4.")
    pairs: list[tuple[str, int]] = []
    for item in items:
        name, sep, number = item.partition("=")
        if not sep or not name.strip() or not number.strip():
            raise ConfigError(f"{source}: {item!r} is not name=number; write e.g. --bands red=3,nir=4.")
        try:
            position = int(number.strip())
        except ValueError:
            raise ConfigError(f"{source}: {number.strip()!r} (for {name.strip()!r}) is not a whole band number; "
                              "write e.g. nir=4.") from None
        pairs.append((name.strip().lower(), position))
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: band {name!r} is given twice.")
    return _check_mapping(dict(pairs), source)


def _lookup(registry: Mapping[str, object], kind: str, value: str) -> str:
    key = value.strip().lower()
    if key not in registry:
        raise ConfigError(_unknown(kind, key, sorted(registry)))
    return key


def resolve_bands(
    sensor: str | None,
    bands: Mapping[str, int] | str | None,
    index: str,
    band_count: int | None = None,
    *,
    baseline: str | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> tuple[dict[str, int], float, float]:
    """The band positions an index needs, and how to scale the DN to reflectance.

    Args:
        sensor: A :data:`SENSORS` key, or ``None`` for explicit ``bands`` only (then the data are
            taken as reflectance already: scale 1, offset 0, unless given).
        bands: Band name -> 1-based position (or ``"red=3,nir=4"`` text); overrides the preset's
            position of the same band and may add bands the preset lacks.
        index: An :data:`INDICES` key.
        band_count: The raster's band count; checked when given.
        baseline: Sentinel-2 L2A processing baseline (see :func:`sentinel2_offset`); only for
            ``sentinel2-l2a``.
        scale: Overrides the preset's scale (e.g. an integer drone export).
        offset: Overrides the preset's offset (reflectance units), baseline included.

    Returns:
        ``({band name: 1-based position} for the bands of ``index`` in formula order, scale, offset)``.

    Raises:
        ConfigError: Unknown sensor, index or band name; neither sensor nor bands; a baseline
            for a sensor other than Sentinel-2.
        BandMismatchError: The index needs a band the preset and ``bands`` do not give, or a
            band position beyond ``band_count``.
    """
    spec = INDICES[_lookup(INDICES, "index", index)]
    explicit = parse_band_mapping(bands) if isinstance(bands, str) else _check_mapping(bands or {}, "bands")
    if sensor is None and not explicit:
        raise ConfigError(f"index {spec.name!r} needs to know where its bands {', '.join(spec.bands)} are: give "
                          f"a sensor ({', '.join(SENSORS)}) or the bands, e.g. --bands "
                          + ",".join(f"{b}={i}" for i, b in enumerate(spec.bands, start=1)) + ".")
    if sensor is None:
        mapping, where, base_scale, base_offset = explicit, "the given --bands", 1.0, 0.0
        if baseline is not None:
            raise ConfigError("baseline applies to the sentinel2-l2a preset only; give --sensor sentinel2-l2a.")
    else:
        preset = SENSORS[_lookup(SENSORS, "sensor", sensor)]
        mapping = {**preset.bands, **explicit}
        where = f"sensor preset {preset.name!r}" + (" or the given --bands" if explicit else "")
        base_scale = preset.scale
        if preset.name == "sentinel2-l2a":
            base_offset = sentinel2_offset(baseline)
        elif baseline is not None:
            raise ConfigError(f"baseline {baseline!r} applies to the sentinel2-l2a preset only, not {preset.name!r}; "
                              "leave it out.")
        else:
            base_offset = preset.offset

    needed: dict[str, int] = {}
    for band in spec.bands:
        if band not in mapping:
            raise BandMismatchError(
                f"index {spec.name!r} needs band {band!r}, which {where} does not have; give its 1-based band "
                f"number, e.g. --bands {band}=5, or choose an index without {band!r}."
            )
        needed[band] = mapping[band]
    users: dict[int, list[str]] = {}
    for band, position in needed.items():
        users.setdefault(position, []).append(band)
    for position, names in users.items():
        if len(names) > 1:
            origin = ", ".join(f"{n} ({'--bands' if n in explicit else 'preset'})" for n in names)
            raise BandMismatchError(
                f"index {spec.name!r} would read {' and '.join(map(repr, names))} from the same band {position} "
                f"({origin}); give each its own number, e.g. --bands "
                + ",".join(f"{n}=N" for n in names) + "."
            )
    if band_count is not None:
        for band, position in needed.items():
            if position > band_count:
                raise BandMismatchError(
                    f"index {spec.name!r} reads band {band!r} from band {position}, but the raster has only "
                    f"{band_count} band(s); give the right number, e.g. --bands {band}={band_count}, "
                    "or check the sensor preset."
                )
    return (needed,
            float(base_scale if scale is None else scale),
            float(base_offset if offset is None else offset))


# --- arrays -----------------------------------------------------------------------


def to_reflectance(dn: np.ndarray, scale: float, offset: float,
                   nodata_mask: np.ndarray | None = None) -> np.ndarray:
    """Digital numbers to surface reflectance, ``dn * scale + offset``, as float32.

    Args:
        dn: Any shape and numeric dtype, e.g. ``(bands, rows, cols)`` uint16.
        scale: Multiplier (Sentinel-2 and Planet 1e-4, Landsat C2 L2 2.75e-5).
        offset: Added after scaling, in reflectance units (Sentinel-2 >= 04.00: -0.1).
        nodata_mask: Boolean, True where a pixel is nodata; ``dn``'s shape or one that
            broadcasts to it (a ``(rows, cols)`` mask for a ``(bands, rows, cols)`` stack).

    Returns:
        float32 reflectance of ``dn``'s shape, NaN where ``nodata_mask`` is True or ``dn`` is
        not finite. No clipping: slightly negative reflectance (dark water after the Sentinel-2
        offset) is kept.
    """
    out = np.asarray(dn).astype(np.float32, copy=True)
    out *= np.float32(scale)
    out += np.float32(offset)
    out[~np.isfinite(out)] = np.nan
    if nodata_mask is not None:
        mask = np.asarray(nodata_mask)
        if mask.dtype != np.bool_:
            raise ConfigError(f"nodata_mask must be boolean (True = nodata), got dtype {mask.dtype}; for a "
                              "rasterio read_masks() result (255 = valid) pass `masks == 0`.")
        try:
            mask = np.broadcast_to(mask, out.shape)
        except ValueError:
            raise ConfigError(f"nodata_mask of shape {mask.shape} does not fit the data of shape {out.shape}; "
                              "give a mask of the data's shape or of its last two (rows, cols) axes.") from None
        out[mask] = np.nan
    return out


def compute_index(index: str, bands: Mapping[str, np.ndarray], *,
                  out_of_range: OutOfRange = "nan") -> np.ndarray:
    """Evaluate a vegetation index on surface reflectance.

    Args:
        index: An :data:`INDICES` key (case-insensitive).
        bands: Band name -> reflectance (0-1), all of one shape, e.g. ``(rows, cols)``; at least
            the bands of ``INDICES[index].bands``, others are ignored.
        out_of_range: What to do with values outside ``INDICES[index].valid_range`` (more than
            1e-6 outside; values within that slack are clipped to the range in every mode):
            ``"nan"`` (default) marks them invalid, ``"clip"`` clips them to the range,
            ``"keep"`` leaves them as computed. Such values only come from negative reflectance
            or a near-zero denominator, so they are noise, not vegetation.

    Returns:
        float32 index of the bands' shape. NaN where a band is NaN or infinite, where a
        denominator is zero (0/0 and x/0 alike, never inf), where MSAVI2's square root is of
        a negative number, and (by default) out of range.

    Raises:
        ConfigError: Unknown index or ``out_of_range``.
        BandMismatchError: A band the index needs is missing, or the bands differ in shape.
    """
    spec = INDICES[_lookup(INDICES, "index", index)]
    if out_of_range not in ("nan", "clip", "keep"):
        raise ConfigError(f"out_of_range must be 'nan', 'clip' or 'keep', got {out_of_range!r}.")
    arrays: dict[str, np.ndarray] = {}
    for band in spec.bands:
        if band not in bands:
            raise BandMismatchError(f"index {spec.name!r} needs band {band!r} but got only "
                                    f"{', '.join(sorted(bands)) or 'no bands'}; pass {band!r} as well "
                                    f"(--bands {band}=N for its 1-based band number).")
        arrays[band] = np.asarray(bands[band], dtype=np.float32)
    shapes = {band: a.shape for band, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise BandMismatchError(f"index {spec.name!r}: the bands differ in shape ("
                                + ", ".join(f"{b} {s}" for b, s in shapes.items()) + "); read them on one grid.")

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        clean = {band: np.where(np.isfinite(a), a, np.float32(np.nan)) for band, a in arrays.items()}
        out = np.asarray(_FORMULAS[spec.name](clean), dtype=np.float32)
    out[~np.isfinite(out)] = np.nan

    low, high = spec.valid_range
    outside = (out < low - _RANGE_TOL) | (out > high + _RANGE_TOL)  # NaN compares False
    match out_of_range:
        case "nan":
            out[outside] = np.nan
            np.clip(out, low, high, out=out)
        case "clip":
            np.clip(out, low, high, out=out)
        case _:  # "keep"
            edge = ~outside & ((out < low) | (out > high))
            out[edge] = np.clip(out[edge], low, high)
    return out
