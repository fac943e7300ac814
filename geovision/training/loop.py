"""The training loop: AdamW, warm-up + cosine schedule, mixed precision, early stopping, resume.

Checkpoints are safetensors files like bundles (no pickle anywhere): the model's
and the optimizer's tensors, with the epoch, the learning-rate step, the history
and the early-stopping state as JSON in the header. Everything random is seeded
from ``(seed, epoch)`` at the start of each epoch (sampling, augmentation,
dropout), so a run resumed from the checkpoint of epoch ``k`` continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

__all__ = ["EpochRecord", "FitResult", "fit", "load_checkpoint", "save_checkpoint", "segmentation_iou"]


@dataclass
class EpochRecord:
    """One epoch's figures (also a row of ``metrics.csv``)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    metric: float | None
    per_class: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0


@dataclass
class FitResult:
    """What :func:`fit` ends with: the best weights, by the validation metric."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metric: float | None
    history: list[EpochRecord]
    stopped_early: bool


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
    """Write a resumable checkpoint (safetensors; JSON state in the header), atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for name, value in values.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = t.detach().cpu().contiguous()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model and optimizer from :func:`save_checkpoint`; returns ``(state, best weights)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return json.loads(meta["state"]), best


# --------------------------------------------------------------------------- metrics


def segmentation_iou(confusion: np.ndarray, class_names: Sequence[str]) -> tuple[float | None, dict[str, float]]:
    """Per-class IoU from a ``(C, C)`` confusion matrix (rows truth, columns prediction).

    Returns the mean IoU over the non-background classes (class 0 is the background)
    that occur in truth or prediction, and the IoU per class name.
    """
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    per_class = {name: float(tp[i] / union[i]) for i, name in enumerate(class_names) if union[i] > 0}
    scored = [per_class[n] for n in class_names[1:] if n in per_class]
    return (float(np.mean(scored)) if scored else None), per_class


def detection_f1(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                 score_threshold: float = 0.5, iou: float = 0.5) -> tuple[float | None, dict[str, float]]:
    """F1 of greedy one-to-one matching at ``iou`` (class-aware) over a validation set."""
    from torchvision.ops import box_iou

    tp = fp = fn = 0
    for pred, target in zip(predictions, targets):
        keep = pred["scores"] >= score_threshold
        pb, pl = pred["boxes"][keep], pred["labels"][keep]
        tb, tl = target["boxes"], target["labels"]
        matched_t: set[int] = set()
        if len(pb) and len(tb):
            m = box_iou(pb, tb)
            m[pl[:, None] != tl[None, :]] = 0
            for i in torch.argsort(pred["scores"][keep], descending=True).tolist():
                j = int(torch.argmax(m[i]))
                if m[i, j] >= iou and j not in matched_t:
                    matched_t.add(j)
                    m[:, j] = 0
        tp += len(matched_t)
        fp += len(pb) - len(matched_t)
        fn += len(tb) - len(matched_t)
    if tp + fp + fn == 0:
        return None, {}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, {"precision": precision, "recall": recall}


# --------------------------------------------------------------------------- loop


def _collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: nn.Module,
    *,
    task: str,
    train: torch.utils.data.Dataset,
    val: torch.utils.data.Dataset | None,
    sample_epoch: Callable[[int], list[int]],
    class_names: Sequence[str],
    loss_fn: nn.Module | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    patience: int,
    checkpoint: Path,
    resume: bool,
    seed: int,
    progress: bool = False,
    num_workers: int = 0,
    on_epoch: Callable[[list[EpochRecord]], None] | None = None,
) -> FitResult:
    """Train ``model`` and keep the weights of its best validation epoch.

    Args:
        model: the model, on ``device``.
        task: ``"segmentation"`` (``loss_fn(logits, mask)``) or ``"detection"`` (torchvision
            detectors compute their own losses in train mode).
        train: the training dataset (:class:`~geovision.training.chips.ChipDataset`).
        val: the validation dataset, or ``None`` (then the last epoch is kept).
        sample_epoch: epoch -> indices of ``train`` to use in that epoch, in order.
        class_names: class names (0 is the background), for per-class metrics.
        loss_fn: the segmentation loss.
        epochs: maximum epochs.
        batch_size: chips per step.
        lr: peak learning rate (AdamW; linear warm-up over the first 5% of steps, then cosine).
        weight_decay: AdamW weight decay.
        device: where to train.
        autocast_dtype: mixed-precision dtype (bf16 on capable CPUs, fp16/bf16 on CUDA) or ``None``.
        patience: stop after this many epochs without a better validation metric.
        checkpoint: resumable checkpoint written after every epoch.
        resume: continue from ``checkpoint`` if it exists.
        seed: base seed.
        progress: show a progress bar per epoch with the loss.
        num_workers: DataLoader worker processes.
        on_epoch: called with the history after each epoch (report writing, the CLI's epoch line).
    """
    from geovision.progress import progress_bar

    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(sample_epoch(0)) / batch_size))
    total_steps = steps_per_epoch * epochs
    warmup = max(1, total_steps // 20)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype is torch.float16 and device.type == "cuda" else None

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": -1, "bad_epochs": 0,
                             "history": []}
    best_state: dict[str, torch.Tensor] | None = None
    if resume and checkpoint.exists():
        state, best_state = load_checkpoint(checkpoint, model, optimizer)
    history = [EpochRecord(**r) for r in state["history"]]
    collate = _collate_detection if task == "detection" else None

    for epoch in range(state["epoch"], epochs):
        if state["bad_epochs"] >= patience:
            break
        t0 = time.perf_counter()
        torch.manual_seed(seed * 1_000_003 + epoch)
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        subset = torch.utils.data.Subset(train, sample_epoch(epoch))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                             drop_last=len(subset) > batch_size,
                                             num_workers=num_workers, collate_fn=collate)
        model.train()
        losses = []
        bar = progress_bar(iterable=loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False,
                           dynamic_ncols=True)
        for x, y in bar:
            factor = _lr_factor(state["step"], total_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            loss = _train_step(model, task, loss_fn, x, y, device, autocast_dtype)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optimizer.step()
            state["step"] += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        per_class: dict[str, float]
        val_loss, metric, per_class = (None, None, {})
        if val is not None and len(cast(Sized, val)) > 0:  # map-style datasets have __len__
            val_loss, metric, per_class = evaluate(model, task, val, loss_fn, class_names, batch_size, device,
                                                   autocast_dtype, collate, num_workers)
        record = EpochRecord(epoch=epoch + 1, train_loss=float(np.mean(losses)) if losses else float("nan"),
                             val_loss=val_loss, metric=metric, per_class=per_class,
                             lr=optimizer.param_groups[0]["lr"], seconds=round(time.perf_counter() - t0, 2))
        history.append(record)
        better = metric is not None and (state["best_metric"] is None or metric > state["best_metric"])
        if better or val is None or (metric is None and state["best_metric"] is None):
            state["best_metric"], state["best_epoch"], state["bad_epochs"] = metric, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"] = [asdict(r) for r in history]
        save_checkpoint(checkpoint, model, optimizer, state, best_state)
        if on_epoch is not None:
            on_epoch(history)
    stopped = state["bad_epochs"] >= patience and state["epoch"] < epochs
    return FitResult(best_state or {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                     state["best_epoch"], state["best_metric"], history, stopped)


def _train_step(model: nn.Module, task: str, loss_fn: nn.Module | None, x: Any, y: Any, device: torch.device,
                autocast_dtype: torch.dtype | None) -> torch.Tensor:
    ctx = _autocast(device, autocast_dtype)
    if task == "segmentation":
        assert loss_fn is not None  # segmentation always has a loss (workflows/train.py builds one)
        x, y = x.to(device), y.to(device)
        with ctx:
            logits = model(x)
        return loss_fn(logits.float(), y)
    images = [i.to(device) for i in x]
    targets = [{k: v.to(device) for k, v in t.items()} for t in y]
    with ctx:
        losses = model(images, targets)
    return sum(v.float() for v in losses.values())


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """Autocast at ``dtype``, or nothing for float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, task: str, dataset: torch.utils.data.Dataset, loss_fn: nn.Module | None,
             class_names: Sequence[str], batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None,
             collate: Callable[[list[Any]], Any] | None = None,
             num_workers: int = 0) -> tuple[float | None, float | None, dict[str, float]]:
    """Validation loss (segmentation), the metric (mean foreground IoU, or detection F1@0.5) and per-class figures."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                                         num_workers=num_workers)
    if task == "segmentation":
        assert loss_fn is not None  # segmentation always has a loss (workflows/train.py builds one)
        n = len(class_names)
        confusion = np.zeros((n, n), dtype=np.int64)
        losses = []
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with _autocast(device, autocast_dtype):
                logits = model(x)
            losses.append(float(loss_fn(logits.float(), y)))
            pred = logits.argmax(1)
            keep = y != 255
            confusion += np.bincount((y[keep] * n + pred[keep]).cpu().numpy(), minlength=n * n).reshape(n, n)
        metric, per_class = segmentation_iou(confusion, class_names)
        return float(np.mean(losses)), metric, per_class
    predictions, targets = [], []
    for images, tgts in loader:
        with _autocast(device, autocast_dtype):
            out = model([i.to(device) for i in images])
        predictions += [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in out]
        targets += tgts
    metric, extra = detection_f1(predictions, targets)
    return None, metric, extra
