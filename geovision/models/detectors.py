"""Detection models: torchvision detectors built from a bundle's configuration.

Architectures are torchvision's Faster R-CNN (``"fasterrcnn"``), RetinaNet
(``"retinanet"``) and FCOS (``"fcos"``) on a ResNet FPN backbone (``"resnet18"``,
``"resnet34"``, ``"resnet50"``, ``"resnet101"``), or Faster R-CNN on MobileNetV3-Large
FPN (``"mobilenet_v3_large"``). Three things differ from torchvision's ready-made
builders, all for tiles of georeferenced imagery:

* **Any band count.** The backbone's first convolution takes ``in_channels`` bands.
* **Native size.** torchvision resizes every image so its short side is 800 px;
  here the transform only batches (pads to a multiple of 32): a tile is seen at
  the ground resolution the model was trained at, and a 512 px tile costs what a
  512 px tile should.
* **geovision normalises.** Bands are scaled with the bundle's statistics
  (:class:`~geovision.models.predictor.TilePredictor`), so the model's own
  transform does not normalise again.

The predictor that runs these models on tiles is
:class:`~geovision.models.detection.DetectionPredictor`; this module builds the
models only, for :func:`geovision.models.registry.build_model`. torchvision is
imported when a detector is first built (it takes seconds), not with this module.

Class 0 of a detection bundle is the background (torchvision's convention);
labels 1..C-1 are the object classes. ``arch_params`` pass through to the
torchvision constructor (for example ``{"box_detections_per_img": 500}`` or
``{"anchor_sizes": [[16], [32], [64], [128], [256]]}``), checked by name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from geovision.errors import ConfigError
from geovision.models.config import BundleConfig

__all__ = [
    "DETECTION_ARCHS",
    "DETECTION_ENCODERS",
    "TinyBackbone",
    "adapt_first_conv",
    "backbone_weights",
    "build_detector",
    "native_size_transform",
]

DETECTION_ARCHS: tuple[str, ...] = ("fasterrcnn", "retinanet", "fcos")
"""Detection architectures by name."""

TINY = "tiny"
DETECTION_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large", TINY)
"""Backbones by name (``mobilenet_v3_large`` with ``fasterrcnn`` only; ``tiny``: :class:`TinyBackbone`)."""

#: defaults geovision sets on every detector (tiles hold many small objects; the score
#: threshold the user asks for is applied later, so the model keeps low-scoring boxes)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "fasterrcnn": {"box_score_thresh": 0.05, "box_detections_per_img": 300},
    "retinanet": {"score_thresh": 0.05, "detections_per_img": 300},
    "fcos": {"score_thresh": 0.05, "detections_per_img": 300},
}
_RESERVED = ("num_classes", "backbone", "min_size", "max_size", "image_mean", "image_std")


@functools.cache
def _native_size_transform_class() -> type[nn.Module]:
    """The transform's class, defined on first use: its base is torchvision's, which takes seconds to import."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class NativeSizeTransform(GeneralizedRCNNTransform):  # type: ignore[misc]  # torchvision is untyped
        """torchvision's ``GeneralizedRCNNTransform`` without resizing or normalising."""

        def __init__(self) -> None:
            super().__init__(min_size=32, max_size=1 << 20, image_mean=[0.0], image_std=[1.0], size_divisible=32)

        def normalize(self, image: torch.Tensor) -> torch.Tensor:
            return image

        def resize(
            self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
            return image, target

    return NativeSizeTransform


def native_size_transform() -> nn.Module:
    """torchvision's ``GeneralizedRCNNTransform`` without resizing or normalising.

    It only batches the images (padded to a multiple of 32) and passes targets
    through, so boxes stay in the tile's own pixel coordinates.
    """
    return _native_size_transform_class()()


def _suggest(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=2)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_names(config: BundleConfig) -> None:
    if config.arch not in DETECTION_ARCHS:
        raise ConfigError(
            f"unknown detection architecture {config.arch!r}.{_suggest(config.arch, DETECTION_ARCHS)} "
            f"Valid: {', '.join(DETECTION_ARCHS)}."
        )
    if config.encoder not in DETECTION_ENCODERS:
        raise ConfigError(
            f"unknown detection backbone {config.encoder!r}.{_suggest(config.encoder, DETECTION_ENCODERS)} "
            f"Valid: {', '.join(DETECTION_ENCODERS)}."
        )
    if config.encoder == TINY and config.arch == "fasterrcnn":
        raise ConfigError("the 'tiny' backbone works with 'fcos' and 'retinanet'; use a resnet backbone for fasterrcnn")
    if config.encoder == "mobilenet_v3_large" and config.arch != "fasterrcnn":
        raise ConfigError(
            f"the mobilenet_v3_large backbone is available with 'fasterrcnn' only, not {config.arch!r}; "
            "use a resnet18/34/50/101 backbone for retinanet and fcos."
        )
    if config.background_class != 0 or config.num_classes < 2:
        raise ConfigError(
            "a detection bundle's class 0 is the background and at least one object class follows, "
            f"e.g. ['background', 'tree']; got classes {config.class_names} with background_class "
            f"{config.background_class}."
        )


class TinyBackbone(nn.Module):
    """A small CNN with a two-level feature pyramid (strides 8 and 16), for small, dense objects.

    Four stride-2 stages of two 3x3 conv + BatchNorm + ReLU layers (``width``,
    ``2 width``, ``4 width``, ``4 width`` channels) and a top-down pyramid with
    ``out_channels`` channels at strides 8 and 16. About 0.3 M parameters at the
    default width: it trains in a minute on a CPU, which is what the test suite
    and toy scenes need (tree crowns, plants, animals of a few to some tens of
    pixels); use a ResNet backbone for real imagery with varied objects.

    Args:
        width: channels of the first stage.
        out_channels: channels of the pyramid levels.
    """

    def __init__(self, width: int = 16, out_channels: int = 64) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )

        self.stages = nn.ModuleList([
            stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width), stage(4 * width, 4 * width),
        ])
        self.lateral = nn.ModuleList([nn.Conv2d(4 * width, out_channels, 1) for _ in range(2)])
        self.smooth = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(2)])
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4 = feats[2], feats[3]  # strides 8 and 16
        p4 = self.lateral[1](c4)
        p3 = self.lateral[0](c3) + nn.functional.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        return OrderedDict([("0", self.smooth[0](p3)), ("1", self.smooth[1](p4))])


def _levels(encoder: str) -> int:
    """Feature levels the backbone's pyramid gives."""
    return {"mobilenet_v3_large": 3, TINY: 2}.get(encoder, 5)


def _backbone(config: BundleConfig, weights: Any = None) -> nn.Module:
    """The FPN backbone for ``config.encoder`` and ``config.arch``."""
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    if config.encoder == TINY:
        if weights is not None:
            raise ConfigError("the 'tiny' backbone has no pretrained weights; use encoder_weights=None")
        params = config.arch_params
        return TinyBackbone(int(params.get("tiny_width", 16)), int(params.get("tiny_channels", 64)))
    if config.encoder == "mobilenet_v3_large":
        mobilenet: nn.Module = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=weights, fpn=True,
                                                  trainable_layers=6)
        return mobilenet
    resnet = getattr(torchvision.models, config.encoder)(weights=weights)
    stage2 = resnet.inplanes // 8  # channels of layer1 (64 for resnet18/34, 256 for resnet50/101)
    if config.arch == "fasterrcnn":
        layers, extra = [1, 2, 3, 4], LastLevelMaxPool()
    else:  # retinanet and fcos: P3-P5 from the backbone, P6-P7 from P5 (as torchvision builds them)
        layers, extra = [2, 3, 4], LastLevelP6P7(256, 256)
    backbone: nn.Module = BackboneWithFPN(
        resnet,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in layers],
        out_channels=256,
        extra_blocks=extra,
    )
    return backbone


def _anchors(arch: str, encoder: str, sizes: Any) -> Any:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    levels = _levels(encoder)
    if sizes is None:
        if encoder == "mobilenet_v3_large":
            sizes = [[32, 64, 128, 256, 512]] * levels
        elif arch == "retinanet":
            base = (16, 32) if encoder == TINY else (32, 64, 128, 256, 512)
            sizes = [[x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))] for x in base]
        else:
            sizes = [[16], [32]] if encoder == TINY else [[32], [64], [128], [256], [512]]
    try:
        sizes = tuple(tuple(int(s) for s in level) for level in sizes)
    except TypeError:
        raise ConfigError(f"anchor_sizes must be a list of {levels} lists of pixel sizes, got {sizes!r}") from None
    if len(sizes) != levels:
        raise ConfigError(
            f"anchor_sizes needs one list per feature level ({levels} for {arch} on {encoder}), got {len(sizes)}"
        )
    ratios = ((0.5, 1.0, 2.0),) * levels
    return AnchorGenerator(sizes, ratios)


def _first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The first 2-D convolution in ``module``: ``(parent, attribute name, conv)``."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name) if parent_name else module, attr, child
    raise ConfigError("the backbone has no convolution to adapt to the band count")


def adapt_first_conv(backbone: nn.Module, in_channels: int) -> None:
    """Make the backbone's first convolution take ``in_channels`` bands.

    Pretrained RGB filters are kept for the first three bands; further bands get
    the mean of the RGB filters (scaled so the response keeps its size), as is
    usual for multispectral transfer learning. Fewer bands keep the first filters.
    """
    parent, attr, conv = _first_conv(backbone)
    if conv.in_channels == in_channels:
        return
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    new = nn.Conv2d(
        in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), padding,
        _pair(conv.dilation), conv.groups, conv.bias is not None, conv.padding_mode,
    )
    with torch.no_grad():
        old = conv.weight
        if in_channels <= old.shape[1]:
            new.weight.copy_(old[:, :in_channels] * (old.shape[1] / in_channels))
        else:
            mean = old.mean(dim=1, keepdim=True)
            new.weight[:, : old.shape[1]] = old
            new.weight[:, old.shape[1]:] = mean
            new.weight.mul_(old.shape[1] / in_channels)
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A 2-D convolution's ``(rows, cols)`` setting, as ``nn.Conv2d`` stores it."""
    return value[0], value[1]


def backbone_weights(encoder: str, name: str) -> Any:
    """torchvision weights for a backbone: ``name`` ``"imagenet"`` (or ``"DEFAULT"``) or an enum member name."""
    import torchvision

    getter = "ResNet" + encoder.removeprefix("resnet") if encoder.startswith("resnet") else "MobileNet_V3_Large"
    enum = getattr(torchvision.models, f"{getter}_Weights")
    key = "DEFAULT" if name.lower() in ("imagenet", "default") else name
    try:
        return enum[key]
    except KeyError:
        raise ConfigError(
            f"unknown weights {name!r} for backbone {encoder!r}; use 'imagenet' or one of {[w.name for w in enum]}"
        ) from None


def build_detector(config: BundleConfig, backbone_weights: Any = None) -> nn.Module:
    """Build the (untrained) torchvision detector a detection config describes.

    Args:
        config: a ``task="detection"`` configuration.
        backbone_weights: torchvision weights for the backbone (e.g.
            ``torchvision.models.ResNet50_Weights.IMAGENET1K_V1``), or ``None`` for random.

    Returns:
        A torchvision detection model whose transform neither resizes nor normalises.

    Raises:
        ConfigError: unknown architecture, backbone or ``arch_params`` (the message lists valid names).
    """
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

    _check_names(config)
    model_class = {"fasterrcnn": FasterRCNN, "retinanet": RetinaNet, "fcos": FCOS}[config.arch]
    params = {**_DEFAULTS[config.arch], **config.arch_params}
    reserved = sorted(set(params) & set(_RESERVED))
    if reserved:
        raise ConfigError(f"arch_params may not set {reserved}: geovision sets them from the bundle. Remove them.")
    anchor_sizes = params.pop("anchor_sizes", None)
    own = ["anchor_sizes"]
    if config.encoder == TINY:
        own += ["tiny_width", "tiny_channels"]
        params.pop("tiny_width", None), params.pop("tiny_channels", None)
    valid = [n for n in inspect.signature(model_class.__init__).parameters if n not in ("self", "kwargs")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        allowed = [n for n in valid if n not in _RESERVED]
        raise ConfigError(
            f"unknown arch_params {unknown} for {config.arch!r}; valid parameters: {', '.join(own + allowed)}"
        )
    if config.arch != "fcos":
        key = "rpn_anchor_generator" if config.arch == "fasterrcnn" else "anchor_generator"
        params[key] = _anchors(config.arch, config.encoder, anchor_sizes)
    elif anchor_sizes is not None:
        raise ConfigError("fcos is anchor-free: remove anchor_sizes from arch_params")
    elif config.encoder == TINY:
        # FCOS assigns objects to levels by the anchor size (level k takes sides up to 8x its
        # size): 8 and 16 px, like torchvision's lowest levels
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        params["anchor_generator"] = AnchorGenerator(((8,), (16,)), ((1.0,),) * 2)
    backbone = _backbone(config, backbone_weights)
    adapt_first_conv(backbone, config.in_channels)
    try:
        model: nn.Module = model_class(backbone, num_classes=config.num_classes, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {config.arch!r} with arch_params {config.arch_params}: {exc}") from exc
    model.transform = native_size_transform()
    return model
