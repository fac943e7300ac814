"""Vegetation indices, sensor presets and band mappings: hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from geovision.agri.indices import (
    INDICES,
    SENSORS,
    compute_index,
    parse_band_mapping,
    resolve_bands,
    sentinel2_offset,
    to_reflectance,
)
from geovision.errors import BandMismatchError, ConfigError


def _bands(**values: list[float]) -> dict[str, np.ndarray]:
    return {name: np.array(v, dtype=np.float32) for name, v in values.items()}


# Two pixels of reflectance:
#   pixel 0: nir 0.5, red 0.1, green 0.2, blue 0.05, rededge 0.3
#   pixel 1: nir 0.4, red 0.2, green 0.1, blue 0.10, rededge 0.2
PIXELS = _bands(nir=[0.5, 0.4], red=[0.1, 0.2], green=[0.2, 0.1], blue=[0.05, 0.1], rededge=[0.3, 0.2])

EXPECTED = {
    # (0.5-0.1)/(0.5+0.1) = 0.4/0.6 ; (0.4-0.2)/(0.6) = 0.2/0.6
    "ndvi": [0.666667, 0.333333],
    # (0.5-0.3)/0.8 = 0.25 ; (0.4-0.2)/0.6
    "ndre": [0.25, 0.333333],
    # (0.5-0.2)/0.7 ; (0.4-0.1)/0.5 = 0.6
    "gndvi": [0.428571, 0.6],
    # 1.5*0.4/(0.5+0.1+0.5) = 0.6/1.1 ; 1.5*0.2/1.1 = 0.3/1.1
    "savi": [0.545455, 0.272727],
    # 2.5*0.4/(0.5+0.6-0.375+1) = 1.0/1.725 ; 2.5*0.2/(0.4+1.2-0.75+1) = 0.5/1.85
    "evi": [0.579710, 0.270270],
    # b=2N+1: 2.0 -> (2 - sqrt(4 - 3.2))/2 = (2 - 0.894427)/2 ; 1.8 -> (1.8 - sqrt(3.24 - 1.6))/2 = (1.8 - 1.280625)/2
    "msavi2": [0.552786, 0.259688],
}


@pytest.mark.parametrize("index", sorted(EXPECTED))
def test_index_values(index: str) -> None:
    out = compute_index(index, PIXELS)
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_allclose(out, EXPECTED[index], atol=1e-5)


def test_registry_covers_the_required_indices() -> None:
    assert set(EXPECTED) <= set(INDICES)
    assert INDICES["ndvi"].bands == ("nir", "red")
    assert INDICES["evi"].bands == ("nir", "red", "blue")
    assert all(spec.valid_range == (-1.0, 1.0) for spec in INDICES.values())


def test_index_name_is_case_insensitive_and_typos_are_explained() -> None:
    np.testing.assert_allclose(compute_index("NDVI", PIXELS), EXPECTED["ndvi"], atol=1e-5)
    with pytest.raises(ConfigError, match="Did you mean 'ndvi'"):
        compute_index("ndiv", PIXELS)


def test_zero_division_gives_nan_not_inf() -> None:
    # pixel 0: 0/0 ; pixel 1: NDVI = (0.1 - -0.1)/(0.1 + -0.1) = 0.2/0 ; pixel 2: normal 0.3/0.5 = 0.6
    b = _bands(nir=[0.0, 0.1, 0.4], red=[0.0, -0.1, 0.1])
    with np.errstate(all="raise"):  # compute_index must stay quiet by itself
        out = compute_index("ndvi", b, out_of_range="keep")
    assert np.isnan(out[:2]).all() and not np.isinf(out).any()
    assert out[2] == pytest.approx(0.6, abs=1e-6)


def test_evi_zero_denominator_and_msavi2_negative_root_give_nan() -> None:
    # EVI denominator 0.5 + 6*0 - 7.5*0.2 + 1 = 0
    evi = compute_index("evi", _bands(nir=[0.5], red=[0.0], blue=[0.2]), out_of_range="keep")
    assert np.isnan(evi).all()
    # MSAVI2 root (2N+1)^2 - 8(N-R) = 4 - 8*0.6 = -0.8 < 0 (N = 0.5, R = -0.1)
    msavi2 = compute_index("msavi2", _bands(nir=[0.5], red=[-0.1]), out_of_range="keep")
    assert np.isnan(msavi2).all()


def test_nan_and_inf_inputs_give_nan() -> None:
    b = _bands(nir=[np.nan, np.inf, 0.5], red=[0.1, 0.1, 0.1])
    out = compute_index("ndvi", b)
    assert np.isnan(out[:2]).all()
    assert out[2] == pytest.approx(0.666667, abs=1e-5)


def test_out_of_range_modes() -> None:
    # NDVI = (0.05 - -0.02)/(0.05 + -0.02) = 0.07/0.03 = 2.333 (negative reflectance); second pixel 0.2/0.6 in range
    b = _bands(nir=[0.05, 0.4], red=[-0.02, 0.2])
    default = compute_index("ndvi", b)
    assert np.isnan(default[0]) and default[1] == pytest.approx(1 / 3, abs=1e-6)
    np.testing.assert_allclose(compute_index("ndvi", b, out_of_range="clip"), [1.0, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(compute_index("ndvi", b, out_of_range="keep"), [7 / 3, 1 / 3], atol=1e-5)
    with pytest.raises(ConfigError, match="out_of_range"):
        compute_index("ndvi", b, out_of_range="drop")  # type: ignore[arg-type]


def test_range_edges_stay_in_range() -> None:
    # red = 0 -> NDVI exactly 1; MSAVI2 at N=1, R=0: (3 - sqrt(9 - 8))/2 = 1; no float32 slack past 1, not NaN
    b = _bands(nir=[1.0, 0.0], red=[0.0, 1.0])
    np.testing.assert_array_equal(compute_index("ndvi", b), [1.0, -1.0])
    out = compute_index("msavi2", b)  # N=0, R=1: (1 - sqrt(1 + 8))/2 = -1
    np.testing.assert_allclose(out, [1.0, -1.0], atol=1e-6)
    assert out.max() <= 1.0 and out.min() >= -1.0


def test_missing_band_or_shape_mismatch() -> None:
    with pytest.raises(BandMismatchError, match="'rededge'"):
        compute_index("ndre", _bands(nir=[0.5], red=[0.1]))
    with pytest.raises(BandMismatchError, match="shape"):
        compute_index("ndvi", {"nir": np.zeros((2, 2), np.float32), "red": np.zeros((3, 3), np.float32)})


# --- reflectance ------------------------------------------------------------------


def test_to_reflectance_scales_and_masks_nodata() -> None:
    dn = np.array([[2000, 0], [11000, 65535]], dtype=np.uint16)
    nodata = dn == 0
    # Sentinel-2 >= 04.00: (2000 - 1000)/10000 = 0.1 ; (11000 - 1000)/10000 = 1.0 ; 65535 -> 6.4535
    out = to_reflectance(dn, 1e-4, -0.1, nodata)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[~nodata], [0.1, 1.0, 6.4535], atol=1e-5)
    assert np.isnan(out[0, 1])
    # Landsat C2 L2: 10000 * 0.0000275 - 0.2 = 0.075 ; 7273 * 0.0000275 - 0.2 = 0.0000075
    np.testing.assert_allclose(to_reflectance(np.array([10000, 7273]), 2.75e-5, -0.2), [0.075, 7.5e-6], atol=1e-6)


def test_to_reflectance_broadcasts_a_2d_mask_and_rejects_bad_masks() -> None:
    dn = np.full((3, 2, 2), 5000, dtype=np.uint16)
    mask = np.array([[True, False], [False, False]])
    out = to_reflectance(dn, 1e-4, 0.0, mask)
    assert np.isnan(out[:, 0, 0]).all() and np.allclose(out[:, 1, 1], 0.5)
    with pytest.raises(ConfigError, match="masks == 0"):
        to_reflectance(dn, 1e-4, 0.0, np.full((2, 2), 255, dtype=np.uint8))
    with pytest.raises(ConfigError, match="shape"):
        to_reflectance(dn, 1e-4, 0.0, np.zeros((3, 3), dtype=bool))


def test_reflectance_then_index_keeps_nodata_as_nan() -> None:
    red = to_reflectance(np.array([1500, 0]), 1e-4, 0.0, np.array([False, True]))
    nir = to_reflectance(np.array([4500, 0]), 1e-4, 0.0, np.array([False, True]))
    # (0.45 - 0.15)/(0.60) = 0.5 ; nodata -> NaN
    out = compute_index("ndvi", {"red": red, "nir": nir})
    assert out[0] == pytest.approx(0.5, abs=1e-6) and np.isnan(out[1])


@pytest.mark.parametrize(("baseline", "offset"), [
    ("04.00", -0.1), ("05.10", -0.1), ("N0400", -0.1), ("4.0", -0.1), (None, -0.1),
    ("03.01", 0.0), ("02.14", 0.0), ("N0301", 0.0),
])
def test_sentinel2_offset_by_baseline(baseline: str | None, offset: float) -> None:
    assert sentinel2_offset(baseline) == offset
    _, scale, got = resolve_bands("sentinel2-l2a", None, "ndvi", baseline=baseline)
    assert (scale, got) == (1e-4, offset)


def test_sentinel2_bad_baseline_and_baseline_for_other_sensor() -> None:
    with pytest.raises(ConfigError, match="'04.00' or 'N0400'"):
        sentinel2_offset("latest")
    with pytest.raises(ConfigError, match="sentinel2-l2a preset only"):
        resolve_bands("landsat8-9-oli", None, "ndvi", baseline="04.00")


# --- sensor presets: NDVI and NDRE bands, one test each ---------------------------


def test_preset_sentinel2_l2a() -> None:
    # 12-band L2A stack B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12
    assert resolve_bands("sentinel2-l2a", None, "ndvi", 12) == ({"nir": 8, "red": 4}, 1e-4, -0.1)
    assert resolve_bands("sentinel2-l2a", None, "ndre", 12)[0] == {"nir": 8, "rededge": 5}
    assert SENSORS["sentinel2-l2a"].bands["swir1"] == 11 and SENSORS["sentinel2-l2a"].band_count == 12


def test_preset_landsat8_9_oli() -> None:
    # SR_B1..SR_B7: coastal, blue, green, red, nir, swir1, swir2
    assert resolve_bands("landsat8-9-oli", None, "ndvi", 7) == ({"nir": 5, "red": 4}, 2.75e-5, -0.2)
    with pytest.raises(BandMismatchError, match="'rededge'.*'landsat8-9-oli'.*--bands rededge="):
        resolve_bands("landsat8-9-oli", None, "ndre", 7)


def test_preset_planetscope_4band() -> None:
    # BGRN
    assert resolve_bands("planetscope-4band", None, "ndvi", 4) == ({"nir": 4, "red": 3}, 1e-4, 0.0)
    with pytest.raises(BandMismatchError, match="needs band 'rededge'"):
        resolve_bands("planetscope-4band", None, "ndre", 4)


def test_preset_planetscope_8band() -> None:
    # coastal, blue, green_i, green, yellow, red, rededge, nir
    assert resolve_bands("planetscope-8band", None, "ndvi", 8) == ({"nir": 8, "red": 6}, 1e-4, 0.0)
    assert resolve_bands("planetscope-8band", None, "ndre", 8)[0] == {"nir": 8, "rededge": 7}
    assert resolve_bands("planetscope-8band", None, "gndvi")[0] == {"nir": 8, "green": 4}


def test_preset_micasense_rededge_mx() -> None:
    # blue, green, red, nir, rededge (camera file order)
    assert resolve_bands("micasense-rededge-mx", None, "ndvi", 5) == ({"nir": 4, "red": 3}, 1.0, 0.0)
    assert resolve_bands("micasense-rededge-mx", None, "ndre", 5)[0] == {"nir": 4, "rededge": 5}


def test_preset_dji_p4_multispectral() -> None:
    # blue, green, red, rededge, nir
    assert resolve_bands("dji-p4-multispectral", None, "ndvi", 5) == ({"nir": 5, "red": 3}, 1.0, 0.0)
    assert resolve_bands("dji-p4-multispectral", None, "ndre", 5)[0] == {"nir": 5, "rededge": 4}


def test_every_preset_is_tested_and_consistent() -> None:
    assert set(SENSORS) == {"sentinel2-l2a", "landsat8-9-oli", "planetscope-4band", "planetscope-8band",
                            "micasense-rededge-mx", "dji-p4-multispectral"}
    for preset in SENSORS.values():
        positions = list(preset.bands.values())
        assert sorted(positions) == list(range(1, preset.band_count + 1)), preset.name


# --- resolve_bands: overrides and checks --------------------------------------------


def test_explicit_bands_override_the_preset() -> None:
    # a 4-band Sentinel-2 stack B02,B03,B04,B08: nir is band 4 and red band 3; scaling still from the preset
    assert resolve_bands("sentinel2-l2a", {"red": 3, "nir": 4}, "ndvi", 4) == ({"nir": 4, "red": 3}, 1e-4, -0.1)
    # bands text is accepted too, and adds a band the preset lacks
    assert resolve_bands("landsat8-9-oli", "rededge=8", "ndre", 8)[0] == {"nir": 5, "rededge": 8}


def test_override_that_collides_with_the_preset_is_refused() -> None:
    # nir=4 on the Sentinel-2 preset, whose red is band 4 too: would silently give NDVI 0
    with pytest.raises(BandMismatchError, match="same band 4"):
        resolve_bands("sentinel2-l2a", {"nir": 4}, "ndvi", 4)


def test_explicit_bands_without_sensor_and_user_scaling() -> None:
    assert resolve_bands(None, {"red": 3, "nir": 4, "rededge": 5}, "ndre") == ({"nir": 4, "rededge": 5}, 1.0, 0.0)
    # an integer drone export: the user gives the scale
    assert resolve_bands("micasense-rededge-mx", None, "ndvi", scale=1 / 32768)[1:] == (1 / 32768, 0.0)
    assert resolve_bands("sentinel2-l2a", None, "ndvi", offset=0.0)[2] == 0.0


def test_band_beyond_band_count() -> None:
    # the Sentinel-2 preset's nir is band 8; a 4-band raster has no band 8
    with pytest.raises(BandMismatchError, match="band 8.*only 4 band"):
        resolve_bands("sentinel2-l2a", None, "ndvi", band_count=4)


def test_resolve_bands_config_errors() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'sentinel2-l2a'"):
        resolve_bands("sentinel2-l1a", None, "ndvi")
    with pytest.raises(ConfigError, match="give a sensor"):
        resolve_bands(None, None, "ndvi")
    with pytest.raises(ConfigError, match="unknown index"):
        resolve_bands("sentinel2-l2a", None, "ndwi")
    with pytest.raises(ConfigError, match="1-based"):
        resolve_bands(None, {"red": 0, "nir": 1}, "ndvi")


# --- parse_band_mapping -----------------------------------------------------------


def test_parse_band_mapping_good() -> None:
    assert parse_band_mapping("red=3,nir=4,rededge=5") == {"red": 3, "nir": 4, "rededge": 5}
    assert parse_band_mapping(" Red = 3 , NIR=4 ") == {"red": 3, "nir": 4}


@pytest.mark.parametrize(("text", "message"), [
    ("", "no bands given"),
    ("   ", "no bands given"),
    ("red3", "not name=number"),
    ("red=", "not name=number"),
    ("=3", "not name=number"),
    ("red=three", "not a whole band number"),
    ("red=3.5", "not a whole band number"),
    ("red=0", "1-based"),
    ("red=-1", "1-based"),
    ("reddedge=5", "Did you mean 'rededge'"),
    ("infrared=4", "unknown band name 'infrared'"),
    ("red=3,red=4", "given twice"),
    ("red=3,nir=3", "both point at band 3"),
    ("red=3,,nir=4", "not name=number"),
])
def test_parse_band_mapping_bad(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_band_mapping(text)
