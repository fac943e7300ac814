"""The tile predictor every task shares: device, precision, normalisation, weights.

A predictor knows nothing of rasters on disk: the tile reader hands it
``(N, bands, rows, cols)`` arrays of raw values plus a validity mask; the
task's subclass (:class:`~geovision.models.segmentation.SegmentationPredictor`,
:class:`~geovision.models.detection.DetectionPredictor`) runs the model and
returns what its stitcher needs. This base knows none of its subclasses:
:func:`geovision.models.factory.make_predictor` picks the subclass from the
bundle's task.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from geovision.errors import ConfigError, TaskMismatchError
from geovision.models.bundle import load_bundle
from geovision.models.config import BundleConfig
from geovision.models.registry import build_loaded_model

__all__ = [
    "Normalizer",
    "Precision",
    "TilePredictor",
    "cpu_has_native_bf16",
    "pad_to_multiple",
    "resolve_device",
    "resolve_precision",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]

_P = TypeVar("_P", bound="TilePredictor")


def resolve_device(device: Literal["auto", "cpu", "cuda"] | str | torch.device = "auto") -> torch.device:
    """Turn a device option into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:<index>"``, ``"mps"``, or a ``torch.device``.

    Raises:
        ConfigError: the name is not a device, or the device is not available here.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from None
    match resolved.type:
        case "cpu":
            return resolved
        case "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"device {device!r} was asked for but this machine has no usable CUDA GPU "
                    f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                    "use device 'cpu' or 'auto', or install a CUDA build of torch"
                )
            count = torch.cuda.device_count()
            if resolved.index is not None and resolved.index >= count:
                raise ConfigError(
                    f"device {device!r} does not exist: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
                )
            return resolved
        case "mps":
            if not torch.backends.mps.is_available():
                raise ConfigError(f"device {device!r} is not available here; use 'cpu' or 'auto'")
            return resolved
        case _:
            raise ConfigError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX), not by emulation.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes for
    plain AVX-512, where bf16 is emulated and slower than float32. On Linux the CPU
    flags decide; elsewhere oneDNN's answer is taken.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return True


def resolve_precision(device: torch.device | str, precision: Precision | str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32).

    ``"auto"`` picks, on CUDA, bfloat16 when the GPU supports it, else float16;
    on CPU, bfloat16 when the CPU has native bf16 (AVX512-BF16 / AMX, see
    :func:`cpu_has_native_bf16`), else ``None``; on other devices ``None``.

    Args:
        device: the device the model runs on.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ConfigError: an unknown precision, or bf16 on a GPU without bf16 support.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    name = str(precision).strip().lower()
    match name:
        case "fp32":
            return None
        case "bf16":
            if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError(
                    f"precision 'bf16' is not supported by the GPU {dev}; use precision 'fp16', 'fp32' or 'auto'"
                )
            return torch.bfloat16
        case "fp16":
            return torch.float16
        case "auto":
            if dev.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if dev.type == "cpu":
                return torch.bfloat16 if cpu_has_native_bf16() else None
            return None
        case _:
            raise ConfigError(f"unknown precision {precision!r}; use 'auto', 'fp32', 'bf16' or 'fp16'")


class TilePredictor:
    """Runs a bundle's model on batches of raw tiles (base class; one subclass per task).

    Attributes:
        config: the bundle configuration.
        device: where the model runs.
        dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``), or ``None``
            for plain float32.
        num_classes: output classes ``C``.
        model: the ``torch.nn.Module``, in eval mode on ``device``.
        channels_last: whether model and input use the channels-last memory format.

    Args:
        config: the bundle configuration; its task must be the subclass's.
        state_dict: the weights; loaded strictly.
        device: see :func:`resolve_device`.
        precision: see :func:`resolve_precision`.
        channels_last: use the channels-last memory format (faster with oneDNN and
            tensor cores).
        source: how error messages name the bundle (its path).

    Raises:
        TaskMismatchError: the bundle's task is not the predictor's.
        BundleError: the weights do not fit the architecture.
        ConfigError: an invalid architecture, device or precision.
    """

    task: ClassVar[str] = ""

    def __init__(
        self,
        config: BundleConfig,
        state_dict: Mapping[str, torch.Tensor],
        *,
        device: Literal["auto", "cpu", "cuda"] | str | torch.device = "auto",
        precision: Precision | str = "auto",
        channels_last: bool = True,
        source: str = "the bundle",
    ) -> None:
        if config.task != self.task:
            raise TaskMismatchError(
                f"{source} is a {config.task} bundle but a {self.task} predictor was asked for; "
                f"use a {self.task} bundle"
            )
        self.config = config
        self.device = resolve_device(device)
        self.dtype = resolve_precision(self.device, precision)
        self.num_classes = config.num_classes
        self.channels_last = channels_last

        model = build_loaded_model(config, state_dict, source=source)
        model.eval()
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.normalizer = Normalizer(config)

    @classmethod
    def from_bundle(cls: type[_P], path: str | os.PathLike[str], **kwargs: Any) -> _P:
        """Load a bundle file and build a predictor (keyword arguments as ``__init__``)."""
        config, state_dict = load_bundle(path)
        kwargs.setdefault("source", str(path))
        return cls(config, state_dict, **kwargs)

    def __repr__(self) -> str:
        c = self.config
        dtype = "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return (
            f"{type(self).__name__}(arch={c.arch!r}, encoder={c.encoder!r}, in_channels={c.in_channels}, "
            f"classes={self.num_classes}, device={str(self.device)!r}, dtype={dtype!r})"
        )

    def normalize(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Raw tile values to model input (see :class:`Normalizer`)."""
        return self.normalizer(tiles, valid)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast at :attr:`dtype` on :attr:`device`, or nothing for float32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def predict(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> Any:
        """Run the model on ``(N, B, H, W)`` raw tiles; what comes back depends on the task."""
        raise NotImplementedError


class Normalizer:
    """Raw band values to model input with a bundle's normalisation (shared by inference and training).

    Args:
        config: the bundle configuration (``normalization``, ``in_channels``, ``bands``).
    """

    def __init__(self, config: BundleConfig) -> None:
        self.in_channels = config.in_channels
        self.band_names = list(config.band_names)
        self.bands = list(config.bands)
        self._offset, self._scale, self._centre, self._clip = _normalization_arrays(config)

    def check(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(tiles, valid)`` as arrays (``valid`` as bool), after checking that their shapes fit.

        Raises:
            ValueError: the shapes do not fit each other or the model's band count.
        """
        tiles = np.asarray(tiles)
        if tiles.ndim != 4:
            raise ValueError(f"tiles must be (N, bands, rows, cols), got shape {tiles.shape}")
        n, b, h, w = tiles.shape
        if b != self.in_channels:
            raise ValueError(
                f"tiles have {b} band(s) but the model takes {self.in_channels} "
                f"({', '.join(self.band_names)}); read bands {self.bands}"
            )
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != (n, h, w):
                raise ValueError(f"valid must be (N, rows, cols) = {(n, h, w)}, got shape {valid.shape}")
        return tiles, valid

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """``offset``, ``scale`` and ``centre`` as ``(1, B, 1, 1)`` float32 tensors on ``device``
        (the same arithmetic in torch: ``y = (x - offset) * scale``, invalid pixels first set to ``centre``)."""
        return {name: torch.from_numpy(a.copy()).to(device)
                for name, a in (("offset", self._offset), ("scale", self._scale), ("centre", self._centre))}

    @property
    def clip(self) -> bool:
        """Whether the scaled values are clipped to [0, 1] (percentile scaling)."""
        return self._clip

    def digest(self) -> bytes:
        """The normalisation's numbers, as bytes (part of what a frozen graph is filed under)."""
        return b"".join(a.tobytes() for a in (self._offset, self._scale, self._centre)) + bytes([self._clip])

    def __call__(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Raw tile values to model input.

        Invalid pixels (``valid`` false, or not finite) are first set to the band's
        normalisation centre (``mean`` for meanstd, ``(low + high) / 2`` for
        percentile, 0 for none), so after scaling they sit in the middle of the
        model's input range (0 for meanstd, 0.5 for percentile) instead of being
        extreme values.

        Args:
            tiles: ``(N, B, H, W)`` raw band values, any numeric dtype; ``B == in_channels``.
            valid: ``(N, H, W)`` bool, true where the pixel holds data; ``None``: all valid.

        Returns:
            ``(N, B, H, W)`` float32.

        Raises:
            ValueError: the shapes do not fit each other or the model's band count.
        """
        tiles, valid = self.check(tiles, valid)
        x = tiles.astype(np.float32, copy=True)
        invalid = ~np.isfinite(x)
        if valid is not None:
            invalid |= ~valid[:, None, :, :]
        if invalid.any():
            np.copyto(x, np.broadcast_to(self._centre, x.shape), where=invalid)
        x -= self._offset
        x *= self._scale
        if self._clip:
            np.clip(x, 0.0, 1.0, out=x)
        return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(N, B, H, W)`` at the bottom/right so H and W are multiples of ``multiple``.

    Reflect padding where the tile is large enough, else edge replication.
    """
    if multiple <= 1:
        return x
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _normalization_arrays(config: BundleConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``(offset, scale, centre, clip)`` as ``(1, B, 1, 1)`` float32 arrays: ``y = (x - offset) * scale``."""
    norm = config.normalization
    b = config.in_channels

    def arr(values: list[float] | np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).reshape(1, b, 1, 1)

    match norm.method:
        case "meanstd":
            assert norm.mean is not None and norm.std is not None
            offset, scale, centre, clip = arr(norm.mean), 1.0 / arr(norm.std), arr(norm.mean), False
        case "percentile":
            assert norm.low is not None and norm.high is not None
            low, high = arr(norm.low), arr(norm.high)
            offset, scale, centre, clip = low, 1.0 / (high - low), (low + high) / 2.0, True
        case "none":
            zeros = np.zeros((1, b, 1, 1))
            offset, scale, centre, clip = zeros, np.ones((1, b, 1, 1)), zeros, False
    return offset.astype(np.float32), scale.astype(np.float32), centre.astype(np.float32), clip
