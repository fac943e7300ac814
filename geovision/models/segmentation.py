"""Segmentation predictor: raw tile batches in, per-class probabilities out.

Device, precision, weights and normalisation come from
:class:`~geovision.models.predictor.TilePredictor`; this subclass runs one pass
(:class:`_Pass`: normalisation, padding to the encoder's stride, the model,
softmax) and returns probabilities for the stitcher. On a CPU that computes
bfloat16 natively, channels-last with bf16 autocast is several times faster than
float32, so ``precision="auto"`` picks bf16 wherever the hardware supports it.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from geovision.models.bundle import weights_digest
from geovision.models.config import BundleConfig
from geovision.models.predictor import Normalizer, TilePredictor, pad_to_multiple
from geovision.models.registry import ShallowNet

__all__ = ["SegmentationPredictor", "clear_graph_cache"]

log = logging.getLogger(__name__)

_SMP_DIVISOR = 32
"""smp models want input height and width divisible by this (the encoder's output stride)."""


class _Graph(Protocol):
    """A pass as a frozen TorchScript graph: ``(tiles, valid) -> probabilities``, as :class:`_Pass`."""

    def __call__(self, tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor: ...


#: frozen graphs kept for the whole process, so that a second predictor of the same weights
#: (a second ``geovision.predict`` call in a loop over rasters) does not trace again:
#: ``(weights digest, precision, channels_last, device, input shape) -> graph``, least recently
#: used dropped first (a graph holds its own copy of the folded weights)
_SHARED_GRAPHS: OrderedDict[tuple[Hashable, ...], _Graph] = OrderedDict()
_SHARED_GRAPHS_MAX = 2
_shared_lock = threading.Lock()


def clear_graph_cache() -> None:
    """Forget the frozen graphs kept for the process (each predictor keeps its own)."""
    with _shared_lock:
        _SHARED_GRAPHS.clear()


class SegmentationPredictor(TilePredictor):
    """Runs a segmentation bundle on batches of tiles.

    Construction as :class:`~geovision.models.predictor.TilePredictor` (attributes,
    arguments, errors); :meth:`predict` returns softmax probabilities.
    """

    task: ClassVar[str] = "segmentation"

    def __init__(self, config: BundleConfig, state_dict: Mapping[str, torch.Tensor], *,
                 graph: bool | None = None, **kwargs: Any) -> None:
        super().__init__(config, state_dict, **kwargs)
        # smp encoders downsample by 32; the built-in shallow net takes any size.
        self.pad_multiple = 1 if isinstance(self.model, ShallowNet) else _SMP_DIVISOR
        stride = getattr(getattr(self.model, "encoder", None), "output_stride", None)
        if isinstance(stride, int) and stride > 0:
            self.pad_multiple = math.lcm(self.pad_multiple, stride)
        #: run a frozen TorchScript graph of the model (see :meth:`_forward`)
        self.graph = (self.device.type == "cpu") if graph is None else graph
        self._graphs: dict[tuple[tuple[int, ...], str], _Graph] = {}
        self._graph_lock = threading.Lock()
        #: what the process-wide graphs of these weights are filed under (input shape and dtype added)
        self._shared_key = ((weights_digest(state_dict), self.normalizer.digest(), self.pad_multiple,
                             str(self.dtype), self.channels_last, str(self.device))
                            if self.graph else None)
        #: the pass the graphs are traced from, and that runs eagerly where there is no graph
        self._pass = _Pass(self.model, self.normalizer, self.device, self.pad_multiple, self.channels_last,
                           self.dtype).eval()

    def _run(self, tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One pass (:class:`_Pass`) over raw ``tiles`` and ``valid``, through a frozen TorchScript graph if any.

        In a graph the whole pass (normalisation, model, softmax) runs in C++ without
        Python's GIL, so passes on several threads do not queue behind each other, or
        behind reading and stitching, at every layer, and a
        pass takes the GIL back once, not after each of a dozen numpy and torch steps
        around the model. Freezing also folds batch norms into the convolutions. A graph
        is traced once per input shape and dtype (smp's decoders size their upsampling
        from the input); the tracing pass's own output is this batch's result, so
        tracing costs no extra pass. While one thread traces, others run eagerly rather
        than wait. Traced under bf16 autocast, the graph keeps autocast's casts and
        freezing casts the weights once, not at every pass. Graphs are also kept for
        the process (:data:`_SHARED_GRAPHS`, by a digest of the weights and the
        normalisation), so another predictor of the same weights, precision and device
        does not trace again.
        Where tracing fails, or ``graph`` is off (the default on GPUs), the pass runs
        eagerly.
        """
        if not self.graph:
            return self._eager(tiles, valid)
        key = (tuple(tiles.shape), str(tiles.dtype))
        found = self._graphs.get(key)
        if found is not None:
            return found(tiles, valid)
        if not self._graph_lock.acquire(blocking=False):
            return self._eager(tiles, valid)
        try:
            if key in self._graphs:
                return self._graphs[key](tiles, valid)
            assert self._shared_key is not None  # set whenever graphs are on
            shared_key = (*self._shared_key, key)
            with _shared_lock:
                found = _SHARED_GRAPHS.get(shared_key)
                if found is not None:
                    _SHARED_GRAPHS.move_to_end(shared_key)
            if found is not None:
                self._graphs[key] = found
                return found(tiles, valid)
            capture = _Capture(self._pass).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated, but still the GIL-free way
                traced = torch.jit.trace(capture, (tiles, valid), check_trace=False)  # type: ignore[no-untyped-call]
                self._graphs[key] = torch.jit.freeze(traced)
            with _shared_lock:
                _SHARED_GRAPHS[shared_key] = self._graphs[key]
                while len(_SHARED_GRAPHS) > _SHARED_GRAPHS_MAX:
                    _SHARED_GRAPHS.popitem(last=False)
            probs: torch.Tensor = capture.output
            return probs
        except Exception as exc:  # noqa: BLE001  (any failure: run eagerly, as before)
            log.info("running %s eagerly: tracing failed (%s)", type(self.model).__name__, exc)
            self.graph = False
            return self._eager(tiles, valid)
        finally:
            self._graph_lock.release()

    def _eager(self, tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The pass without a graph."""
        probs: torch.Tensor = self._pass(tiles, valid)
        return probs

    def predict(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Per-class probabilities for a batch of tiles.

        The raw tiles go to the device as they are (uint8 stays uint8); there the pass
        normalises them (invalid pixels first set to the normalisation's centre, as
        :meth:`normalize` does), reflect-pads height and width up to a multiple of 32
        for smp models, runs the model under ``torch.inference_mode`` with autocast at
        :attr:`dtype`, crops back and takes the softmax in float32.

        Args:
            tiles: ``(N, B, H, W)`` raw band values; ``B == in_channels``.
            valid: ``(N, H, W)`` bool validity mask; ``None``: all valid.

        Returns:
            ``(N, C, H, W)`` float32 probabilities summing to 1 over ``C`` (on the CPU).

        Raises:
            ValueError: the shapes do not fit each other or the model's band count.
        """
        tiles, valid = self.normalizer.check(tiles, valid)
        n, _, h, w = tiles.shape
        if n == 0:
            return np.zeros((0, self.num_classes, h, w), dtype=np.float32)
        tiles = _torch_readable(tiles)
        if valid is None:
            valid = np.ones((n, h, w), dtype=bool)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, non_blocking=True)
            ok = torch.from_numpy(np.ascontiguousarray(valid)).to(self.device, non_blocking=True)
            return self._run(x, ok).cpu().numpy()


#: unsigned integers wider than a byte, which torch barely computes with, widened exactly first
_WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}
_TORCH_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
                                       np.float64)}


def _torch_readable(tiles: np.ndarray) -> np.ndarray:
    """``tiles`` in a dtype torch converts to float32 as numpy does (uint16 to int32, uint32 to int64)."""
    if tiles.dtype in _TORCH_DTYPES:
        return tiles
    if tiles.dtype in _WIDEN:
        return tiles.astype(_WIDEN[tiles.dtype])
    return tiles.astype(np.float32)


class _Pass(torch.nn.Module):
    """One forward pass from raw tiles to probabilities, as the frozen graph runs it.

    ``(tiles, valid)``: ``(N, B, H, W)`` raw values of any numeric dtype and ``(N, H, W)``
    bool; returns ``(N, C, H, W)`` float32 softmax probabilities. The normalisation is
    :class:`~geovision.models.predictor.Normalizer`'s arithmetic in float32 torch
    (the same numbers).
    """

    #: ``(1, B, 1, 1)`` float32 buffers: ``y = (x - offset) * scale``, invalid pixels first set to ``centre``
    offset: torch.Tensor
    scale: torch.Tensor
    centre: torch.Tensor

    def __init__(self, model: torch.nn.Module, normalizer: Normalizer, device: torch.device, pad_multiple: int,
                 channels_last: bool, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        for name, value in normalizer.tensors(device).items():
            self.register_buffer(name, value, persistent=False)
        self.clip, self.pad_multiple, self.channels_last = normalizer.clip, pad_multiple, channels_last
        self.dtype, self.device_type = dtype, device.type

    def forward(self, tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h, w = int(tiles.shape[-2]), int(tiles.shape[-1])
        x = tiles.float()
        invalid = torch.logical_or(~torch.isfinite(x), ~valid.unsqueeze(1))
        x = torch.where(invalid, self.centre, x)
        x = (x - self.offset) * self.scale
        if self.clip:
            x = x.clamp(0.0, 1.0)
        x = pad_to_multiple(x, self.pad_multiple)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            logits = self.model(x)
        else:
            with torch.autocast(device_type=self.device_type, dtype=self.dtype):
                logits = self.model(x)
        if isinstance(logits, (tuple, list)):  # smp with aux_params returns (masks, labels)
            logits = logits[0]
        return torch.softmax(logits[:, :, :h, :w].float(), dim=1).contiguous()


class _Capture(torch.nn.Module):
    """Wraps a pass for tracing and keeps the output of the pass that traced it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.output: Any = None

    def forward(self, *args: torch.Tensor) -> Any:
        self.output = self.inner(*args)
        return self.output
