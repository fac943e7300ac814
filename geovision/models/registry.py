"""Architecture registry: build a ``torch.nn.Module`` from a :class:`BundleConfig`.

Segmentation architectures are every segmentation-models-pytorch (smp)
architecture, looked up by name (``"unet"``, ``"fpn"``, ``"deeplabv3plus"``,
...) with any smp encoder (``"resnet18"``, ``"efficientnet-b0"``, ``"tu-<timm
model>"``, ...), plus one built-in architecture, ``"shallow"``
(:class:`ShallowNet`). Detection architectures are torchvision's detectors
(:mod:`geovision.models.detectors`). A typo in an architecture, encoder or
parameter name is a :class:`~geovision.errors.ConfigError` that lists the valid
names. :func:`init_bundle` writes a new bundle with an untrained model.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any, Literal, cast

import torch
from pydantic import ValidationError
from torch import nn

from geovision.errors import BundleError, ConfigError
from geovision.models.bundle import save_bundle
from geovision.models.config import (
    BundleConfig,
    ClassInfo,
    Normalization,
    default_colors,
    default_normalization,
    format_validation_error,
)
from geovision.models.detectors import backbone_weights, build_detector
from geovision.progress import import_tqdm_auto_quietly

__all__ = [
    "SHALLOW_ARCH",
    "ShallowNet",
    "build_loaded_model",
    "build_model",
    "import_smp",
    "init_bundle",
    "list_architectures",
    "list_encoders",
    "load_weights",
]

SHALLOW_ARCH = "shallow"
"""Name of the built-in architecture."""

# Arguments geovision sets itself from the config; they may not appear in arch_params.
_RESERVED_PARAMS = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation")


class ShallowNet(nn.Module):
    """A small fully-convolutional segmentation net with a known, tiny receptive field.

    ``depth`` 3x3 convolutions (padding 1, ``width`` channels) each followed by a
    ReLU, then a 1x1 convolution to ``classes`` logits. Its receptive field is
    ``2 * depth + 1`` pixels, and it accepts any input height and width.

    It exists so tests can prove that tiled prediction equals whole-image
    prediction: when the receptive field fits inside the tile overlap (and the
    blend weights are 1 where tiles are compared), every pixel sees the same input
    context in a tile as in the whole image. It is also quick to train on toy
    data. Encoder name: ``"none"``; ``arch_params``: ``{"depth": 3, "width": 16}``.

    Args:
        in_channels: input bands.
        classes: output classes (logit channels).
        depth: number of 3x3 conv + ReLU layers (>= 1).
        width: channels of the hidden layers (>= 1).
    """

    def __init__(self, in_channels: int, classes: int, depth: int = 3, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, classes, kernel_size=1)
        self.depth = depth
        self.width = width

    @property
    def receptive_field(self) -> int:
        """Receptive field edge in pixels: ``2 * depth + 1``."""
        return 2 * self.depth + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` -> ``(N, classes, H, W)`` logits."""
        logits: torch.Tensor = self.head(self.features(x))
        return logits


@lru_cache(maxsize=1)
def import_smp() -> ModuleType:
    """segmentation-models-pytorch, imported on first use (with timm it takes seconds) and quietly."""
    import_tqdm_auto_quietly()
    return importlib.import_module("segmentation_models_pytorch")


def _smp_architectures() -> dict[str, type[nn.Module]]:
    return dict(import_smp().MODEL_ARCHITECTURES_MAPPING)


def list_architectures() -> list[str]:
    """Names of every architecture :func:`build_model` knows, sorted (smp's and ``"shallow"``)."""
    return sorted([*_smp_architectures(), SHALLOW_ARCH])


def list_encoders() -> list[str]:
    """smp encoder names (``"tu-<timm model>"`` encoders are accepted too but not listed)."""
    return list(import_smp().encoders.get_encoder_names())


def _suggest(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=3)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            raise ConfigError(
                f"unknown timm encoder {encoder!r}: timm has no model {encoder[3:]!r}. "
                "List timm models with timm.list_models(), e.g. 'tu-resnet18' or 'tu-convnext_tiny'."
            )
        return
    names = list_encoders()
    if encoder not in names:
        raise ConfigError(
            f"unknown encoder {encoder!r}.{_suggest(encoder, names)} Valid encoders: {', '.join(names)}; "
            "or 'tu-<timm model name>' for any timm model."
        )


def _build_shallow(config: BundleConfig) -> nn.Module:
    if config.encoder != "none":
        raise ConfigError(f"the 'shallow' architecture has no encoder: set encoder to 'none', got {config.encoder!r}")
    params = dict(config.arch_params)
    unknown = sorted(set(params) - {"depth", "width"})
    if unknown:
        raise ConfigError(f"unknown arch_params {unknown} for 'shallow'; valid parameters: depth, width")
    depth, width = params.get("depth", 3), params.get("width", 16)
    for name, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"arch_params {name} for 'shallow' must be an integer >= 1, got {value!r}")
    return ShallowNet(config.in_channels, config.num_classes, depth=depth, width=width)


def _build_smp(config: BundleConfig, encoder_weights: str | None) -> nn.Module:
    architectures = _smp_architectures()
    model_class = architectures[config.arch.lower()]
    _check_encoder(config.encoder)

    params = dict(config.arch_params)
    reserved = sorted(set(params) & set(_RESERVED_PARAMS))
    if reserved:
        raise ConfigError(
            f"arch_params may not set {reserved}: geovision sets encoder_name/in_channels/classes from the "
            "config, encoder_weights from the command, and applies softmax itself (no activation). Remove them."
        )
    signature = inspect.signature(model_class.__init__)
    valid = [n for n, p in signature.parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD]
    if not config.encoder.startswith("tu-"):  # only timm encoders take extra keyword arguments
        unknown = sorted(set(params) - set(valid))
        if unknown:
            allowed = [n for n in valid if n not in _RESERVED_PARAMS]
            raise ConfigError(
                f"unknown arch_params {unknown} for {config.arch!r}; valid parameters: {', '.join(allowed)}"
            )
    try:
        model: nn.Module = import_smp().create_model(
            config.arch.lower(),
            encoder_name=config.encoder,
            encoder_weights=encoder_weights,
            in_channels=config.in_channels,
            classes=config.num_classes,
            **params,
        )
        return model
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ConfigError(
            f"cannot build {config.arch!r} with encoder {config.encoder!r} and arch_params {params}: {message}"
        ) from exc
    except Exception as exc:  # network / hub errors while fetching pretrained weights
        if encoder_weights is None:
            raise
        raise ConfigError(
            f"cannot fetch pretrained weights {encoder_weights!r} for encoder {config.encoder!r}: "
            f"{str(exc).rstrip('. ')}. "
            "Connect to the internet (or fill the Hugging Face cache) once, or use encoder_weights=None "
            "for random weights."
        ) from exc


def build_model(config: BundleConfig, encoder_weights: str | None = None) -> nn.Module:
    """Build the (untrained) model a config describes.

    Args:
        config: the bundle configuration (``task``, ``arch``, ``encoder``,
            ``arch_params``, ``in_channels``, ``classes``).
        encoder_weights: pretrained encoder weights to download, e.g. ``"imagenet"``;
            ``None`` gives random weights and needs no network.

    Returns:
        Segmentation: a module mapping ``(N, in_channels, H, W)`` float input to
        ``(N, num_classes, H, W)`` logits (smp models want ``H`` and ``W`` divisible
        by 32). Detection: a torchvision detector (see :mod:`geovision.models.detectors`).

    Raises:
        ConfigError: unknown architecture, encoder or parameter (the message lists the
            valid names), or pretrained weights that cannot be fetched.
    """
    if config.task == "detection":
        weights = backbone_weights(config.encoder, encoder_weights) if encoder_weights else None
        try:
            return build_detector(config, weights)
        except (OSError, RuntimeError) as exc:
            if weights is None:
                raise
            raise ConfigError(
                f"cannot fetch pretrained weights {encoder_weights!r} for backbone {config.encoder!r}: {exc}. "
                "Connect to the internet once (torchvision caches them), or use encoder_weights=None."
            ) from exc
    if config.arch.lower() == SHALLOW_ARCH:
        return _build_shallow(config)
    architectures = _smp_architectures()
    if config.arch.lower() not in architectures:
        names = list_architectures()
        raise ConfigError(
            f"unknown architecture {config.arch!r}.{_suggest(config.arch.lower(), names)} "
            f"Valid architectures: {', '.join(names)}"
        )
    return _build_smp(config, encoder_weights)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "the bundle",
                 assign: bool = False) -> None:
    """Load ``state_dict`` into ``model`` strictly, explaining any mismatch.

    Args:
        model: the module from :func:`build_model`.
        state_dict: weights, ``name -> tensor``.
        source: where the weights come from, for the message (e.g. the bundle path).
        assign: the model's tensors become the given ones instead of being copied into
            (for a model built on the ``meta`` device, see :func:`build_loaded_model`).

    Raises:
        BundleError: names are missing or unexpected, or shapes differ; the message
            lists them (the first few of each).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: {tuple(state_dict[k].shape)} in the weights, {tuple(expected[k].shape)} in the model"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:

        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with a different shape: {show(wrong_shape)}")
        raise BundleError(
            f"the weights in {source} do not fit the architecture the config describes "
            f"({type(model).__name__}): {'; '.join(parts)}. The bundle's weights and configuration "
            "do not belong together: export the bundle again from the trained model."
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=assign)
    except RuntimeError as exc:
        raise BundleError(f"cannot load the weights in {source}: {exc}") from exc


def build_loaded_model(config: BundleConfig, state_dict: Mapping[str, torch.Tensor], *,
                       source: str = "the bundle") -> nn.Module:
    """:func:`build_model` with ``state_dict`` loaded, without initialising weights only to overwrite them.

    The model is built on PyTorch's ``meta`` device (shapes, no memory, no random
    initialisation to throw away) and
    takes the given tensors as its own. A model that keeps tensors outside its state
    dict (which would stay on ``meta``) is built the ordinary way instead.

    Raises:
        ConfigError: as :func:`build_model`.
        BundleError: as :func:`load_weights`.
    """
    with torch.device("meta"):
        model = build_model(config)
    load_weights(model, state_dict, source=source, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build_model(config)
        load_weights(model, state_dict, source=source)
    return model


def _class_name(c: str | ClassInfo) -> str:
    return c.name if isinstance(c, ClassInfo) else str(c)


def init_bundle(
    path: str | os.PathLike[str],
    *,
    task: Literal["segmentation", "detection"] = "segmentation",
    arch: str = "unet",
    encoder: str | None = None,
    bands: int | Sequence[int] = 3,
    classes: Sequence[str | ClassInfo],
    band_names: Sequence[str] | None = None,
    normalization: Normalization | Mapping[str, Any] | None = None,
    tile_size: int = 512,
    ground_resolution_m: float | None = None,
    encoder_weights: str | None = None,
    arch_params: Mapping[str, Any] | None = None,
) -> BundleConfig:
    """Create an untrained (or encoder-pretrained) model and save it as a bundle.

    The model is built through :func:`build_model`, so the architecture, encoder
    and ``arch_params`` are checked before anything is written.

    Args:
        path: the ``.safetensors`` file to write (replaced if it exists).
        task: ``"segmentation"`` or ``"detection"``.
        arch: architecture name: for segmentation see
            :func:`list_architectures`; for detection
            ``"fasterrcnn"``, ``"retinanet"`` or ``"fcos"``.
        encoder: encoder name; default ``"resnet18"``, or ``"none"`` for ``arch="shallow"``.
        bands: how many bands (read as raster bands ``1..n``), or the 1-based raster
            band indices to read, e.g. ``[4, 3, 2]``.
        classes: class names (or :class:`ClassInfo`) in output order; class 0 is the
            background. Names get :func:`~geovision.models.config.default_colors`. For detection a
            ``"background"`` class is put first when the list does not start with one.
        band_names: a name per band; default ``["red", "green", "blue"]`` for 3 bands,
            else ``["band_<index>", ...]``.
        normalization: default :func:`~geovision.models.config.default_normalization`: for 3 bands ``meanstd``
            with the ImageNet mean/std scaled to 0-255
            (mean ``[123.675, 116.28, 103.53]``, std ``[58.395, 57.12, 57.375]``);
            for any other band count ``meanstd`` with mean 127.5 and std 64 per band.
        tile_size: tile edge in pixels (multiple of 32).
        ground_resolution_m: pixel size of the intended imagery (metres), if known.
        encoder_weights: pretrained encoder weights to download (e.g. ``"imagenet"``);
            ``None`` (default) gives random weights and needs no network.
        arch_params: extra architecture arguments (e.g. ``{"depth": 3, "width": 16}``
            for ``"shallow"``).

    Returns:
        The configuration that was saved.

    Raises:
        ConfigError: an option is invalid (unknown architecture or encoder, wrong
            band count, ...), or pretrained weights could not be fetched.
        BundleError: the bundle could not be written.
    """
    if isinstance(bands, int) and not isinstance(bands, bool):
        if bands < 1:
            raise ConfigError(f"bands must be >= 1 (a band count) or a list of 1-based band indices, got {bands}")
        band_list = list(range(1, bands + 1))
    else:
        band_list = [int(b) for b in cast(Sequence[int], bands)]
        if not band_list:
            raise ConfigError("bands is an empty list; give a band count such as 3 or indices such as [1, 2, 3]")
    n = len(band_list)
    if band_names is None:
        band_names = ["red", "green", "blue"] if n == 3 else [f"band_{b}" for b in band_list]
    if encoder is None:
        encoder = "none" if arch.lower() == "shallow" else "resnet18"
    if normalization is None:
        normalization = default_normalization(n)
    classes = list(classes)
    if task == "detection" and (not classes or _class_name(classes[0]) != "background"):
        classes = ["background", *classes]  # torchvision detectors reserve label 0 for the background
    colors = default_colors(len(classes))
    class_infos = [c if isinstance(c, ClassInfo) else {"name": c, "color": colors[i]} for i, c in enumerate(classes)]
    provenance: dict[str, Any] = {
        "created_by": "init_bundle",
        "trained": False,
        "encoder_weights": encoder_weights,
    }
    try:
        config = BundleConfig(
            task=task,
            arch=arch,
            encoder=encoder,
            arch_params=dict(arch_params or {}),
            in_channels=n,
            bands=band_list,
            band_names=list(band_names),
            normalization=normalization,  # type: ignore[arg-type]  # pydantic validates a mapping too
            classes=class_infos,  # type: ignore[arg-type]
            tile_size=tile_size,
            ground_resolution_m=ground_resolution_m,
            provenance=provenance,
        )
    except ValidationError as exc:
        raise ConfigError(f"cannot create bundle {path}:\n{format_validation_error(exc)}") from None
    model = build_model(config, encoder_weights=encoder_weights)
    save_bundle(path, config, model.state_dict())
    return config
