"""Evaluation on target val (METHOD.md §6): the paper and strict protocols, ``metrics.json``.

:func:`evaluate_model` is shared by the periodic validation of :mod:`hqtd.train` and by the
``hqtd evaluate`` command (:func:`evaluate_command`). Every number comes from one confusion matrix
summed over images (and over DDP ranks), never from averaged per-image scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from hqtd.config import (
    Config,
    ModelConfig,
    Precision,
    ScoringConfig,
    checked_scoring,
    evaluation_config,
    split_overrides,
)
from hqtd.data.datasets import SegmentationDataset, image_resample
from hqtd.data.labels import class_names
from hqtd.determinism import cpu_kernels
from hqtd.errors import HqtdError
from hqtd.io import atomic_path, write_json
from hqtd.metrics import SegmentationCounts, bootstrap_mean_iou, iou_from_counts
from hqtd.models.checkpoints import (
    CheckpointWeights,
    apply_weights,
    checkpoint_iteration,
    read_weights,
)
from hqtd.models.deeplabv2 import build_model
from hqtd.provenance import combined_hash, environment, manifest_hashes
from hqtd.runtime import autocast, images_to_float, resolve_device

#: Where ``hqtd evaluate checkpoint=FILE benchmark=B`` writes without a run (:func:`output_dir`).
EVALUATIONS_DIR = Path("results/evaluations")
#: The authors' network, for scoring their checkpoints: align_corners (§8.1), 2-branch ASPP (§2).
AUTHORS_MODEL = {"align_corners": True, "aspp_branches": 2}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    input_size: tuple[int, int] | None = None,
    device: torch.device | None = None,
    precision: Precision = Precision.fp32,
    channels_last: bool = False,
    num_workers: int = 0,
    scoring: ScoringConfig | None = None,
) -> SegmentationCounts:
    """Confusion matrix and per-image IoU counts of ``model``'s main head on ``dataset`` (single
    scale, one image at a time); with ``scoring``, Boundary IoU and trimap IoU counts too, from
    the same predictions (:class:`hqtd.metrics.SegmentationCounts`).

    The image goes into the network at ``input_size`` (W, H; bilinear, antialiased, when it is not
    already that size) and the main logits are upsampled bilinearly to the label's size before the
    argmax. Under torch.distributed each rank takes every world_size-th image; the matrices are
    summed over ranks and the per-image counts gathered in dataset order.

    Resizes against the authors' evaluation (``datasets/cityscapes_Dataset.py`` val transform,
    ``main.py`` validate, ``utils/eval.py``): they resize image and label in the dataset (PIL
    bicubic and nearest) to the network's input size and take the argmax of the network's output
    at that size, with no resize here. The paper protocol does the same: its dataset already holds
    ``input_size`` images and labels, so neither resize below runs; the model's own upsampling
    follows ``model.align_corners`` (METHOD.md §8.1) and the dataset's image resize is bilinear
    (:func:`hqtd.data.formats.png.resize_image`, the authors' bicubic is
    ``method.augmentation``'s, §8.6). The strict protocol (full-resolution labels) has no
    counterpart in their code; its resizes here are hqtd's half-pixel convention.

    Args:
        model: returns a ``SegOutput`` whose ``main`` is (B,C,h,w) logits at the input size.
        dataset: items ``dict(image=uint8 (3,H,W), label=int64 (H',W'))``.
        num_classes: size of the label space (19 or 16).
        input_size: network input (W, H); None keeps the dataset's image size.
        device: where the model is (default CPU).
        scoring: the boundary metrics' widths; None (the periodic validation): mIoU only.
    """
    device = device or torch.device("cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world))
    # Its own generator: starting the loader must not draw from (and shift) the global RNG.
    loader = DataLoader(shard, batch_size=1, num_workers=num_workers, generator=torch.Generator())
    was_training = model.training
    model.eval()
    counts = SegmentationCounts(
        num_classes,
        boundary_ratio=None if scoring is None else scoring.boundary_dilation_ratio,
        trimap_widths=() if scoring is None else scoring.trimap_widths,
    )
    # Counts stay on the device for all_reduce and all_gather under NCCL.
    counts.confusion.counts = counts.confusion.counts.to(device)
    for batch in loader:
        label = batch["label"].to(device)  # (1,H',W')
        prediction = predict_classes(
            model, batch["image"], label.shape[-2:], input_size, device, precision, channels_last
        )
        counts.update(prediction, label)
    model.train(was_training)
    return counts.all_gather(len(dataset))


def predict_classes(
    model: nn.Module,
    images: torch.Tensor,
    out_size: tuple[int, int],
    input_size: tuple[int, int] | None,
    device: torch.device,
    precision: Precision = Precision.fp32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Single-scale class map of the main head (METHOD.md §6): uint8 (1,3,H,W) RGB -> int64
    (1,h,w) at ``out_size`` (h, w); the image enters the network at ``input_size`` (W, H;
    bilinear, antialiased) and the logits are upsampled bilinearly to ``out_size``."""
    image = images_to_float(images, device, channels_last)  # (1,3,H,W)
    if input_size is not None and tuple(image.shape[-1:-3:-1]) != tuple(input_size):
        width, height = input_size
        image = F.interpolate(image, (height, width), mode="bilinear", antialias=True)
    with autocast(device, precision):
        logits = model(image, aux=False).main  # (1,C,H,W); aux is never scored
    if logits.shape[-2:] != tuple(out_size):  # strict protocol: full-resolution labels
        logits = F.interpolate(logits.float(), tuple(out_size), mode="bilinear")
    return logits.argmax(1)


def _percent(value: float) -> float | None:
    """A fraction as a percentage, None (JSON null) where undefined."""
    return None if math.isnan(value) else 100.0 * value


def score_summary(counts: SegmentationCounts) -> dict:
    """Per-class IoU and the headline means of ``counts`` in percent (null for undefined classes).

    Keys: ``iou`` (list aligned with the class names), ``mIoU``, ``mIoU19`` or ``mIoU16`` and
    ``mIoU13`` as they apply, ``pixel_accuracy``.
    """
    conf = counts.confusion
    result = {"iou": [_percent(float(v)) for v in conf.iou()]}
    result.update({key: _percent(value) for key, value in conf.summary().items()})
    return result


def boundary_summary(counts: SegmentationCounts) -> dict:
    """Boundary IoU and trimap IoU of ``counts`` in percent (issue 14), for ``metrics.json``.

    Keys: ``boundary_px`` (the width d used), ``boundary_iou`` (per class, null where
    undefined), ``mBIoU`` and ``trimap_mIoU`` (band width in px -> mean IoU in the band).
    """
    arrays = counts.per_image()

    def per_class(metric: str) -> np.ndarray:
        return iou_from_counts(arrays[f"{metric}_intersection"], arrays[f"{metric}_union"])

    def mean(values: np.ndarray) -> float | None:
        return _percent(float(np.nanmean(values))) if np.isfinite(values).any() else None

    boundary = per_class("boundary_iou")
    return {
        "boundary_px": counts.boundary_px,
        "boundary_iou": [_percent(float(v)) for v in boundary],
        "mBIoU": mean(boundary),
        "trimap_mIoU": {str(w): mean(per_class(f"trimap{w}_iou")) for w in counts.trimap_widths},
    }


def bootstrap_summary(counts: SegmentationCounts, scoring: ScoringConfig) -> dict:
    """Per-image bootstrap intervals (percent) of mIoU, mBIoU and each trimap mIoU of one run,
    with the settings that made them (``draws``, ``confidence``, ``seed``)."""
    arrays = counts.per_image()
    metrics = {"mIoU": "iou", "mBIoU": "boundary_iou"}
    metrics |= {f"trimap{w}_mIoU": f"trimap{w}_iou" for w in counts.trimap_widths}
    result: dict = {
        "draws": scoring.bootstrap_draws,
        "confidence": scoring.confidence,
        "seed": scoring.bootstrap_seed,
    }
    for name, metric in metrics.items():
        interval = bootstrap_mean_iou(
            arrays[f"{metric}_intersection"],
            arrays[f"{metric}_union"],
            scoring.bootstrap_draws,
            scoring.confidence,
            scoring.bootstrap_seed,
        )
        result[name] = [_percent(v) for v in interval]
    return result


def selection_score(scores: dict) -> float:
    """The number the best checkpoint is chosen by: mIoU13 on 16-class benchmarks (as the authors
    select SYNTHIA checkpoints), otherwise mIoU; -inf when undefined."""
    value = scores.get("mIoU13", scores["mIoU"])
    return -math.inf if value is None else value


def authors_conventions(model: ModelConfig, given: Collection[str]) -> tuple[ModelConfig, str]:
    """The network the authors' checkpoints were trained and scored with (METHOD.md §8.1, §2
    quirk): bilinear ``align_corners=True`` upsampling and 2 ASPP branches, each unless the user
    set that key on the command line (``given``).

    Returns:
        The model config and the ``key=value`` list applied ("" when the user set both).
    """
    applied = {k: v for k, v in AUTHORS_MODEL.items() if f"model.{k}" not in given}
    described = ", ".join(f"model.{k}={str(v).lower()}" for k, v in applied.items())
    return dataclasses.replace(model, **applied), described


def evaluate_command(overrides: list[str]) -> None:
    """``hqtd evaluate run_dir=... [checkpoint=FILE] [protocol=paper|strict] [weights=...]
    [out=DIR]``, or ``hqtd evaluate checkpoint=FILE benchmark=NAME [method=...] [out=DIR]``
    without a run (METHOD.md §6). :func:`output_dir` says where the files go.

    Evaluates the protocol's checkpoint (``best``/``last`` of the run, or ``checkpoint=FILE``: any
    file :func:`read_weights` accepts) on target val and writes
    ``metrics.json`` and ``confusion.npy`` (int64 CxC, conf[gt, pred]).
    ``weights`` picks the file's weights (default ``auto``: the EMA, an authors' file's
    ``shadow``, as their evaluation, §8.2); ``metrics.json`` records the request and the entry
    scored. A file in the authors' save format is scored with their network conventions
    (:func:`authors_conventions`).
    ``metrics.json`` also records where it was made: ``provenance`` (:mod:`hqtd.provenance`: the
    git revision, versions, device, threads, determinism settings and ``data``, one hash over the
    ``data_manifests`` of the benchmark, which are listed with their own hashes).
    ``run_finished`` records whether the run had written its ``done`` marker: an unfinished run
    (still training, or killed) is scored as it stands, with a line saying so.
    """
    config = evaluation_config(overrides)
    out = output_dir(config, split_overrides(overrides)[1].get("out"))
    model, path, loaded, device = scoring_model(config, overrides)
    checkpoint_name = config.checkpoint or config.protocol.checkpoint.value

    num_classes = config.benchmark.num_classes
    target_size = tuple(config.benchmark.target_size)
    resize_labels = config.protocol.resize_labels
    val = SegmentationDataset(
        config.benchmark.target_val.root,
        config.benchmark.target_val.split,
        size=target_size if resize_labels else None,
        num_classes=num_classes,
        train=False,
        image_resample=image_resample(config.method.augmentation),
    )
    scoring = checked_scoring(config.scoring)
    with cpu_kernels(config.train.determinism, config.train.threads):
        counts = evaluate_model(
            model,
            val,
            num_classes,
            input_size=target_size,
            device=device,
            precision=config.train.precision,
            channels_last=config.train.channels_last,
            num_workers=config.train.num_workers,
            scoring=scoring,
        )
    metrics = {
        "benchmark": config.benchmark.name,
        "method": config.method.name,
        "seed": config.seed,
        "protocol": {
            "name": config.protocol.name,
            "label_size": "{}x{}".format(*target_size) if resize_labels else "full",
            "checkpoint": checkpoint_name,
        },
        "iteration": checkpoint_iteration(path),
        # None: a checkpoint scored without its run folder
        "run_finished": (Path(config.run_dir) / "done").exists() if config.run_dir else None,
        "weights": {"requested": config.weights.value, "entry": loaded.entry},
        "num_classes": num_classes,
        "class_names": list(class_names(num_classes)),
        **score_summary(counts),
        **boundary_summary(counts),
        "intervals": bootstrap_summary(counts, scoring),
    }
    manifests = manifest_hashes(config)
    provenance = environment(device, config.train.determinism)
    metrics |= {
        "git_revision": provenance["git_revision"],
        "provenance": provenance | {"data": combined_hash(manifests)},
        "data_manifests": manifests,
    }
    if metrics["run_finished"] is False:
        print(
            f"{config.run_dir}: unfinished run (no done marker), scored at iteration "
            f"{metrics['iteration']}; recorded as run_finished: false in metrics.json"
        )
    with atomic_path(out / "confusion.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, counts.confusion.numpy().astype(np.int64))
    with atomic_path(out / "per_image.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **counts.per_image())
    if reproduces_record(out / "metrics.json", metrics):
        os.utime(out / "metrics.json")  # newer than its inputs, for Snakemake, bytes unchanged
        print(
            f"{out / 'metrics.json'}: mIoU {metrics['mIoU']} (percent), the recorded scores; kept"
        )
        return
    write_json(out / "metrics.json", metrics)
    print(f"{out / 'metrics.json'}: mIoU {metrics['mIoU']} (percent)")


#: Where a result was made, not what it is: :func:`reproduces_record` ignores them.
PROVENANCE_KEYS = ("git_revision", "provenance")


def reproduces_record(path: Path, metrics: dict) -> bool:
    """Whether ``path`` already records exactly these scores, made elsewhere or at another
    revision (everything equal but :data:`PROVENANCE_KEYS`). Such a file is kept: a rerun on
    another machine (portable mode, a fresh clone's ``make demo``) then leaves committed results
    byte for byte as they are, and their provenance keeps saying where they were first made."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False

    def scores(record: dict) -> dict:
        return {k: v for k, v in record.items() if k not in PROVENANCE_KEYS}

    # Through JSON, as written: tuples become lists and floats round-trip exactly.
    return scores(recorded) == scores(json.loads(json.dumps(metrics)))


def scoring_model(
    config: Config, overrides: list[str]
) -> tuple[nn.Module, Path, CheckpointWeights, torch.device]:
    """The network of ``hqtd evaluate``/``hqtd predict`` in eval mode on its device, with the
    weights of ``checkpoint=FILE`` or the run's protocol checkpoint (``best``/``last``); a file in
    the authors' save format gets their network conventions (:func:`authors_conventions`)
    unless ``overrides`` set them.

    Returns:
        The model, the checkpoint file, the weights read and the device.
    """
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
    else:
        path = Path(config.run_dir) / "checkpoints" / f"{config.protocol.checkpoint.value}.pt"
    if not path.is_file():
        raise HqtdError(f"{path}: checkpoint not found")
    loaded = read_weights(path, config.weights)
    model_config = config.model
    if loaded.authors_format:
        model_config, applied = authors_conventions(model_config, split_overrides(overrides)[0])
        if applied:
            print(f"{path}: authors' checkpoint, scored with their network conventions {applied}")
    device = resolve_device(config.train.device, config.train.threads)
    model = build_model(dataclasses.replace(model_config, init=None))  # all weights from the file
    apply_weights(model, loaded)
    model.to(device).eval()
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, path, loaded, device


def output_dir(config: Config, out: str | None) -> Path:
    """Where ``hqtd evaluate`` writes: ``out=DIR`` when given; a run's own checkpoint under
    ``<run_dir>/eval/<protocol>``; ``checkpoint=FILE`` never over a run's results, but under
    ``<run_dir>/eval/<protocol>/checkpoint-<stem>``, or without a run under
    ``results/evaluations/<benchmark>/<stem>/<protocol>``."""
    if out:
        return Path(out)
    protocol = config.protocol.name
    if config.checkpoint is None:
        return Path(config.run_dir) / "eval" / protocol
    stem = Path(config.checkpoint).stem
    if config.run_dir:
        return Path(config.run_dir) / "eval" / protocol / f"checkpoint-{stem}"
    return EVALUATIONS_DIR / config.benchmark.name / stem / protocol
