"""Segmentation metrics from one confusion matrix: per-class IoU, mIoU19/16/13, pixel accuracy.

The confusion matrix ``conf[gt, pred]`` counts pixels; pixels whose ground truth is ``IGNORE``
do not count. Matrices add across batches, processes (:meth:`ConfusionMatrix.all_reduce`) and
runs, so every mean is computed once, from the merged counts, never by averaging per-image scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from hqtd.data.labels import IGNORE, SUBSET_13_OF_16


def confusion_counts(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Confusion counts (``num_classes`` x ``num_classes``, int64, on the input's device).

    Args:
        pred: predicted class ids, any shape.
        target: ground-truth class ids, same shape; ``ignore_index`` pixels are skipped.
    """
    pred_t = torch.as_tensor(pred)
    target_t = torch.as_tensor(target, device=pred_t.device)
    if pred_t.shape != target_t.shape:
        raise ValueError(
            f"prediction {tuple(pred_t.shape)} and label {tuple(target_t.shape)} differ"
        )
    target_t = target_t.reshape(-1).long()
    pred_t = pred_t.reshape(-1).long()
    valid = target_t != ignore_index
    if ((target_t[valid] < 0) | (target_t[valid] >= num_classes)).any():
        raise ValueError(f"label ids must lie in [0, {num_classes}) or be {ignore_index}")
    index = target_t[valid] * num_classes + pred_t[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both ground truth and prediction."""
    conf = np.asarray(torch.as_tensor(conf).cpu(), dtype=np.float64)
    true_positive = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(conf: np.ndarray | torch.Tensor, subset: Sequence[int] | None = None) -> float:
    """Mean of the defined per-class IoUs, optionally over a subset of class indices."""
    iou = iou_per_class(conf)
    if subset is not None:
        iou = iou[list(subset)]
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray | torch.Tensor) -> float:
    """Fraction of non-ignored pixels predicted correctly."""
    conf = np.asarray(torch.as_tensor(conf).cpu(), dtype=np.float64)
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else float("nan")


def summary(conf: np.ndarray | torch.Tensor) -> dict[str, float]:
    """The headline numbers of a 19- or 16-class matrix: mIoU (and mIoU16 / mIoU13), pixel accuracy.

    All values are fractions in [0, 1].
    """
    num_classes = torch.as_tensor(conf).shape[0]
    result = {"mIoU": mean_iou(conf), "pixel_accuracy": pixel_accuracy(conf)}
    if num_classes == 19:
        result["mIoU19"] = result["mIoU"]
    elif num_classes == 16:
        result["mIoU16"] = result["mIoU"]
        result["mIoU13"] = mean_iou(conf, SUBSET_13_OF_16)
    return result


class ConfusionMatrix:
    """Accumulates confusion counts over batches, on the device of the first update."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts: torch.Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch of predictions and labels (same shape)."""
        batch = confusion_counts(pred, target, self.num_classes, self.ignore_index)
        self.counts = self.counts.to(batch.device) + batch

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (e.g. another shard of the data)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all DDP ranks (no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        return self

    def numpy(self) -> np.ndarray:
        return self.counts.cpu().numpy()

    def iou(self) -> np.ndarray:
        return iou_per_class(self.counts)

    def summary(self) -> dict[str, float]:
        return summary(self.counts)
