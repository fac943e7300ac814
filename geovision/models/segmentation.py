"""Segmentation predictor: raw tile batches in, per-class probabilities out.

Device, precision, weights and normalisation come from
:class:`~geovision.models.predictor.TilePredictor`; this subclass pads tiles to
the encoder's stride and returns softmax probabilities for the stitcher. On
CPU, channels-last memory format with bfloat16 autocast made a
U-Net/ResNet-18 forward pass about 3-4x faster than plain float32 on an
AVX512-BF16 machine, so ``precision="auto"`` picks bf16 wherever the hardware
supports it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from geovision.models.bundle import BundleConfig
from geovision.models.predictor import (  # noqa: F401  (resolve_* re-exported for compatibility)
    Precision,
    TilePredictor,
    _pad_to_multiple,
    resolve_device,
    resolve_precision,
)
from geovision.models.registry import ShallowNet

__all__ = ["SegmentationPredictor", "clear_graph_cache", "resolve_device", "resolve_precision", "weights_digest"]

log = logging.getLogger(__name__)

_SMP_DIVISOR = 32
"""smp models want input height and width divisible by this (the encoder's output stride)."""

#: frozen graphs kept for the whole process, so that a second predictor of the same weights
#: (a second ``geovision.predict`` call in a loop over rasters) does not trace again:
#: ``(weights digest, precision, channels_last, device, input shape) -> graph``, least recently
#: used dropped first (a U-Net-ResNet18 graph holds its own 57 MB of folded fp32 weights)
_SHARED_GRAPHS: OrderedDict[tuple, Any] = OrderedDict()
_SHARED_GRAPHS_MAX = 2
_shared_lock = threading.Lock()


def clear_graph_cache() -> None:
    """Forget the frozen graphs kept for the process (each predictor keeps its own)."""
    with _shared_lock:
        _SHARED_GRAPHS.clear()


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes (57 MB of U-Net-ResNet18: 0.04 s)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        h.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


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
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._graph_lock = threading.Lock()
        #: what the process-wide graphs of these weights are filed under (input shape added)
        self._shared_key = ((weights_digest(state_dict), str(self.dtype), self.channels_last, str(self.device))
                            if self.graph else None)

    def _forward(self, x: torch.Tensor) -> Any:
        """The model's output for ``x``: through a frozen TorchScript graph where there is one.

        In a graph the whole forward pass runs in C++ without Python's GIL, so forward
        passes on several threads do not queue behind each other, or behind reading and
        stitching, at every layer (U-Net-ResNet18, two passes beside a busy Python
        thread on 2 cores: 0.37 s per tile as a graph, 0.62 s eager). Freezing also folds
        batch norms into the convolutions. A graph is traced once per input shape (smp's
        decoders size their upsampling from the input); the tracing pass's own output is
        this batch's result, so tracing costs no extra pass. While one thread traces,
        others run eagerly rather than wait. Traced under bf16 autocast, the graph keeps
        autocast's casts and freezing casts the weights once, not at every pass
        (AVX512-BF16 EPYC, two passes on 2 cores: 53 ms per tile against 88 ms eager;
        batch norms folded into bf16 weights leave it as close to float32 as eager
        bf16). Graphs are also kept for the process (:data:`_SHARED_GRAPHS`, by a digest
        of the weights), so another predictor of the same weights, precision and device
        does not trace again (tracing adds 0.4 s to a 512 px fp32 pass on one core).
        Where tracing fails, or ``graph`` is off (the default on GPUs), the eager model
        runs.
        """
        if not self.graph:
            return self.model(x)
        key = tuple(x.shape)
        found = self._graphs.get(key)
        if found is not None:
            return found(x)
        if not self._graph_lock.acquire(blocking=False):
            return self.model(x)
        try:
            if key in self._graphs:
                return self._graphs[key](x)
            shared_key = (*self._shared_key, key)
            with _shared_lock:
                found = _SHARED_GRAPHS.get(shared_key)
                if found is not None:
                    _SHARED_GRAPHS.move_to_end(shared_key)
            if found is not None:
                self._graphs[key] = found
                return found(x)
            capture = _Capture(self.model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated, but still the GIL-free way
                traced = torch.jit.trace(capture, x, check_trace=False)
                self._graphs[key] = torch.jit.freeze(traced)
            with _shared_lock:
                _SHARED_GRAPHS[shared_key] = self._graphs[key]
                while len(_SHARED_GRAPHS) > _SHARED_GRAPHS_MAX:
                    _SHARED_GRAPHS.popitem(last=False)
            return capture.output
        except Exception as exc:  # noqa: BLE001  (any failure: run eagerly, as before)
            log.info("running %s eagerly: tracing failed (%s)", type(self.model).__name__, exc)
            self.graph = False
            return self.model(x)
        finally:
            self._graph_lock.release()

    def predict(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Per-class probabilities for a batch of tiles.

        The tiles are normalised (:meth:`normalize`); for smp models height and width
        are reflect-padded up to a multiple of 32 and the output cropped back. The
        forward pass runs under ``torch.inference_mode`` with autocast at
        :attr:`dtype`; the softmax is taken in float32.

        Args:
            tiles: ``(N, B, H, W)`` raw band values; ``B == in_channels``.
            valid: ``(N, H, W)`` bool validity mask; ``None``: all valid.

        Returns:
            ``(N, C, H, W)`` float32 probabilities summing to 1 over ``C`` (on the CPU).
        """
        x_np = self.normalize(tiles, valid)
        n, _, h, w = x_np.shape
        if n == 0:
            return np.zeros((0, self.num_classes, h, w), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            x = _pad_to_multiple(x, self.pad_multiple)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = self._forward(x)
            if isinstance(logits, (tuple, list)):  # smp with aux_params returns (masks, labels)
                logits = logits[0]
            probs = torch.softmax(logits[:, :, :h, :w].float(), dim=1)
            return probs.contiguous().cpu().numpy()


class _Capture(torch.nn.Module):
    """Wraps a model for tracing and keeps the output of the pass that traced it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.output: Any = None

    def forward(self, x: torch.Tensor) -> Any:
        self.output = self.model(x)
        return self.output
