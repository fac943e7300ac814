"""Training augmentation (geovision.training.augment): any band count, any value range, labels stay aligned."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from geovision.errors import ConfigError, GeovisionWarning  # noqa: E402
from geovision.training.augment import (  # noqa: E402
    AUGMENT_PARAMS,
    IGNORE,
    PRESETS,
    Augment,
    build_augment,
)

SIZE = 64
LOW, HIGH, THRESHOLD = 1000.0, 9000.0, 5000.0
RANGES = {"s2": (0.0, 10_000.0), "signed": (-3.0, 2.0), "tiny": (-1e-3, 1e-3)}
ALLOWED = {
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotate90",
    "Affine",
    "BandBrightnessContrast",
    "BandGaussianNoise",
    "BandGaussianBlur",
}
RGB_ONLY = {
    "HueSaturationValue",
    "ColorJitter",
    "ToGray",
    "ToSepia",
    "CLAHE",
    "RGBShift",
    "ChannelShuffle",
    "RandomGamma",
    "FancyPCA",
    "Equalize",
    "Posterize",
    "Solarize",
    "InvertImg",
    "RandomBrightnessContrast",  # clips float32 to [0, 1]
    "GaussNoise",
    "GaussianBlur",
}


# --- helpers ------------------------------------------------------------------------


def blocky_chip(bands: int, rng: np.random.Generator, value_range: tuple[float, float] = (0.0, 10_000.0)):
    """A chip whose band 0 is LOW/HIGH in random 8x8 blocks and whose mask is ``band0 > THRESHOLD``;
    the other bands are uniform noise in ``value_range``."""
    blocks = rng.random((SIZE // 8, SIZE // 8)) > 0.5
    pattern = np.kron(blocks, np.ones((8, 8), bool))
    image = rng.uniform(*value_range, size=(bands, SIZE, SIZE)).astype(np.float32)
    image[0] = np.where(pattern, HIGH, LOW) + rng.normal(0, 50, (SIZE, SIZE))
    return image, pattern.astype(np.uint8)


def object_chip(bands: int, boxes: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chip with one bright square per box; object k has value 1000 (k + 1) in band 0, labels 1..n."""
    image = np.full((bands, SIZE, SIZE), 100.0, np.float32)
    for k, (c0, r0, c1, r1) in enumerate(boxes):
        image[:, r0:r1, c0:c1] = 1000.0 * (k + 1)
    return image, np.array(boxes, np.float32), np.arange(1, len(boxes) + 1, dtype=np.int64)


def near(where: np.ndarray) -> np.ndarray:
    """``where`` grown by one pixel (8-connected)."""
    padded = np.pad(where, 1)
    rows, cols = where.shape
    shifted = [padded[1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    return np.any(shifted, axis=0)


def pixel_box(image: np.ndarray, value: float) -> np.ndarray | None:
    """``bbox_xyxy`` in pixels of band 0's pixels equal to ``value`` (None if there are none)."""
    rows, cols = np.nonzero(image[0] == value)
    if rows.size == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


# --- shapes, dtypes, value ranges -------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("bands", [1, 3, 4, 13, 20])
@pytest.mark.parametrize("kind", sorted(RANGES))
def test_segmentation_shapes_dtypes(preset: str, bands: int, kind: str) -> None:
    rng = np.random.default_rng(bands)
    image = rng.uniform(*RANGES[kind], size=(bands, SIZE, SIZE)).astype(np.float32)
    mask = rng.integers(0, 4, (SIZE, SIZE), dtype=np.uint8)
    aug = build_augment(preset, task="segmentation", seed=0)
    for _ in range(8):
        out_image, out_mask, boxes, labels = aug(image, mask)
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_image.flags.c_contiguous
        assert out_mask is not None and out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert boxes is None and labels is None
        assert np.isfinite(out_image).all()
        assert set(np.unique(out_mask)) <= {0, 1, 2, 3, IGNORE}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("bands", [3, 4, 13])
def test_detection_shapes_dtypes(preset: str, bands: int) -> None:
    image, boxes, labels = object_chip(bands, [(2, 3, 12, 15), (30, 30, 50, 40), (55, 50, 64, 64)])
    aug = build_augment(preset, task="detection", seed=1)
    for _ in range(8):
        out_image, mask, out_boxes, out_labels = aug(image, None, boxes, labels)
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert mask is None
        assert out_boxes is not None and out_labels is not None
        assert out_boxes.dtype == np.float32 and out_boxes.shape == (len(out_labels), 4)
        assert out_labels.dtype == np.int64
        assert (out_boxes >= 0).all() and (out_boxes <= SIZE).all()
        assert (out_boxes[:, 2:] > out_boxes[:, :2]).all()


def test_detection_without_boxes_and_with_no_boxes() -> None:
    image, _, _ = object_chip(4, [])
    aug = build_augment("strong", task="detection", seed=2)
    out = aug(image)
    assert out[2] is None and out[3] is None
    _, _, boxes, labels = aug(image, None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert boxes is not None and boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert labels is not None and labels.shape == (0,) and labels.dtype == np.int64


def test_light_preset_only_moves_pixels() -> None:
    """Flips and 90° turns keep every value: no clipping to [0, 1], no interpolation."""
    rng = np.random.default_rng(3)
    for low, high in RANGES.values():
        image = rng.uniform(low, high, size=(13, SIZE, SIZE)).astype(np.float32)
        aug = build_augment("light", task="segmentation", seed=3)
        for _ in range(6):
            out, _, _, _ = aug(image)
            np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(image, axis=None))


def test_strong_preset_keeps_value_range() -> None:
    """Nothing clips float32 to [0, 1] (albumentations' own brightness, noise and blur would)."""
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 10_000, size=(6, SIZE, SIZE)).astype(np.float32)
    negative = rng.uniform(-5, -1, size=(6, SIZE, SIZE)).astype(np.float32)
    aug = build_augment("strong", task="segmentation", overrides={"affine_p": 0.0}, seed=4)
    for _ in range(10):
        assert aug(image)[0].max() > 5_000
        assert aug(negative)[0].max() < 0


def test_none_is_identity() -> None:
    rng = np.random.default_rng(5)
    image, mask = blocky_chip(13, rng, (-50.0, 50.0))
    mask[:4] = IGNORE
    _, boxes, labels = object_chip(13, [(2, 3, 12, 15), (60, 60, 70, 70)])
    for task in ("segmentation", "detection"):
        aug = build_augment("none", task=task, seed=5)
        assert aug.transforms == []
        for _ in range(3):
            if task == "segmentation":
                out_image, out_mask, _, _ = aug(image, mask)
                np.testing.assert_array_equal(out_mask, mask)
            else:
                out_image, _, out_boxes, out_labels = aug(image, None, boxes, labels)
                # boxes are clipped to the chip by every preset, "none" included
                np.testing.assert_array_equal(out_boxes, [[2, 3, 12, 15], [60, 60, SIZE, SIZE]])
                np.testing.assert_array_equal(out_labels, labels)
            np.testing.assert_array_equal(out_image, image)


# --- alignment ----------------------------------------------------------------------


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_light_mask_follows_image_exactly(bands: int) -> None:
    rng = np.random.default_rng(bands)
    aug = build_augment("light", task="segmentation", seed=bands)
    changed = 0
    for _ in range(12):
        image, mask = blocky_chip(bands, rng)
        out_image, out_mask, _, _ = aug(image, mask)
        np.testing.assert_array_equal(out_mask, (out_image[0] > THRESHOLD).astype(np.uint8))
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 6


def test_shift_only_is_exact_and_fills_with_zero_and_ignore() -> None:
    """Whole-pixel shifts: the mask matches the image exactly; uncovered pixels are 0 / IGNORE."""
    rng = np.random.default_rng(6)
    aug = build_augment("none", task="segmentation", overrides={"affine_p": 1.0, "shift": 0.3, "scale": [1, 1]}, seed=6)
    filled = 0
    for _ in range(10):
        image, mask = blocky_chip(4, rng)
        out_image, out_mask, _, _ = aug(image, mask)
        ignored = out_mask == IGNORE
        filled += ignored.any()
        assert (out_image[:, ignored] == 0).all()
        keep = ~ignored
        np.testing.assert_array_equal(out_mask[keep], (out_image[0] > THRESHOLD)[keep])
        assert (out_image[:, keep] != 0).any(axis=0).all()
    assert filled >= 8


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_strong_mask_follows_image(bands: int) -> None:
    """Zoom, shift, brightness, noise and blur: where the mask is not IGNORE it still marks the
    bright blocks (up to interpolated block edges); a misaligned mask would agree on about half."""
    rng = np.random.default_rng(10 + bands)
    aug = build_augment("strong", task="segmentation", overrides={"affine_p": 1.0}, seed=bands)
    for _ in range(12):
        image, mask = blocky_chip(bands, rng)
        out_image, out_mask, _, _ = aug(image, mask)
        ignored = out_mask == IGNORE
        # pixels the zoom/shift uncovers are 0 in every band and IGNORE in the mask (on the
        # one-pixel rim between, the bilinear image may blend with the fill)
        filled = (out_image == 0).all(axis=0)
        assert ignored[filled].all()
        assert not (ignored & ~filled & ~near(~ignored)).any(), "only the rim may blend"
        keep = ~ignored
        agree = (out_mask[keep] == (out_image[0][keep] > THRESHOLD)).mean()
        assert agree > 0.9


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_boxes_follow_objects_through_flips_and_turns(bands: int) -> None:
    image, boxes, labels = object_chip(bands, [(2, 3, 12, 15), (30, 20, 50, 28), (50, 44, 61, 64)])
    aug = build_augment("light", task="detection", seed=bands)
    for _ in range(12):
        out_image, _, out_boxes, out_labels = aug(image, None, boxes, labels)
        assert out_boxes is not None and out_labels is not None
        assert sorted(out_labels.tolist()) == [1, 2, 3]
        for box, label in zip(out_boxes, out_labels, strict=True):
            np.testing.assert_allclose(box, pixel_box(out_image, 1000.0 * label), atol=1e-4)


def test_boxes_that_leave_the_chip_disappear_with_their_labels() -> None:
    image, boxes, labels = object_chip(3, [(0, 0, 10, 10), (27, 27, 37, 37), (54, 0, 64, 10), (0, 54, 10, 64)])
    area = 100.0
    aug = build_augment("none", task="detection", overrides={"affine_p": 1.0, "shift": 0.5, "scale": [1, 1]}, seed=7)
    dropped = 0
    for _ in range(20):
        out_image, _, out_boxes, out_labels = aug(image, None, boxes, labels)
        assert out_boxes is not None and out_labels is not None
        assert len(np.unique(out_labels)) == len(out_labels)
        for label in labels:
            visible = (out_image[0] == 1000.0 * label).sum() / area
            kept = label in out_labels
            dropped += not kept
            if visible >= 0.3 + 1e-6:
                assert kept, f"object {label} is {visible:.0%} inside but was dropped"
            if visible < 0.3 - 1e-6:
                assert not kept, f"object {label} is only {visible:.0%} inside but kept"
        for box, label in zip(out_boxes, out_labels, strict=True):
            np.testing.assert_allclose(box, pixel_box(out_image, 1000.0 * label), atol=1e-4)
    assert dropped > 0


def test_strong_boxes_stay_near_objects() -> None:
    """With zoom the bright pixels are interpolated; the box still bounds them within a pixel."""
    image, boxes, labels = object_chip(4, [(20, 20, 40, 36)])
    zoom = {"affine_p": 1.0, "scale": [0.8, 1.2], "shift": 0.05}
    aug = build_augment("none", task="detection", overrides=zoom, seed=8)
    for _ in range(10):
        out_image, _, out_boxes, out_labels = aug(image, None, boxes, labels)
        assert out_boxes is not None and out_labels is not None and out_labels.tolist() == [1]
        rows, cols = np.nonzero(out_image[0] > 600)
        bright = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        np.testing.assert_allclose(out_boxes[0], bright, atol=1.5)


# --- randomness ---------------------------------------------------------------------


def run(aug: Augment, image: np.ndarray, mask: np.ndarray, n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    return [aug(image, mask)[:2] for _ in range(n)]  # type: ignore[misc]


def test_same_seed_same_sequence() -> None:
    image, mask = blocky_chip(13, np.random.default_rng(9))
    first = run(build_augment("strong", task="segmentation", seed=42), image, mask)
    second = run(build_augment("strong", task="segmentation", seed=42), image, mask)
    other = run(build_augment("strong", task="segmentation", seed=43), image, mask)
    for (a_img, a_mask), (b_img, b_mask) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_mask, b_mask)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))


def test_reseed_restarts_the_sequence() -> None:
    image, mask = blocky_chip(4, np.random.default_rng(10))
    aug = build_augment("strong", task="segmentation", seed=1)
    first = run(aug, image, mask)
    aug.reseed(1)
    again = run(aug, image, mask)
    for (a, _), (b, _) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_flips_are_drawn_independently() -> None:
    """All four flip combinations occur: the transforms share one random stream rather than
    each having its own generator with the same seed (which would flip both axes or neither)."""
    image = np.arange(SIZE * SIZE, dtype=np.float32).reshape(1, SIZE, SIZE)
    aug = build_augment("light", task="segmentation", overrides={"rotate90_p": 0.0}, seed=0)
    corners = set()
    for _ in range(40):
        out = aug(image)[0][0]
        corners.add(tuple(int(i) for i in np.argwhere(out == 0)[0]))  # where the top-left pixel went
    assert corners == {(0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1)}


# --- the pipeline -------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_no_rgb_only_transform(preset: str, task: str) -> None:
    everything = {name: 1.0 for name in AUGMENT_PARAMS if name.endswith("_p")}
    for overrides in (None, everything):
        aug = build_augment(preset, task=task, overrides=overrides)  # type: ignore[arg-type]
        names = {type(t).__name__ for t in aug.transforms}
        assert names <= ALLOWED
        assert not names & RGB_ONLY


def test_presets_contain_what_they_promise() -> None:
    def names(preset: str) -> list[str]:
        return [type(t).__name__ for t in build_augment(preset, task="segmentation").transforms]

    assert names("none") == []
    assert names("light") == ["HorizontalFlip", "VerticalFlip", "RandomRotate90"]
    assert set(names("strong")) == ALLOWED
    assert names("strong").index("BandGaussianBlur") < names("strong").index("Affine")


def test_overrides_change_parameters() -> None:
    aug = build_augment("strong", task="segmentation", overrides={"flip_p": 0.25, "scale": [0.9, 1.1], "noise": 0.1})
    assert aug.params["flip_p"] == 0.25 and aug.params["scale"] == (0.9, 1.1) and aug.params["noise"] == 0.1
    flips = [t for t in aug.transforms if type(t).__name__ == "HorizontalFlip"]
    assert flips[0].p == 0.25
    assert "BandGaussianNoise" in repr(aug)


def test_unknown_override_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="flip_p") as info:
        build_augment("light", task="segmentation", overrides={"flipp": 0.5})
    assert "Did you mean 'flip_p'" in str(info.value)
    for name in AUGMENT_PARAMS:
        assert name in str(info.value)


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match="none, light, strong"):
        build_augment("heavy", task="segmentation")


@pytest.mark.parametrize(
    "overrides",
    [{"flip_p": 1.5}, {"scale": 1.2}, {"scale": [1.2, 0.8]}, {"shift": -0.1}, {"contrast": 1.0}, {"noise": "lots"}],
)
def test_bad_override_values(overrides: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(overrides))):
        build_augment("strong", task="segmentation", overrides=overrides)


def test_magnitude_without_probability_warns() -> None:
    with pytest.warns(GeovisionWarning, match="noise_p"):
        aug = build_augment("light", task="segmentation", overrides={"noise": 0.1})
    assert "BandGaussianNoise" not in repr(aug)


def test_bad_calls() -> None:
    image = np.zeros((3, SIZE, SIZE), np.float32)
    seg = build_augment("light", task="segmentation")
    with pytest.raises(ValueError, match="mask shape"):
        seg(image, np.zeros((SIZE, SIZE + 1), np.uint8))
    with pytest.raises(ValueError, match="task='detection'"):
        seg(image, None, np.zeros((1, 4), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="square"):
        seg(np.zeros((3, SIZE, SIZE + 8), np.float32))
    det = build_augment("light", task="detection")
    with pytest.raises(ValueError, match="labels"):
        det(image, None, np.zeros((2, 4), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ConfigError, match="task"):
        build_augment("light", task="classification")  # type: ignore[arg-type]
