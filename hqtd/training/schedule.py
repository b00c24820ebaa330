"""The schedule of a training run: how many iterations, the authors' epoch, SGD and its poly
learning rate (METHOD.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from hqtd.config import Config, Stage
from hqtd.errors import HqtdError


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay ``base_lr * (1 - iteration / total) ** power`` (METHOD.md §2), iteration >= 0."""
    return base_lr * (1.0 - iteration / total) ** power


def apply_poly_lr(
    optimizer: torch.optim.Optimizer,
    base_lrs: list[float],
    iteration: int,
    total: int,
    power: float,
) -> float:
    """Set each group's learning rate to its base rate times the poly factor of ``iteration``.

    Returns:
        the first group's (the backbone's) learning rate, the one the train log records.
    """
    scale = poly_lr(1.0, iteration, total, power)
    for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base_lr * scale
    return base_lrs[0] * scale


def build_optimizer(model: nn.Module, config: Config) -> tuple[torch.optim.SGD, list[float]]:
    """SGD with momentum and weight decay over the model's groups (heads at ``head_lr_mult``·lr).

    Returns:
        the optimiser and each group's base learning rate (the poly schedule scales these).
    """
    tc = config.train
    groups = model.param_groups(tc.lr, tc.head_lr_mult)
    optimizer = torch.optim.SGD(
        groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
    )
    return optimizer, [group["lr"] for group in groups]


def epoch_length(config: Config, dataset_sizes: list[int], world_size: int) -> int:
    """Iterations per epoch as the authors count them (METHOD.md §8.5): they zip one pass of each
    training loader (``drop_last``), so an epoch is ``min(len(dataset) // batch)`` over the stage's
    datasets, the batch being the global one (``train.batch_size`` per rank and domain).

    Raises:
        HqtdError: a dataset smaller than one batch (its epoch would be empty).
    """
    iterations = min(dataset_sizes) // (config.train.batch_size * world_size)
    if iterations == 0:
        raise HqtdError(
            f"train.eval_per_epoch / method.quirk_ema_bn_per_epoch: a training set of "
            f"{min(dataset_sizes)} images holds no full batch of {config.train.batch_size} x "
            f"{world_size} process(es); expected at least one"
        )
    return iterations


def total_iterations(config: Config) -> int:
    if config.method.stage is Stage.adapt:
        return config.train.iterations
    return config.train.source_only_iterations
