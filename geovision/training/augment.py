"""Training-time augmentation of multi-band chips, their masks and their boxes.

Chips are float32 ``(bands, rows, cols)`` arrays with any band count (RGB,
RGB+NIR, Sentinel-2's 13 bands, ...) and any value range (reflectance 0-10000,
radiance, negative indices). A segmentation mask is ``(rows, cols)`` uint8 with
class ids and :data:`IGNORE` (255) where there is no label; detection boxes are
``(n, 4)`` float32 ``bbox_xyxy`` in pixels ``(col0, row0, col1, row1)`` with
``(n,)`` int64 labels. :func:`build_augment` turns a preset name and optional
overrides into an :class:`Augment` that transforms all of them consistently.

The pipeline is albumentations 2 for the geometry (flips, ``RandomRotate90``,
``Affine``) and three small band-agnostic transforms of this module for the
pixel values. albumentations' own ``RandomBrightnessContrast``, ``GaussNoise``
and ``GaussianBlur`` clip float32 images to ``[0, 1]``, which would destroy
reflectance values, so they are not used; neither is any RGB-only transform
(hue, saturation, gray, CLAHE, colour jitter), which have no meaning for a
13-band chip. Every pixel transform here is relative to each band's own mean
and standard deviation in the chip, so it works the same on any sensor before
normalisation.

Pixel transforms run first, geometric ones after, so the pixels an ``Affine``
shrink or shift uncovers are exactly 0 in every band (the image fill,
:data:`IMAGE_FILL`) and :data:`IGNORE` in the mask: the loss never sees them.
On the one-pixel rim between, the bilinear image may blend with the fill while
the nearest-neighbour mask already says :data:`IGNORE` or still holds a class.
"""

from __future__ import annotations

import difflib
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

# albumentations asks PyPI for a newer version at import unless told not to
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from geovision.errors import ConfigError, warn  # noqa: E402

__all__ = [
    "AUGMENT_PARAMS",
    "IGNORE",
    "PRESETS",
    "Augment",
    "BandBrightnessContrast",
    "BandGaussianBlur",
    "BandGaussianNoise",
    "build_augment",
]

PRESETS: tuple[str, ...] = ("none", "light", "strong")
"""Augmentation presets by name: ``none`` (identity), ``light`` (flips and 90° turns), ``strong``."""

IGNORE = 255
"""Mask value of pixels without a label (and of pixels an affine transform fills)."""

IMAGE_FILL = 0.0
"""Value, in every band, of the pixels an affine shrink or shift uncovers."""

Task = Literal["segmentation", "detection"]

_STRONG: dict[str, Any] = {
    "flip_p": 0.5,
    "rotate90_p": 0.5,
    "affine_p": 0.5,
    "scale": (0.8, 1.2),
    "shift": 0.1,
    "brightness_contrast_p": 0.5,
    "brightness": 0.2,
    "contrast": 0.2,
    "noise_p": 0.3,
    "noise": 0.05,
    "blur_p": 0.1,
    "blur_sigma": (0.5, 1.5),
}
_PROBABILITIES = ("flip_p", "rotate90_p", "affine_p", "brightness_contrast_p", "noise_p", "blur_p")
_LIGHT_ONLY = ("flip_p", "rotate90_p")
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "none": {**_STRONG, **{name: 0.0 for name in _PROBABILITIES}},
    "light": {**_STRONG, **{name: 0.0 for name in _PROBABILITIES if name not in _LIGHT_ONLY}},
    "strong": dict(_STRONG),
}
#: which probability switches each magnitude on
_SWITCH = {
    "scale": "affine_p",
    "shift": "affine_p",
    "brightness": "brightness_contrast_p",
    "contrast": "brightness_contrast_p",
    "noise": "noise_p",
    "blur_sigma": "blur_p",
}

AUGMENT_PARAMS: tuple[str, ...] = tuple(_STRONG)
"""Names ``overrides`` may set.

* ``flip_p``: probability of a horizontal flip, and separately of a vertical flip.
* ``rotate90_p``: probability of a turn by 0, 90, 180 or 270 degrees (uniform;
  needs square chips).
* ``affine_p``, ``scale``, ``shift``: probability of an isotropic zoom by a factor
  drawn from ``scale`` (``[low, high]``) combined with a shift of up to ``shift``
  times the chip size along each axis (whole pixels).
* ``brightness_contrast_p``, ``brightness``, ``contrast``: probability of
  :class:`BandBrightnessContrast` and its two magnitudes.
* ``noise_p``, ``noise``: probability of :class:`BandGaussianNoise` and its
  standard deviation as a fraction of each band's.
* ``blur_p``, ``blur_sigma``: probability of :class:`BandGaussianBlur` and its
  sigma range in pixels.
"""


# --- band-agnostic pixel transforms -----------------------------------------------


def _band_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of an ``(rows, cols, bands)`` image, float32 ``(bands,)``."""
    flat = img.reshape(-1, img.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).astype(np.float32), flat.std(axis=0).astype(np.float32)


class BandBrightnessContrast(A.ImageOnlyTransform):
    """Brightness and contrast relative to each band's own statistics, for any band count and range.

    With ``m`` and ``s`` a band's mean and standard deviation in the chip, every
    value ``x`` becomes ``m + c (x - m) + b s``, with ``c`` drawn from
    ``[1 - contrast, 1 + contrast]`` and ``b`` from ``[-brightness, brightness]``,
    the same ``b`` and ``c`` for all bands (a change of illumination or gain, not
    of the spectral signature). Nothing is clipped.

    Args:
        brightness: Largest brightness shift, in band standard deviations (>= 0).
        contrast: Largest relative contrast change, in ``[0, 1)``.
        p: Probability of applying the transform.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def get_params(self) -> dict[str, float]:
        return {
            "beta": self.py_random.uniform(-self.brightness, self.brightness),
            "alpha": self.py_random.uniform(1.0 - self.contrast, 1.0 + self.contrast),
        }

    def apply(self, img: np.ndarray, alpha: float = 1.0, beta: float = 0.0, **params: Any) -> np.ndarray:
        mean, std = _band_stats(img)
        out = mean + np.float32(alpha) * (img - mean) + np.float32(beta) * std
        return out.astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness", "contrast")


class BandGaussianNoise(A.ImageOnlyTransform):
    """Additive Gaussian noise with a standard deviation relative to each band's.

    Each band gets independent zero-mean noise of standard deviation
    ``noise * s``, ``s`` the band's standard deviation in the chip (a constant
    band gets none). Nothing is clipped.

    Args:
        noise: Noise standard deviation as a fraction of each band's (>= 0).
        p: Probability of applying the transform.
    """

    def __init__(self, noise: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.noise = float(noise)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        shape = params["shape"]
        return {"unit_noise": self.random_generator.standard_normal(shape, dtype=np.float32)}

    def apply(self, img: np.ndarray, unit_noise: np.ndarray | None = None, **params: Any) -> np.ndarray:
        if unit_noise is None:
            return img
        _, std = _band_stats(img)
        out = img + unit_noise.reshape(img.shape) * (np.float32(self.noise) * std)
        return out.astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("noise",)


class BandGaussianBlur(A.ImageOnlyTransform):
    """Gaussian blur of every band, for any band count and value range (nothing is clipped).

    Args:
        sigma: ``(low, high)`` range the blur's standard deviation is drawn from, in pixels.
        p: Probability of applying the transform.
    """

    def __init__(self, sigma: tuple[float, float] = (0.5, 1.5), p: float = 0.5) -> None:
        super().__init__(p=p)
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def get_params(self) -> dict[str, float]:
        return {"sigma_px": self.py_random.uniform(*self.sigma)}

    def apply(self, img: np.ndarray, sigma_px: float = 1.0, **params: Any) -> np.ndarray:
        if sigma_px <= 0:
            return img
        out = np.empty_like(img)
        for band in range(img.shape[-1]):
            # one band at a time: OpenCV filters handle at most 4 channels at once
            out[..., band] = cv2.GaussianBlur(
                np.ascontiguousarray(img[..., band]), (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REFLECT_101
            )
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("sigma",)


# --- the callable -----------------------------------------------------------------


class Augment:
    """Applies one augmentation pipeline to a chip and its labels, consistently.

    Built by :func:`build_augment`. Call it with a chip and its mask (segmentation)
    or boxes and labels (detection)::

        image, mask, boxes, labels = augment(image, mask, None, None)

    The random state is shared by all transforms and seeded once, so a seeded
    :class:`Augment` gives the same sequence of augmentations every run. A copy
    in each ``DataLoader`` worker starts from the same state: call
    :meth:`reseed` with ``seed + worker_id`` in the ``worker_init_fn``.

    Attributes:
        preset: The preset's name.
        task: ``"segmentation"`` or ``"detection"``.
        params: The resolved parameters (preset plus overrides), by name; save
            them with the run.
        seed: The seed the random state was last set from (None: fresh entropy).
        pipeline: The albumentations ``Compose`` (its transforms in order).
    """

    def __init__(self, pipeline: A.Compose, *, preset: str, task: Task, params: Mapping[str, Any],
                 seed: int | None) -> None:
        self.pipeline = pipeline
        self.preset = preset
        self.task: Task = task
        self.params: dict[str, Any] = dict(params)
        self.reseed(seed)

    @property
    def transforms(self) -> list[A.BasicTransform]:
        """The pipeline's transforms, in the order they run."""
        return list(self.pipeline.transforms)

    def reseed(self, seed: int | None) -> None:
        """Restart the random state from ``seed`` (None: fresh entropy from the OS)."""
        self.seed = seed
        # One generator pair shared by every transform. Compose(seed=...) would give
        # each transform its own generator with the same seed, so that for example the
        # horizontal and the vertical flip would always be drawn together.
        self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Augment one chip and its labels.

        Args:
            image: ``(bands, rows, cols)`` chip, any band count and value range.
            mask: ``(rows, cols)`` class ids, :data:`IGNORE` where unlabelled, or None.
            boxes: ``(n, 4)`` ``bbox_xyxy`` in pixels ``(col0, row0, col1, row1)``, or
                None. Detection only.
            labels: ``(n,)`` class ids of the boxes; required with ``boxes``.

        Returns:
            ``(image, mask, boxes, labels)``: float32 ``(bands, rows, cols)``, uint8
            ``(rows, cols)``, float32 ``(m, 4)`` and int64 ``(m,)``, None where the
            input was None. Boxes that leave the chip (less than 30 % of their
            area left inside) are dropped with their labels; the rest are
            clipped to the chip.

        Raises:
            ValueError: The arrays' shapes do not fit together, boxes are given to
                a segmentation pipeline, or ``rotate90_p`` > 0 on a non-square chip.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"image must be (bands, rows, cols), got shape {image.shape}")
        rows, cols = image.shape[1:]
        data: dict[str, Any] = {"image": np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)}
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (rows, cols):
                raise ValueError(f"mask shape {mask.shape} does not match the image's (rows, cols) {(rows, cols)}")
            data["mask"] = np.ascontiguousarray(mask, dtype=np.uint8)
        if boxes is not None:
            if self.task != "detection":
                raise ValueError("boxes were given to a segmentation augment; build it with task='detection'")
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            labels = np.zeros(0, np.int64) if labels is None and len(boxes) == 0 else labels
            if labels is None or len(np.asarray(labels)) != len(boxes):
                got = None if labels is None else len(np.asarray(labels))
                raise ValueError(f"{len(boxes)} boxes need as many labels, got {got}")
            data["bboxes"] = boxes
            data["labels"] = np.asarray(labels, dtype=np.int64).reshape(-1)
        elif self.task == "detection":
            data["bboxes"] = np.zeros((0, 4), np.float32)
            data["labels"] = np.zeros(0, np.int64)
        if rows != cols and any(isinstance(t, A.RandomRotate90) for t in self.pipeline.transforms):
            raise ValueError(
                f"90-degree turns need square chips, got {rows} x {cols}; "
                "use square chips or set the override rotate90_p to 0"
            )

        out = self.pipeline(**data)
        image_out = np.ascontiguousarray(np.asarray(out["image"], dtype=np.float32).transpose(2, 0, 1))
        mask_out = np.ascontiguousarray(out["mask"], dtype=np.uint8) if mask is not None else None
        if boxes is None:
            return image_out, mask_out, None, None
        boxes_out = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels_out = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        return image_out, mask_out, boxes_out, labels_out

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.pipeline.transforms) or "identity"
        return f"Augment(preset={self.preset!r}, task={self.task!r}, seed={self.seed}, transforms=[{names}])"


# --- building ---------------------------------------------------------------------


def _suggest(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=2)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _number(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``[low, high)`` with ``high_open``), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"augmentation override {name!r} must be a number, got {value!r}")
    number = float(value)
    inside = low <= number < high if high_open else low <= number <= high
    if not inside:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"augmentation override {name!r} must lie in [{low}, {high}{bracket}, got {value!r}")
    return number


def _range(name: str, value: Any) -> tuple[float, float]:
    """``value`` as a positive ``(low, high)`` pair with low <= high, else ConfigError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"augmentation override {name!r} must be a pair [low, high], got {value!r}")
    low, high = (_number(name, v, 0.0, float("inf")) for v in value)
    if not 0 < low <= high:
        raise ConfigError(
            f"augmentation override {name!r} must be a pair [low, high] with 0 < low <= high, got {value!r}"
        )
    return low, high


def _resolve(preset: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown augmentation preset {preset!r}.{_suggest(preset, PRESETS)} Valid: {', '.join(PRESETS)}."
        )
    params = dict(_PRESET_VALUES[preset])
    overrides = dict(overrides or {})
    unknown = [key for key in overrides if key not in AUGMENT_PARAMS]
    if unknown:
        hints = "".join(_suggest(str(key), AUGMENT_PARAMS) for key in unknown)
        raise ConfigError(
            f"unknown augmentation override(s) {', '.join(repr(k) for k in unknown)}.{hints} "
            f"Valid: {', '.join(AUGMENT_PARAMS)}."
        )
    params.update(overrides)
    for name in _PROBABILITIES:
        params[name] = _number(name, params[name], 0.0, 1.0)
    params["scale"] = _range("scale", params["scale"])
    params["blur_sigma"] = _range("blur_sigma", params["blur_sigma"])
    params["shift"] = _number("shift", params["shift"], 0.0, 1.0, high_open=True)
    params["brightness"] = _number("brightness", params["brightness"], 0.0, float("inf"))
    params["contrast"] = _number("contrast", params["contrast"], 0.0, 1.0, high_open=True)
    params["noise"] = _number("noise", params["noise"], 0.0, float("inf"))
    for name, switch in _SWITCH.items():
        if name in overrides and params[switch] == 0:
            warn(
                f"augmentation override {name!r} has no effect while {switch!r} is 0 "
                f"(preset {preset!r}); set {switch} too"
            )
    return params


def _transforms(params: Mapping[str, Any]) -> list[A.BasicTransform]:
    """The transforms ``params`` switch on: pixel transforms first, geometry after."""
    transforms: list[A.BasicTransform] = []
    if params["brightness_contrast_p"] > 0 and (params["brightness"] > 0 or params["contrast"] > 0):
        transforms.append(
            BandBrightnessContrast(params["brightness"], params["contrast"], p=params["brightness_contrast_p"])
        )
    if params["noise_p"] > 0 and params["noise"] > 0:
        transforms.append(BandGaussianNoise(params["noise"], p=params["noise_p"]))
    if params["blur_p"] > 0:
        transforms.append(BandGaussianBlur(params["blur_sigma"], p=params["blur_p"]))
    if params["flip_p"] > 0:
        transforms += [A.HorizontalFlip(p=params["flip_p"]), A.VerticalFlip(p=params["flip_p"])]
    if params["rotate90_p"] > 0:
        transforms.append(A.RandomRotate90(p=params["rotate90_p"]))
    if params["affine_p"] > 0 and (params["scale"] != (1.0, 1.0) or params["shift"] > 0):
        transforms.append(
            A.Affine(
                scale=params["scale"],
                translate_percent=(-params["shift"], params["shift"]),
                keep_ratio=True,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=IMAGE_FILL,
                fill_mask=IGNORE,
                p=params["affine_p"],
            )
        )
    return transforms


def build_augment(
    preset: str = "light",
    *,
    task: Task,
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> Augment:
    """Build the augmentation pipeline for training chips.

    Presets:

    * ``"none"``: the identity (detection boxes are still clipped to the chip).
    * ``"light"``: horizontal and vertical flips (p 0.5 each) and a 0/90/180/270°
      turn (p 0.5). Exact: no value is interpolated.
    * ``"strong"``: ``light`` plus :class:`BandBrightnessContrast` (p 0.5, ±0.2 band
      std brightness, ×0.8-1.2 contrast), :class:`BandGaussianNoise` (p 0.3, 0.05 band
      std), :class:`BandGaussianBlur` (p 0.1, sigma 0.5-1.5 px) and an isotropic
      zoom ×0.8-1.2 with a shift of up to 10 % of the chip (p 0.5; bilinear for the
      image, nearest for the mask; uncovered pixels are :data:`IMAGE_FILL` (0) in
      every band and :data:`IGNORE` in the mask).

    ``overrides`` change parameters by name (:data:`AUGMENT_PARAMS`), for example
    ``{"flip_p": 0.5, "scale": [0.8, 1.2], "shift": 0.1, "noise": 0.05,
    "blur_p": 0.1}``. A magnitude only acts while its probability is above 0: on
    the ``light`` preset, ``{"noise": 0.1}`` alone does nothing (and warns), while
    ``{"noise_p": 0.3, "noise": 0.1}`` adds noise.

    For ``task="detection"`` boxes are ``pascal_voc`` (``bbox_xyxy`` in pixels),
    clipped to the chip; a box with less than 30 % of its area left inside after a
    transform is dropped with its label.

    Args:
        preset: One of :data:`PRESETS`.
        task: ``"segmentation"`` or ``"detection"``.
        overrides: Parameter values by name, replacing the preset's.
        seed: Seed of the random state (None: fresh entropy each build).

    Returns:
        The :class:`Augment`.

    Raises:
        ConfigError: Unknown preset, task or override name (the message lists the
            valid ones), or an override value out of range.
    """
    if task not in ("segmentation", "detection"):
        raise ConfigError(f"unknown task {task!r}; valid: 'segmentation', 'detection'")
    params = _resolve(preset, overrides)
    bbox_params = None
    if task == "detection":
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=0.3,
            clip=True,
            filter_invalid_bboxes=True,
        )
    transforms = _transforms(params)
    with warnings.catch_warnings():
        # an empty pipeline ("none") still clips and filters boxes; albumentations warns about it
        warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform", category=UserWarning)
        pipeline = A.Compose(transforms, bbox_params=bbox_params, p=1.0)
    return Augment(pipeline, preset=preset, task=task, params=params, seed=seed)
