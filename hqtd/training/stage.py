"""What a training stage (METHOD.md §3-4) trains on and starts from: its datasets, the fixed
diagnostic images, and the network with its EMA copy before the first iteration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hqtd.adapt.ema import ModelEMA
from hqtd.config import Config, DatasetConfig, Stage
from hqtd.data.datasets import SegmentationDataset, image_resample
from hqtd.errors import HqtdError
from hqtd.models.checkpoints import load_weights
from hqtd.models.deeplabv2 import build_model


def check_stage(config: Config) -> None:
    """Refuse stage/benchmark combinations that cannot run, before anything is written."""
    stage = config.method.stage
    if stage is Stage.oracle and not config.benchmark.mini:
        raise HqtdError(
            f"method={config.method.name}: the oracle trains on target labels and runs only on "
            f"mini benchmarks (benchmark={config.benchmark.name} has benchmark.mini=false)"
        )
    if stage is Stage.adapt:
        init = config.train.init_checkpoint
        if init is None:
            raise HqtdError(
                f"method={config.method.name}: adaptation starts from a source-only checkpoint; "
                "set train.init_checkpoint=FILE"
            )
        if not Path(init).is_file():
            raise HqtdError(f"train.init_checkpoint={init}: file not found")


def initial_model(config: Config) -> tuple[nn.Module, ModelEMA]:
    """The network before training and its EMA copy.

    The network is seeded from config.seed (identical on every rank), then given the source-only
    checkpoint (adaptation) or the ImageNet init (source-only / oracle) if any. The EMA copies it;
    with ``method.quirk_ema_from_init`` (METHOD.md §8.5) it copies the freshly built network before
    the source-only checkpoint is loaded, as the authors do: model.init's weights, or the random
    init when there is none. ``train.init_weights`` picks the checkpoint's weights (METHOD.md
    §8.2); ``auto`` is an hqtd file's EMA and an authors' file's ``state_dict`` (the student,
    which their code starts from).
    """
    method = config.method

    def ema_of(model: nn.Module) -> ModelEMA:
        return ModelEMA(model, method.ema_decay, not method.quirk_ema_bn_per_epoch)

    torch.manual_seed(config.seed)
    if method.stage is not Stage.adapt:
        model = build_model(config.model)  # loads model.init when set
        return model, ema_of(model)
    if method.quirk_ema_from_init:
        model = build_model(config.model)
        ema = ema_of(model)
    else:
        model = build_model(dataclasses.replace(config.model, init=None))  # overwritten right away
    load_weights(
        model, config.train.init_checkpoint, weights=config.train.init_weights, for_training=True
    )
    return model, ema if method.quirk_ema_from_init else ema_of(model)


class StageData(NamedTuple):
    """The data one run reads, opened (manifests checked) before its run directory changes."""

    labelled: SegmentationDataset  # source; target for the oracle
    target: SegmentationDataset | None  # the unlabelled target set (adaptation only)
    val: SegmentationDataset  # target val, paper protocol
    diagnostic: tuple[torch.Tensor, torch.Tensor] | None  # :func:`diagnostic_images`, rank 0


def stage_data(config: Config, is_main: bool) -> StageData:
    """The training sets of the stage, target val and (on rank 0, ``is_main``) the diagnostic
    images."""
    labelled, target = stage_datasets(config)
    return StageData(
        labelled, target, target_val(config), diagnostic_images(config) if is_main else None
    )


def target_val(config: Config) -> SegmentationDataset:
    """Target val at ``benchmark.target_size``, labels resized too (the paper protocol)."""
    return SegmentationDataset(
        config.benchmark.target_val.root,
        config.benchmark.target_val.split,
        tuple(config.benchmark.target_size),
        config.benchmark.num_classes,
        train=False,
        image_resample=image_resample(config.method.augmentation),
    )


def stage_datasets(config: Config) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The labelled training set of the stage and, for adaptation, the unlabelled target set."""
    bench = config.benchmark
    resample = image_resample(config.method.augmentation)

    def dataset(spec: DatasetConfig, size: tuple[int, int]) -> SegmentationDataset:
        return SegmentationDataset(
            spec.root,
            spec.split,
            tuple(size),
            bench.num_classes,
            train=True,
            image_resample=resample,
        )

    if config.method.stage is Stage.source_only:
        return dataset(bench.source, bench.source_size), None
    if config.method.stage is Stage.oracle:
        return dataset(bench.target, bench.target_size), None
    return dataset(bench.source, bench.source_size), dataset(bench.target, bench.target_size)


def diagnostic_images(config: Config) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed labelled target-train images of ``train.diagnostics`` (None when off or not an
    adaptation run): ``train.diagnostics`` evenly spaced images of the target split at
    ``benchmark.target_size``, without augmentation; their labels are for scoring only.

    Returns:
        uint8 images (N, 3, H, W) and int64 labels (N, H, W) on the CPU.
    """
    count = config.train.diagnostics
    if count == 0 or config.method.stage is not Stage.adapt:
        return None
    bench = config.benchmark
    target = SegmentationDataset(
        bench.target.root,
        bench.target.split,
        tuple(bench.target_size),
        bench.num_classes,
        train=False,  # no flip or blur: no global random draw, the same images every time
        image_resample=image_resample(config.method.augmentation),
    )
    items = [target[i] for i in evenly_spaced(len(target), count)]
    return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])


def evenly_spaced(size: int, count: int) -> list[int]:
    """``min(count, size)`` distinct indices spread evenly over ``range(size)``, first and last
    included."""
    return sorted({int(i) for i in np.linspace(0, size - 1, min(count, size))})
