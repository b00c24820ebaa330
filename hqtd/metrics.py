"""Segmentation metrics from one confusion matrix: per-class IoU, mIoU19/16/13, pixel accuracy.

The confusion matrix ``conf[gt, pred]`` counts pixels; pixels whose ground truth is ``IGNORE``
do not count. Matrices add across batches, processes (:meth:`ConfusionMatrix.all_reduce`) and
runs, so every mean is computed once, from the merged counts, never by averaging per-image scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

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


# ------------------------------------------------------------------------------------------------
# Boundary metrics and per-image counts (issue 14)
#
# Distances are chessboard (L-infinity) distances, computed for all classes at once: a pixel lies
# within distance r of a label change when the (2r+1) x (2r+1) window around it holds another
# value. The window's max and min come from separable sliding maxima (rows, then columns), so
# the cost grows with log r (:func:`sliding_max`) and does not depend on the number of classes. r
# iterations of a 3x3 erosion, as the Boundary IoU reference implementation erodes, reach exactly
# the pixels of this window.

#: Label written outside the image for Boundary IoU: the image border is a contour (a mask cut by
#: the border has a boundary there, as in the reference implementation's zero padding).
_OUTSIDE = -1.0


def boundary_width(height: int, width: int, ratio: float) -> int:
    """Boundary IoU's width d in pixels: ``ratio`` times the image diagonal, rounded, at least 1
    (Cheng et al., CVPR 2021: ``ratio`` = 0.02; 29 px at 1280x640, 4 px at 192x96)."""
    return max(1, round(ratio * math.hypot(height, width)))


def near_label_change(labels: torch.Tensor, radius: int, border: float | None) -> torch.Tensor:
    """Whether another label lies within chessboard distance ``radius`` of each pixel.

    Args:
        labels: (B,H,W) integer labels.
        radius: r >= 1 in pixels.
        border: the label assumed outside the image (a change at the border); None: the border
            is no change (the window is cut at the image).

    Returns:
        (B,H,W) bool.
    """
    own = labels.float()  # class ids are exact in float32
    outside = (-math.inf, -math.inf) if border is None else (border, -border)
    sides = (radius,) * 4
    # (B,2,H',W'): the labels and their negatives, so one window max gives the max and the min
    values = torch.stack(
        [F.pad(own, sides, value=outside[0]), F.pad(-own, sides, value=outside[1])], 1
    )
    values = sliding_max(sliding_max(values, 2 * radius + 1, -1), 2 * radius + 1, -2)
    return (values[:, 0] != own) | (-values[:, 1] != own)


def sliding_max(values: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Max over every run of ``length`` consecutive entries along ``dim`` (size n -> n - length
    + 1), by doubling: log2(length) elementwise maxima, whatever the length."""
    span, runs = 1, values  # runs[i] = max of values[i : i + span]
    while 2 * span <= length:
        size = runs.shape[dim] - span
        runs = torch.maximum(runs.narrow(dim, 0, size), runs.narrow(dim, span, size))
        span *= 2
    size = values.shape[dim] - length + 1  # two overlapping runs of span cover the window
    return torch.maximum(runs.narrow(dim, 0, size), runs.narrow(dim, length - span, size))


def per_image_class_counts(
    classes: torch.Tensor, region: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Pixels of ``region`` per image and class: (B,H,W) long ids, (B,H,W) bool -> (B,C) int64.

    Ids outside [0, num_classes) must lie outside ``region``."""
    batch = classes.shape[0]
    image = torch.arange(batch, device=classes.device).view(batch, 1, 1)
    # pixels outside the region go to one extra bin (cheaper than selecting the region's pixels)
    index = torch.where(region, image * num_classes + classes, batch * num_classes)
    counts = torch.bincount(index.reshape(-1), minlength=batch * num_classes + 1)
    return counts[:-1].view(batch, num_classes)


def intersection_union(
    pred: torch.Tensor,
    target: torch.Tensor,
    target_region: torch.Tensor,
    pred_region: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-class |G ∩ P| and |G ∪ P| where G (P) is the class's ground-truth
    (predicted) pixels inside ``target_region`` (``pred_region``).

    Args:
        pred, target: (B,H,W) long class ids.
        target_region, pred_region: (B,H,W) bool; both exclude ignored pixels.

    Returns:
        intersection and union, (B,C) int64 each.
    """
    both = target_region & pred_region & (pred == target)
    intersection = per_image_class_counts(target, both, num_classes)
    union = (
        per_image_class_counts(target, target_region, num_classes)
        + per_image_class_counts(pred, pred_region, num_classes)
        - intersection
    )
    return intersection, union


def boundary_counts(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, width: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary IoU counts (Cheng et al., CVPR 2021) per image and class, (B,C) int64 each.

    A class's boundary region is the pixels of its mask within distance ``width`` of the mask's
    contour, the image border included; Boundary IoU is the IoU of the ground-truth and the
    predicted boundary regions. Ignored pixels count in neither mask: the prediction is masked
    like the ground truth, so an ignored area bounds both masks alike and is never scored.

    Args:
        pred, target: (B,H,W) long ids; valid: (B,H,W) bool, the non-ignored pixels.
    """
    outside = torch.full_like(target, -1)
    gt = torch.where(valid, target, outside)
    predicted = torch.where(valid, pred, outside)
    both = near_label_change(torch.cat([gt, predicted]), width, _OUTSIDE)  # one pool for both
    gt_boundary, pred_boundary = both[: len(gt)] & valid, both[len(gt) :] & valid
    return intersection_union(pred, target, gt_boundary, pred_boundary, num_classes)


def trimap_counts(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, width: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU counts restricted to the trimap band: the non-ignored pixels within distance
    ``width`` of a ground-truth label change (ignored areas are labels here, so their edges are
    boundaries too; the image border is not). (B,H,W) inputs as :func:`boundary_counts`."""
    band = near_label_change(target, width, None) & valid
    return intersection_union(pred, target, band, band, num_classes)


class SegmentationCounts:
    """One accumulation for every evaluation metric: the confusion matrix and per-image,
    per-class intersection and union counts of mIoU and, when enabled, Boundary IoU and trimap
    IoU (:data:`count_names`). Summed over images, the counts give the dataset's metrics; kept per
    image, they give bootstrap intervals (:func:`bootstrap_mean_iou`).

    Args:
        boundary_ratio: Boundary IoU width as a fraction of the label image's diagonal
            (:func:`boundary_width`); None: no boundary metrics.
        trimap_widths: band widths in pixels of trimap IoU.
    """

    def __init__(
        self,
        num_classes: int,
        boundary_ratio: float | None = None,
        trimap_widths: Sequence[int] = (),
        ignore_index: int = IGNORE,
    ) -> None:
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.boundary_ratio = boundary_ratio
        self.trimap_widths = tuple(trimap_widths)
        self.boundary_px: int | None = None  # set by the first update (the label size)
        self._chunks: dict[str, list[torch.Tensor]] = {name: [] for name in self.count_names}

    @property
    def count_names(self) -> list[str]:
        """``<metric>_intersection`` and ``<metric>_union`` for each metric kept per image."""
        metrics = ["iou"]
        if self.boundary_ratio is not None:
            metrics.append("boundary_iou")
        metrics += [f"trimap{w}_iou" for w in self.trimap_widths]
        return [f"{m}_{part}" for m in metrics for part in ("intersection", "union")]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: (B,H,W) predicted and ground-truth ids."""
        self.confusion.update(pred, target)
        num_classes = self.confusion.num_classes
        pred, target = pred.long(), target.long()
        valid = target != self.confusion.ignore_index
        counts = {"iou": intersection_union(pred, target, valid, valid, num_classes)}
        if self.boundary_ratio is not None:
            width = boundary_width(*target.shape[-2:], self.boundary_ratio)
            if self.boundary_px not in (None, width):
                raise ValueError("Boundary IoU needs one label size for the whole dataset")
            self.boundary_px = width
            counts["boundary_iou"] = boundary_counts(pred, target, valid, width, num_classes)
        for w in self.trimap_widths:
            counts[f"trimap{w}_iou"] = trimap_counts(pred, target, valid, w, num_classes)
        for metric, (intersection, union) in counts.items():
            self._chunks[f"{metric}_intersection"].append(intersection)
            self._chunks[f"{metric}_union"].append(union)

    def per_image(self) -> dict[str, np.ndarray]:
        """:data:`count_names` -> (N_images, C) int64, images in update order."""
        num_classes = self.confusion.num_classes
        return {
            name: torch.cat(chunks).cpu().numpy()
            if chunks
            else np.zeros((0, num_classes), dtype=np.int64)
            for name, chunks in self._chunks.items()
        }

    def all_gather(self, dataset_size: int) -> SegmentationCounts:
        """Sum the confusion matrix over DDP ranks and put every rank's per-image rows in
        dataset order (rank r holds images r, r + world, ...); no-op outside torch.distributed."""
        self.confusion.all_reduce()
        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size()
        rows = -(-dataset_size // world)  # images per rank, the last ranks padded with zeros
        for name, chunks in self._chunks.items():
            local = torch.cat(chunks) if chunks else self.confusion.counts.new_zeros(0, 0)
            padded = self.confusion.counts.new_zeros(rows, self.confusion.num_classes)
            padded[: len(local)] = local
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded)
            ordered = torch.stack(gathered, 1).reshape(rows * world, -1)  # row j*world + r
            self._chunks[name] = [ordered[:dataset_size]]
        return self


def iou_from_counts(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-class IoU from (..., N, C) per-image counts summed over images: (..., C), NaN where
    the union is empty (a class absent from both ground truth and prediction)."""
    inter, total = intersection.sum(-2).astype(np.float64), union.sum(-2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inter / total, np.nan)


def _nanmean_last(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the defined values (NaN where none is)."""
    defined = np.isfinite(values)
    total = np.where(defined, values, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined.any(-1), total / defined.sum(-1), np.nan)


def resampled_iou(intersection: np.ndarray, union: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-class IoU of each resample: ``weights`` (D, N) counts how often each image is drawn;
    (N, C) counts -> (D, C), NaN where a class's resampled union is empty."""
    inter = weights @ intersection.astype(np.float64)
    total = weights @ union.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inter / total, np.nan)


def resampled_mean_iou(
    intersection: np.ndarray,
    union: np.ndarray,
    weights: np.ndarray,
    subset: Sequence[int] | None = None,
) -> np.ndarray:
    """Mean IoU of each resample over the classes defined in it (optionally a subset of class
    indices, e.g. the 13 of mIoU13): (D,)."""
    iou = resampled_iou(intersection, union, weights)
    return _nanmean_last(iou if subset is None else iou[:, list(subset)])


def image_resamples(num_images: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, num_images) bootstrap weights: how often each image is drawn, N draws each."""
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=draws)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap samples (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_mean_iou(
    intersection: np.ndarray,
    union: np.ndarray,
    draws: int,
    confidence: float,
    seed: int = 0,
    subset: Sequence[int] | None = None,
) -> tuple[float, float]:
    """Per-image bootstrap interval of the dataset's mean IoU (images resampled with
    replacement, counts summed, mean over defined classes; percentile method).

    Args:
        intersection, union: (N_images, C) counts of one run.
    """
    weights = image_resamples(len(intersection), draws, np.random.default_rng(seed))
    resampled = resampled_mean_iou(intersection, union, weights, subset)
    return percentile_interval(resampled, confidence)


def paired_delta_interval(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    draws: int,
    confidence: float,
    seed: int = 0,
    subset: Sequence[int] | None = None,
) -> tuple[float, float, float]:
    """Mean IoU difference B - A, paired by seed, with a bootstrap interval.

    Each draw resamples the images (the same draw for every run: all score the same val
    images) and the seeds (with replacement, keeping each seed's A and B together), and
    averages the per-seed differences. With one seed only the images vary.

    Args:
        pairs: per seed, (A intersection, A union, B intersection, B union), (N, C) each.
        subset: class indices of the mean (None: all).

    Returns:
        (delta, low, high) as fractions.
    """
    rng = np.random.default_rng(seed)
    weights = image_resamples(len(pairs[0][0]), draws, rng)
    per_seed = np.stack(  # (D, S) resampled differences
        [
            resampled_mean_iou(bi, bu, weights, subset)
            - resampled_mean_iou(ai, au, weights, subset)
            for ai, au, bi, bu in pairs
        ],
        axis=1,
    )
    once = np.ones((1, len(pairs[0][0])))  # every image once: the measured values
    point = float(
        np.mean(
            [
                resampled_mean_iou(bi, bu, once, subset) - resampled_mean_iou(ai, au, once, subset)
                for ai, au, bi, bu in pairs
            ]
        )
    )
    seeds = rng.integers(0, len(pairs), size=(draws, len(pairs)))
    resampled = np.take_along_axis(per_seed, seeds, axis=1).mean(1)
    return (point, *percentile_interval(resampled, confidence))
