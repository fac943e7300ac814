"""Segmentation losses with an ignore label and per-class weights.

Every loss here is a module ``loss(logits, target) -> scalar`` with ``logits``
``(N, C, H, W)`` float (any dtype; computed in float32) and ``target``
``(N, H, W)`` int64 class ids, pixels equal to ``ignore_index`` counting
nowhere. :func:`build_loss` picks one by name:

* ``"ce"``: softmax cross-entropy, optionally class-weighted.
* ``"focal"``: softmax focal loss (Lin et al. 2017), optionally class-weighted;
  with ``gamma=0`` it is exactly ``"ce"``.
* ``"dice_ce"``: Dice + cross-entropy, equal weights.
* ``"dice_focal"``: Dice + focal, equal weights.

Weighted means follow :func:`torch.nn.functional.cross_entropy`: the sum of
``w[target] * loss`` over the counted pixels divided by the sum of
``w[target]``. A batch in which no pixel counts (all ignored, or all of
weight-0 classes) gives a loss of 0 that still has a gradient, not NaN.

The Dice term is segmentation-models-pytorch's multiclass
:class:`~segmentation_models_pytorch.losses.DiceLoss` (soft Dice on softmax
probabilities, computed over the whole batch per class). smp masks ignored
pixels out of both prediction and target, and sets the loss of every class
without a target pixel in the batch to 0, but still averages over all ``C``
classes, so the Dice term of a batch showing one class of four would be at most
0.25. :class:`DiceLoss` here averages over the classes present in the batch
instead, so the term lies in ``[0, 1]`` whatever the batch holds. A class absent
from the batch is not penalised by Dice for false positives; the CE or focal
term is. Dice is not class-weighted (it already balances classes).

:func:`class_weights_from_counts` turns per-class pixel counts of the training
labels into ``class_weights``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from geovision.errors import ConfigError
from geovision.models.registry import import_smp

__all__ = [
    "LOSSES",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "build_loss",
    "class_weights_from_counts",
]

LOSSES: tuple[str, ...] = ("dice_ce", "ce", "focal", "dice_focal")
"""Loss names :func:`build_loss` knows."""

WeightMethod = Literal["inverse_sqrt", "median"]
_WEIGHT_METHODS: tuple[str, ...] = ("inverse_sqrt", "median")


def _weighted_mean(per_pixel: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """``sum(w[t] * loss) / sum(w[t])`` over the valid pixels; 0 (with a gradient) when that sum is 0."""
    if weight is None:
        pixel_weight = valid.to(per_pixel.dtype)
    else:
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        pixel_weight = weight.to(per_pixel.device, per_pixel.dtype)[safe_target] * valid
    total = pixel_weight.sum()
    return (per_pixel * pixel_weight).sum() / total.clamp_min(torch.finfo(per_pixel.dtype).tiny)


class _PixelLoss(nn.Module):
    """Shared by the per-pixel losses: ignore label, optional class weights as a buffer."""

    weight: torch.Tensor | None

    def __init__(self, class_weights: Sequence[float] | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("weight", weight)

    def _log_probs(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each pixel's target class ``(N, H, W)`` and the valid-pixel mask."""
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_p = F.log_softmax(logits.float(), dim=1)
        return log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1), valid


class CrossEntropyLoss(_PixelLoss):
    """Softmax cross-entropy ``-log p[target]``, class-weighted mean over the pixels that count.

    Args:
        class_weights: ``(C,)`` weight per class, or None for 1 each.
        ignore_index: Target value of pixels that do not count.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_pt, valid = self._log_probs(logits, target)
        return _weighted_mean(-log_pt, target, valid, self.weight)


class FocalLoss(_PixelLoss):
    """Softmax focal loss ``-(1 - p[target])^gamma log p[target]``, class-weighted like :class:`CrossEntropyLoss`.

    smp's ``FocalLoss`` is not used: in multiclass mode it sums one-vs-rest
    *sigmoid* focal terms over the classes, which is not a softmax loss and not
    cross-entropy at ``gamma=0``.

    Args:
        gamma: Focusing exponent (>= 0); 0 gives cross-entropy.
        class_weights: ``(C,)`` weight per class (the ``alpha`` of the paper), or None.
        ignore_index: Target value of pixels that do not count.
    """

    def __init__(
        self, gamma: float = 2.0, class_weights: Sequence[float] | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__(class_weights, ignore_index)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_pt, valid = self._log_probs(logits, target)
        per_pixel = -log_pt
        if self.gamma != 0:
            per_pixel = per_pixel * (1.0 - log_pt.exp()).clamp_min(0).pow(self.gamma)
        return _weighted_mean(per_pixel, target, valid, self.weight)


class DiceLoss(import_smp().losses.DiceLoss):  # type: ignore[misc]  # a base mypy cannot see: smp, imported lazily
    """smp's multiclass soft Dice loss, averaged over the classes present in the batch.

    ``1 - 2 sum(p t) / (sum p + sum t)`` per class over the batch's counted pixels
    (``p`` softmax probability, ``t`` one-hot target), averaged over the classes
    with at least one counted target pixel; 0 if there is none.

    Args:
        ignore_index: Target value of pixels that do not count.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        # smp: mean over all C classes, absent classes contributing 0
        loss = super().forward(logits.float(), target)
        counted = target[target != self.ignore_index]
        # isin rather than bincount: bincount has no deterministic CUDA kernel
        present = torch.isin(torch.arange(num_classes, device=target.device), counted).sum()
        return loss * (num_classes / present.clamp_min(1).to(loss.dtype))


class CombinedLoss(nn.Module):
    """The unweighted sum of several losses (``dice_ce``: Dice + CE; ``dice_focal``: Dice + focal)."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum((loss(logits, target) for loss in self.losses), torch.zeros((), device=logits.device))


class _CheckedLoss(nn.Module):
    """Checks the logits' class count and the target's shape before calling the loss."""

    def __init__(self, loss: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.loss = loss
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (N, {self.num_classes}, H, W), got {tuple(logits.shape)}")
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            expected = (logits.shape[0], *logits.shape[2:])
            raise ValueError(f"target must be (N, H, W) = {expected}, got {tuple(target.shape)}")
        return self.loss(logits, target.long())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def build_loss(
    name: str = "dice_ce",
    *,
    num_classes: int,
    class_weights: Sequence[float] | None = None,
    ignore_index: int = 255,
    gamma: float = 2.0,
) -> nn.Module:
    """Build a segmentation loss by name.

    Args:
        name: One of :data:`LOSSES`.
        num_classes: Number of classes ``C`` (>= 2), the logits' channel count.
        class_weights: ``(C,)`` non-negative weight per class for the CE and focal
            terms (for example from :func:`class_weights_from_counts`), or None.
        ignore_index: Target value of pixels that count nowhere (also not in
            Dice); must not be a class id.
        gamma: Focal loss exponent (``focal`` and ``dice_focal`` only).

    Returns:
        A module ``loss(logits (N, C, H, W), target (N, H, W) int64) -> scalar``.

    Raises:
        ConfigError: Unknown name (the message lists :data:`LOSSES`), fewer than 2
            classes, ``class_weights`` of the wrong length or negative, an
            ``ignore_index`` that is a class id, or a negative ``gamma``.
    """
    if name not in LOSSES:
        close = difflib.get_close_matches(name, LOSSES, n=2)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown loss {name!r}.{hint} Valid: {', '.join(LOSSES)}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"a segmentation loss needs num_classes >= 2 (background and one class), got {num_classes!r}")
    if 0 <= ignore_index < num_classes:
        raise ConfigError(
            f"ignore_index {ignore_index} is one of the class ids 0..{num_classes - 1}; "
            "use 255 (or -100) for unlabelled pixels"
        )
    if class_weights is not None:
        class_weights = [float(w) for w in class_weights]
        if len(class_weights) != num_classes:
            raise ConfigError(
                f"class_weights has {len(class_weights)} values but there are {num_classes} classes; "
                "give one weight per class"
            )
        if any(not math.isfinite(w) or w < 0 for w in class_weights):
            raise ConfigError(f"class_weights must be finite and >= 0, got {class_weights}")
    if not gamma >= 0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma!r}")

    match name:
        case "ce":
            loss: nn.Module = CrossEntropyLoss(class_weights, ignore_index)
        case "focal":
            loss = FocalLoss(gamma, class_weights, ignore_index)
        case "dice_ce":
            loss = CombinedLoss(DiceLoss(ignore_index), CrossEntropyLoss(class_weights, ignore_index))
        case "dice_focal":
            loss = CombinedLoss(DiceLoss(ignore_index), FocalLoss(gamma, class_weights, ignore_index))
    return _CheckedLoss(loss, num_classes)


def class_weights_from_counts(
    counts: Sequence[int],
    *,
    method: WeightMethod = "inverse_sqrt",
    max_weight: float = 10.0,
) -> list[float]:
    """Per-class loss weights from the classes' pixel counts in the training labels.

    * ``"inverse_sqrt"``: ``w_c`` proportional to ``1 / sqrt(n_c)`` (a mild rebalancing).
    * ``"median"``: median frequency balancing (Eigen & Fergus 2015),
      ``w_c = median(f) / f_c`` with ``f_c`` the class frequency; after the
      normalisation below this equals inverse-frequency weighting.

    The weights of the present classes (``n_c > 0``) are scaled to mean 1, then
    capped at ``max_weight`` (so the mean can end below 1 when a cap bites);
    absent classes get 0. For ``[900, 100, 0]``: ``inverse_sqrt`` gives
    ``[0.5, 1.5, 0.0]``, ``median`` gives ``[0.2, 1.8, 0.0]``.

    Args:
        counts: ``(C,)`` labelled pixel count per class (ignored pixels not counted).
        method: ``"inverse_sqrt"`` or ``"median"``.
        max_weight: Largest weight a class may get (> 0).

    Returns:
        ``C`` weights, for :func:`build_loss`'s ``class_weights``.

    Raises:
        ConfigError: Negative counts, no labelled pixel at all, an unknown method or
            a ``max_weight`` <= 0.
    """
    if method not in _WEIGHT_METHODS:
        raise ConfigError(f"unknown class weight method {method!r}; valid: {', '.join(_WEIGHT_METHODS)}")
    if not max_weight > 0:
        raise ConfigError(f"max_weight must be > 0, got {max_weight!r}")
    values = [float(c) for c in counts]
    if any(not math.isfinite(c) or c < 0 for c in values):
        raise ConfigError(f"class pixel counts must be finite and >= 0, got {list(counts)}")
    present = [c for c in values if c > 0]
    if not present:
        raise ConfigError(
            f"no class has any labelled pixel (counts {list(counts)}); check the labels and the class list"
        )

    match method:
        case "inverse_sqrt":
            raw = [1.0 / math.sqrt(c) if c > 0 else 0.0 for c in values]
        case "median":
            total = sum(present)
            frequencies = sorted(c / total for c in present)
            middle = len(frequencies) // 2
            median = (
                frequencies[middle] if len(frequencies) % 2 else (frequencies[middle - 1] + frequencies[middle]) / 2
            )
            raw = [median / (c / total) if c > 0 else 0.0 for c in values]
    mean = sum(raw) / len(present)
    return [min(w / mean, float(max_weight)) for w in raw]
