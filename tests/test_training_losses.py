"""Segmentation losses (geovision.training.losses) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geovision.errors import ConfigError
from geovision.training.losses import LOSSES, DiceLoss, build_loss, class_weights_from_counts

IGNORE = 255

#: a 1 x 2 x 2 x 2 example: logits[class, row, col]
LOGITS = torch.tensor([[[[2.0, 0.5], [-1.0, 0.0]], [[0.0, 1.5], [1.0, 3.0]]]])
TARGET = torch.tensor([[[0, 1], [1, 0]]])


def log_softmax_at(logits: torch.Tensor, row: int, col: int, cls: int) -> float:
    """``log p[cls]`` at one pixel of LOGITS, by the formula."""
    a, b = float(logits[0, 0, row, col]), float(logits[0, 1, row, col])
    z = a if cls == 0 else b
    return z - math.log(math.exp(a) + math.exp(b))


PIXELS = [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]  # (row, col, target class)


def perfect_logits(target: torch.Tensor, num_classes: int, margin: float = 30.0) -> torch.Tensor:
    return F.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * 2 * margin - margin


# --- cross-entropy -----------------------------------------------------------------


def test_ce_matches_the_formula() -> None:
    expected = -sum(log_softmax_at(LOGITS, r, c, t) for r, c, t in PIXELS) / 4
    loss = build_loss("ce", num_classes=2)(LOGITS, TARGET)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ce_class_weights_follow_the_formula() -> None:
    w = [0.5, 2.0]
    expected = -sum(w[t] * log_softmax_at(LOGITS, r, c, t) for r, c, t in PIXELS) / sum(w[t] for _, _, t in PIXELS)
    loss = build_loss("ce", num_classes=2, class_weights=w)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    torch_loss = F.cross_entropy(LOGITS, TARGET, weight=torch.tensor(w))
    assert float(loss) == pytest.approx(float(torch_loss), rel=1e-6)


def test_ce_ignore_index_drops_pixels() -> None:
    target = TARGET.clone()
    target[0, 1, 1] = IGNORE
    expected = -sum(log_softmax_at(LOGITS, r, c, t) for r, c, t in PIXELS[:3]) / 3
    assert float(build_loss("ce", num_classes=2)(LOGITS, target)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_nothing(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    ignored = torch.rand(2, 8, 8) < 0.3
    target[ignored] = IGNORE
    loss = build_loss(name, num_classes=4, class_weights=[1.0, 2.0, 0.5, 1.5])
    other = logits.clone()
    other.permute(0, 2, 3, 1)[ignored] = torch.randn(int(ignored.sum()), 4) * 10
    assert float(loss(logits, target)) == pytest.approx(float(loss(other, target)), rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_with_gradient(name: str) -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE)
    loss = build_loss(name, num_classes=3)(logits, target)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_flow_and_bf16_logits_work(name: str) -> None:
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6))
    loss = build_loss(name, num_classes=3)(logits, target)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    half = build_loss(name, num_classes=3)(logits.detach().bfloat16(), target)
    assert half.dtype == torch.float32 and torch.isfinite(half)


# --- focal ---------------------------------------------------------------------------


def test_focal_with_gamma_zero_is_ce() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, 0] = IGNORE
    for weights in (None, [0.2, 1.0, 3.0]):
        ce = build_loss("ce", num_classes=3, class_weights=weights)(logits, target)
        focal = build_loss("focal", num_classes=3, class_weights=weights, gamma=0.0)(logits, target)
        assert float(focal) == pytest.approx(float(ce), rel=1e-6)


def test_focal_matches_the_formula() -> None:
    gamma = 2.0
    terms = []
    for r, c, t in PIXELS:
        log_p = log_softmax_at(LOGITS, r, c, t)
        terms.append(-((1 - math.exp(log_p)) ** gamma) * log_p)
    loss = build_loss("focal", num_classes=2, gamma=gamma)(LOGITS, TARGET)
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert float(loss) < float(build_loss("ce", num_classes=2)(LOGITS, TARGET))


# --- Dice ------------------------------------------------------------------------------


def test_dice_of_a_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1, 2], [2, 1, 0], [0, 0, 1]]])
    assert float(DiceLoss()(perfect_logits(target, 3), target)) == pytest.approx(0.0, abs=1e-5)
    dice_ce = build_loss("dice_ce", num_classes=3)
    assert float(dice_ce(perfect_logits(target, 3), target)) == pytest.approx(0.0, abs=1e-5)


def test_dice_of_a_fully_wrong_prediction_is_one() -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    assert float(DiceLoss()(perfect_logits(1 - target, 2), target)) == pytest.approx(1.0, abs=1e-5)


def test_dice_averages_over_present_classes() -> None:
    """One class in the batch, predicted wrong everywhere: 1, not smp's 1/C."""
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    wrong = perfect_logits(torch.full_like(target, 3), 4)
    assert float(DiceLoss()(wrong, target)) == pytest.approx(1.0, abs=1e-5)


def test_dice_matches_the_formula_and_ignores_pixels() -> None:
    target = TARGET.clone()
    target[0, 1, 1] = IGNORE
    p = LOGITS.softmax(dim=1)[0]
    counted = [(0, 0, 0), (0, 1, 1), (1, 0, 1)]
    losses = []
    for cls in (0, 1):
        inter = sum(float(p[cls, r, c]) for r, c, t in counted if t == cls)
        card = sum(float(p[cls, r, c]) for r, c, _ in counted) + sum(1 for *_, t in counted if t == cls)
        losses.append(1 - 2 * inter / card)
    assert float(DiceLoss()(LOGITS, target)) == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_combined_losses_are_sums() -> None:
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 6, 6)
    target = torch.randint(0, 3, (1, 6, 6))
    dice = float(DiceLoss()(logits, target))
    ce = float(build_loss("ce", num_classes=3)(logits, target))
    focal = float(build_loss("focal", num_classes=3)(logits, target))
    assert float(build_loss("dice_ce", num_classes=3)(logits, target)) == pytest.approx(dice + ce, rel=1e-6)
    assert float(build_loss("dice_focal", num_classes=3)(logits, target)) == pytest.approx(dice + focal, rel=1e-6)


# --- building ----------------------------------------------------------------------------


def test_unknown_loss_lists_names() -> None:
    with pytest.raises(ConfigError, match="dice_ce, ce, focal, dice_focal") as info:
        build_loss("dice", num_classes=2)
    assert "Did you mean" in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="3 values but there are 2 classes"):
        build_loss("ce", num_classes=2, class_weights=[1, 2, 3])
    with pytest.raises(ConfigError, match=">= 0"):
        build_loss("ce", num_classes=2, class_weights=[1, -2])
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        build_loss("ce", num_classes=1)
    with pytest.raises(ConfigError, match="ignore_index 1"):
        build_loss("ce", num_classes=3, ignore_index=1)
    with pytest.raises(ConfigError, match="gamma"):
        build_loss("focal", num_classes=2, gamma=-1)
    loss = build_loss("ce", num_classes=3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        loss(LOGITS, TARGET)


def test_weights_move_with_the_module() -> None:
    loss = build_loss("dice_focal", num_classes=2, class_weights=[1.0, 3.0])
    buffers = dict(loss.named_buffers())
    assert any(name.endswith("weight") for name in buffers)
    loss.to(torch.float64)  # buffers follow .to(); the loss still computes in float32
    assert math.isfinite(float(loss(LOGITS, TARGET)))


# --- class weights -------------------------------------------------------------------------


def test_class_weights_from_counts() -> None:
    assert class_weights_from_counts([900, 100, 0]) == pytest.approx([0.5, 1.5, 0.0])
    assert class_weights_from_counts([900, 100, 0], method="median") == pytest.approx([0.2, 1.8, 0.0])
    # mean 1 over present classes
    weights = class_weights_from_counts([5000, 300, 20, 0, 1200])
    assert sum(w for w in weights if w > 0) / 4 == pytest.approx(1.0)
    assert weights[3] == 0.0
    assert weights[2] > weights[1] > weights[4] > weights[0]


def test_class_weights_are_capped() -> None:
    weights = class_weights_from_counts([1_000_000, 1, 1_000_000], method="median", max_weight=2.0)
    assert max(weights) == 2.0  # 3.0 before the cap
    assert weights[0] == weights[2] < 0.01


def test_class_weights_errors() -> None:
    with pytest.raises(ConfigError, match="no class has any labelled pixel"):
        class_weights_from_counts([0, 0])
    with pytest.raises(ConfigError, match=">= 0"):
        class_weights_from_counts([10, -1])
    with pytest.raises(ConfigError, match="inverse_sqrt, median"):
        class_weights_from_counts([10, 1], method="inverse")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_weight"):
        class_weights_from_counts([10, 1], max_weight=0)
