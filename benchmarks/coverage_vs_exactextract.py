"""Per-pixel coverage fractions: ``geovision.agri.coverage`` against exactextract.

Issue 17 asks whether the hand-written :func:`geovision.agri.coverage.coverage_fractions`
should give way to exactextract (``pip install exactextract``). ``stress.py`` calls it
once per field per 512x512 block that the streaming reader already holds in memory, so
exactextract is measured the same way, its setup included in every call:

* ``hand``: the hand-written ``coverage_fractions`` that geovision used before (GDAL centre
  rule + shapely ``pixel ∩ polygon`` on the dilated boundary; kept here, verbatim, as
  :func:`hand_written`);
* ``geovision``: today's ``coverage_fractions`` (exactextract on the polygon in pixel space);
* ``ee``: exactextract's documented entry point, ``exact_extract(NumPyRasterSource, [GeoJSON
  feature], ["cell_id", "coverage"])``, one call per field. ``NumPyRasterSource`` takes an
  axis-aligned extent only (and ``RasterioRasterSource``/``GDALRasterSource`` raise "Rotated
  rasters are not supported."), so this column is empty for the rotated grid;
* ``ee-low``: exactextract's lower-level API (processor, WKB features, a writer that keeps
  the arrays), one call per field, with the polygon mapped into pixel space first. Coverage
  fractions are ratios of areas, which an affine map keeps, so this also covers rotated grids;
* ``ee-batch``: ``ee-low`` with all of a block's fields in one call (what ``stress.py`` could
  do if it were restructured around exactextract).

Accuracy: the largest per-pixel difference from ``hand``, and for each method the largest
relative error of ``sum(fractions) x pixel area`` against the planar area of the polygon
clipped to the block. Times: median of ``--repeats`` runs over a whole block (every field),
including scattering the result into the ``(rows, cols)`` float32 array callers use::

    python benchmarks/coverage_vs_exactextract.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from affine import Affine
from machine import cpu_flags, cpu_model
from scipy import ndimage

from geovision.agri.coverage import _pixel_polygons, coverage_fractions

ROOT = Path(__file__).resolve().parents[1]
FLANDERS = ROOT.parent / "shared" / "data" / "befl_fields_s2_orthoseg"
BLOCK = (512, 512)


# --- exactextract, three ways ----------------------------------------------------------------


def ee_high(geoms, transform: Affine, shape):
    """``exact_extract`` as documented: a NumPy raster with a north-up extent, GeoJSON features."""
    from exactextract import exact_extract
    from exactextract.raster import NumPyRasterSource

    if transform.b or transform.d:
        raise ValueError("exactextract grids are axis-aligned")
    rows, cols = shape
    out = []
    for g in geoms:
        x0, x1 = sorted((transform.c, transform.c + transform.a * cols))
        y0, y1 = sorted((transform.f, transform.f + transform.e * rows))
        src = NumPyRasterSource(np.zeros(shape, np.uint8), x0, y0, x1, y1)
        feat = {"type": "Feature", "properties": {}, "geometry": g.__geo_interface__}
        res = exact_extract(src, [feat], ["cell_id", "coverage"])[0]["properties"]
        frac = np.zeros(shape, np.float32)
        frac.ravel()[res["cell_id"]] = res["coverage"]
        out.append(frac)
    return out


def _low_level():
    from exactextract import Feature
    from exactextract.feature import FeatureSource
    from exactextract.writer import Writer

    class WKBFeature(Feature):
        def __init__(self, wkb=None):
            Feature.__init__(self)
            self.wkb, self.props = wkb, {}

        def geometry(self):
            return self.wkb

        def set_geometry(self, wkb):
            self.wkb = wkb

        def set_geometry_format(self):
            return "wkb"

        def set(self, name, value):
            self.props[name] = value

        def get(self, name):
            return self.props[name]

        def fields(self):
            return list(self.props)

    class Features(FeatureSource):
        def __init__(self, wkbs):
            super().__init__()
            self.wkbs = wkbs

        def count(self):
            return len(self.wkbs)

        def __iter__(self):
            for w in self.wkbs:
                yield WKBFeature(w)

        def srs_wkt(self):
            return None

    class Arrays(Writer):
        def __init__(self):
            super().__init__()
            self.out = []

        def add_operation(self, op):
            pass

        def add_column(self, name):
            pass

        def add_geometry(self):
            pass

        def finish(self):
            pass

        def write(self, feature):
            f = WKBFeature()
            feature.copy_to(f)
            self.out.append(f.props)

    return Features, Arrays


_LOW = None


def ee_low(geoms, transform: Affine, shape):
    """exactextract's processor on the polygons mapped to pixel space (col, -row): any affine grid."""
    from exactextract.exact_extract import prep_ops
    from exactextract.processor import FeatureSequentialProcessor
    from exactextract.raster import NumPyRasterSource

    global _LOW
    if _LOW is None:
        _LOW = _low_level()
    features_cls, writer_cls = _LOW
    rows, cols = shape
    inv = ~transform
    # (x, y) -> (col, -row): pixel (r, c) is the unit square [c, c+1] x [-r-1, -r]
    matrix = [inv.a, inv.b, -inv.d, -inv.e, inv.c, -inv.f]
    wkbs = [shapely.to_wkb(shapely.affinity.affine_transform(g, matrix)) for g in geoms]
    src = NumPyRasterSource(np.zeros(shape, np.uint8), 0.0, -float(rows), float(cols), 0.0)
    ops = prep_ops(["cell_id", "coverage"], [src])
    features, writer = features_cls(wkbs), writer_cls()  # the processor does not keep these alive
    processor = FeatureSequentialProcessor(features, writer, ops)
    processor.set_max_cells_in_memory(30_000_000)
    processor.set_grid_compat_tol(1e-3)
    processor.process()
    out = []
    for props in writer.out:
        frac = np.zeros(shape, np.float32)
        frac.ravel()[props["cell_id"]] = props["coverage"]
        out.append(frac)
    return out


def hand_written(geom: shapely.Geometry, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """geovision's coverage_fractions before exactextract (issue 17), as it was."""
    from rasterio.features import rasterize

    if geom is None or geom.is_empty:
        return np.zeros(shape, np.float32)
    inside = rasterize([(geom, 1)], out_shape=shape, transform=transform, all_touched=False, dtype="uint8")
    edge = rasterize([(geom.boundary, 1)], out_shape=shape, transform=transform, all_touched=True, dtype="uint8")
    edge = ndimage.binary_dilation(edge.astype(bool), structure=np.ones((3, 3), bool))
    frac = inside.astype(np.float32)
    r, c = np.nonzero(edge)
    if r.size:
        pixels = _pixel_polygons(transform, r, c)
        shapely.prepare(geom)
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        share = shapely.area(shapely.intersection(pixels, geom)) / pixel_area
        frac[r, c] = np.clip(share, 0.0, 1.0).astype(np.float32)
    return frac


def hand(geoms, transform: Affine, shape):
    return [hand_written(g, transform, shape) for g in geoms]


def geovision(geoms, transform: Affine, shape):
    return [coverage_fractions(g, transform, shape) for g in geoms]


METHODS = {
    "hand": hand,
    "geovision": geovision,
    "ee": ee_high,
    "ee-low": lambda gs, t, s: [f for g in gs for f in ee_low([g], t, s)],
    "ee-batch": ee_low,
}


# --- cases -----------------------------------------------------------------------------------


def _field(rng, cx: float, cy: float, area: float, hole: bool) -> shapely.Geometry:
    """An irregular, roughly star-shaped field of about ``area`` (CRS units²), maybe with a hole."""
    n = int(rng.integers(12, 60))
    theta = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = 1 + 0.25 * np.convolve(rng.normal(size=n + 4), np.ones(5) / 5, "valid")
    poly = shapely.Polygon(np.c_[np.cos(theta) * radius, np.sin(theta) * radius * rng.uniform(0.5, 1.0)])
    poly = shapely.affinity.rotate(poly, rng.uniform(0, 180), origin=(0, 0))
    if hole:
        inner = shapely.Point(rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)).buffer(0.18, quad_segs=5)
        poly = poly.difference(inner)
    poly = shapely.make_valid(poly)
    poly = max(shapely.get_parts(poly), key=lambda p: p.area) if poly.geom_type != "Polygon" else poly
    s = np.sqrt(area / poly.area)
    return shapely.affinity.affine_transform(poly, [s, 0, 0, s, cx, cy])


def synthetic(transform: Affine, ground_scale: float, seed: int, n: int = 20):
    """``n`` fields of 1.5-8 ha (ground) spread over a 512x512 block, a few across its edges."""
    rng = np.random.default_rng(seed)
    geoms = []
    for i in range(n):
        col, row = rng.uniform(-10, BLOCK[1] + 10), rng.uniform(-10, BLOCK[0] + 10)
        x, y = transform * (col, row)
        area = rng.uniform(1.5e4, 8e4) * ground_scale**2
        geoms.append(_field(rng, x, y, area, hole=i % 4 == 0))
    return geoms


def flanders():
    """The real Flanders fields (Sentinel-2 10 m, UTM 31N) in the raster's first 512x512 block."""
    raster = FLANDERS / "BEFL-TEST-s2_2023-05-01_2023-07-01_B08-B04-B03_min_byte.tif"
    vectors = FLANDERS / "fields_BEFL-s2-fields-2023_polygons.gpkg"
    if not raster.exists() or not vectors.exists():
        return None
    import geopandas as gpd
    import rasterio

    with rasterio.open(raster) as ds:
        transform = ds.transform
    frame = gpd.read_file(vectors, layer="polygons")
    geoms = [g for g in frame.geometry.values if g is not None and not g.is_empty]
    block = _footprint(transform, BLOCK)
    return transform, [g for g in geoms if g.intersects(block)]


def _footprint(transform: Affine, shape) -> shapely.Polygon:
    rows, cols = shape
    return shapely.Polygon([transform * (c, r) for c, r in ((0, 0), (cols, 0), (cols, rows), (0, rows))])


def cases():
    utm = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_660_000.0)
    out = [("UTM 10 m, 20 fields", utm, synthetic(utm, 1.0, 1))]
    rotated = Affine.translation(500_000.0, 5_660_000.0) @ Affine.rotation(7.0) @ Affine.scale(10.0, -10.0)
    out.append(("UTM 10 m rotated 7 deg", rotated, synthetic(rotated, 1.0, 2)))
    # Web Mercator at 51 N: zoom-14 pixels (9.55 m in the projection, ~6 m on the ground)
    px = 2 * np.pi * 6378137.0 / 256 / 2**14
    x0 = -20037508.342789244 + 8400 * 256 * px
    y0 = 20037508.342789244 - 5460 * 256 * px
    merc = Affine(px, 0, x0, 0, -px, y0)
    lat = np.degrees(2 * np.arctan(np.exp(y0 / 6378137.0)) - np.pi / 2)
    out.append((f"Web Mercator z14, {lat:.0f} N", merc, synthetic(merc, 1 / np.cos(np.radians(lat)), 3)))
    real = flanders()
    if real is not None:
        out.append((f"Flanders S2 fields ({len(real[1])})", real[0], real[1]))
    return out


# --- measure ---------------------------------------------------------------------------------


def _median_ms(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import exactextract

    print(f"CPU: {cpu_model()} ({platform.machine()}; {' '.join(cpu_flags())}), Python {platform.python_version()}, "
          f"exactextract {exactextract.__version__}, shapely {shapely.__version__} "
          f"(GEOS {shapely.geos_version_string})")
    print(f"block {BLOCK[0]}x{BLOCK[1]}, median of {args.repeats} runs over the whole block; "
          "diff = max |fraction - hand|; area err = max over fields of |sum(frac) x pixel area - clipped area| / area")
    head = f"{'case':28} {'method':9} {'ms/block':>9} {'ms/field':>9} {'max diff':>9} {'area err':>9}"
    print(head)
    print("-" * len(head))
    for name, transform, geoms in cases():
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        clipped = shapely.area(shapely.intersection(np.array(geoms), _footprint(transform, BLOCK)))
        reference = hand(geoms, transform, BLOCK)
        for method, fn in METHODS.items():
            try:
                fracs = fn(geoms, transform, BLOCK)
            except ValueError as e:
                print(f"{name:28} {method:9} {'n/a: ' + str(e):>39}")
                continue
            diff = max(float(np.abs(f - r).max()) for f, r in zip(fracs, reference))
            sums = np.array([f.sum(dtype=np.float64) for f in fracs]) * pixel_area
            keep = clipped > 0
            err = float((np.abs(sums - clipped)[keep] / clipped[keep]).max())
            ms = _median_ms(fn, (geoms, transform, BLOCK), args.repeats)
            print(f"{name:28} {method:9} {ms:9.1f} {ms / len(geoms):9.2f} {diff:9.1e} {err:9.1e}")


if __name__ == "__main__":
    main()
