"""Evaluation on target val (METHOD.md §6): the paper and strict protocols, ``metrics.json``.

:func:`evaluate_model` is shared by the periodic validation of :mod:`hqtd.train` and by the
``hqtd evaluate`` command (:func:`evaluate_command`). Every number comes from one confusion matrix
summed over images (and over DDP ranks), never from averaged per-image scores.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from hqtd.config import PARAMS_DIR, Config, Precision, from_yaml
from hqtd.data.datasets import SegmentationDataset, image_resample
from hqtd.data.labels import class_names
from hqtd.errors import HqtdError
from hqtd.io import atomic_path, write_json
from hqtd.metrics import ConfusionMatrix
from hqtd.models.checkpoints import load_weights
from hqtd.models.deeplabv2 import build_model


def resolve_device(name: str, threads: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error.

    ``threads`` > 0 also fixes torch's intra-op threads: CPU reductions split their work by
    thread count, so the same run on another core count would differ in the last bits.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HqtdError(f"train.device={name}: no CUDA device is available (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HqtdError(f"train.device={name}: expected auto, cpu or cuda") from None


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The autocast context of ``train.precision`` (disabled for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision is Precision.bf16)


def images_to_float(
    images: torch.Tensor, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """uint8 (B,3,H,W) RGB -> float (B,3,H,W) in [0, 1] on ``device`` (the model's input)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True).float().div_(255.0)
    return images.contiguous(memory_format=memory_format)


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
) -> ConfusionMatrix:
    """Confusion matrix of ``model``'s main head on ``dataset`` (single scale, one image at a time).

    The image goes into the network at ``input_size`` (W, H; bilinear, antialiased, when it is not
    already that size) and the main logits are upsampled bilinearly to the label's size before the
    argmax. Under torch.distributed each rank takes every world_size-th image and the matrices are
    summed over ranks.

    Args:
        model: returns a ``SegOutput`` whose ``main`` is (B,C,h,w) logits at the input size.
        dataset: items ``dict(image=uint8 (3,H,W), label=int64 (H',W'))``.
        num_classes: size of the label space (19 or 16).
        input_size: network input (W, H); None keeps the dataset's image size.
        device: where the model is (default CPU).
    """
    device = device or torch.device("cpu")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world))
    # Its own generator: starting the loader must not draw from (and shift) the global RNG.
    loader = DataLoader(shard, batch_size=1, num_workers=num_workers, generator=torch.Generator())
    was_training = model.training
    model.eval()
    conf = ConfusionMatrix(num_classes)
    conf.counts = conf.counts.to(device)  # stays on the device for all_reduce under NCCL
    for batch in loader:
        image = images_to_float(batch["image"], device, channels_last)  # (1,3,H,W)
        if input_size is not None and tuple(image.shape[-1:-3:-1]) != tuple(input_size):
            width, height = input_size
            image = F.interpolate(image, (height, width), mode="bilinear", antialias=True)
        label = batch["label"].to(device)  # (1,H',W')
        with autocast(device, precision):
            logits = model(image, aux=False).main  # (1,C,H,W); aux is never scored
        if logits.shape[-2:] != label.shape[-2:]:  # strict protocol: full-resolution labels
            logits = F.interpolate(logits.float(), label.shape[-2:], mode="bilinear")
        conf.update(logits.argmax(1), label)
    model.train(was_training)
    return conf.all_reduce()


def _percent(value: float) -> float | None:
    """A fraction as a percentage, None (JSON null) where undefined."""
    return None if math.isnan(value) else 100.0 * value


def score_summary(conf: ConfusionMatrix) -> dict:
    """Per-class IoU and the headline means of ``conf`` in percent (null for undefined classes).

    Keys: ``iou`` (list aligned with the class names), ``mIoU``, ``mIoU19`` or ``mIoU16`` and
    ``mIoU13`` as they apply, ``pixel_accuracy``.
    """
    result = {"iou": [_percent(float(v)) for v in conf.iou()]}
    result.update({key: _percent(value) for key, value in conf.summary().items()})
    return result


def selection_score(scores: dict) -> float:
    """The number the best checkpoint is chosen by: mIoU13 on 16-class benchmarks (as the authors
    select SYNTHIA checkpoints), otherwise mIoU; -inf when undefined."""
    value = scores.get("mIoU13", scores["mIoU"])
    return -math.inf if value is None else value


def git_revision() -> str:
    """The code's git commit, ``unknown`` outside a git checkout or without git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def evaluation_config(overrides: list[str]) -> Config:
    """The run's saved ``config.yaml`` with the command's overrides applied.

    ``run_dir=DIR`` is required; ``protocol=NAME`` selects ``params/protocol/NAME.yaml``; any other
    ``key=value`` (``checkpoint=FILE``, ``train.device=cpu``, ...) is merged into the typed schema.
    """
    pairs = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise HqtdError(f"bad override {override!r}: expected KEY=VALUE")
        pairs[key] = value
    if "run_dir" not in pairs:
        raise HqtdError("missing required override run_dir=DIR (a training run directory)")
    saved = Path(pairs["run_dir"]) / "config.yaml"
    if not saved.is_file():
        raise HqtdError(f"{saved}: not found (run_dir must be a training run directory)")
    layers = [OmegaConf.structured(from_yaml(saved))]
    if "protocol" in pairs:
        name = pairs.pop("protocol")
        protocol_file = PARAMS_DIR / "protocol" / f"{name}.yaml"
        if not protocol_file.is_file():
            available = sorted(p.stem for p in protocol_file.parent.glob("*.yaml"))
            raise HqtdError(f"protocol={name}: unknown, available: {', '.join(available)}")
        layers.append({"protocol": OmegaConf.load(protocol_file)})
    try:
        layers.append(OmegaConf.from_dotlist([f"{k}={v}" for k, v in pairs.items()]))
        result = OmegaConf.to_object(OmegaConf.merge(*layers))
    except (OmegaConfBaseException, ValueError) as error:
        raise HqtdError(f"bad override: {str(error).splitlines()[0]}") from None
    assert isinstance(result, Config)
    return result


def evaluate_command(overrides: list[str]) -> None:
    """``hqtd evaluate run_dir=... [checkpoint=FILE] [protocol=paper|strict]`` (METHOD.md §6).

    Evaluates the EMA weights of the protocol's checkpoint (``best``/``last`` of the run, or
    ``checkpoint=FILE``: any file :func:`load_weights` accepts) on target val and writes
    ``<run_dir>/eval/<protocol>/metrics.json`` and ``confusion.npy`` (int64 CxC, conf[gt, pred]).
    """
    config = evaluation_config(overrides)
    run_dir = Path(config.run_dir)
    if config.checkpoint is not None:
        path, checkpoint_name = Path(config.checkpoint), config.checkpoint
    else:
        checkpoint_name = config.protocol.checkpoint.value
        path = run_dir / "checkpoints" / f"{checkpoint_name}.pt"
    if not path.is_file():
        raise HqtdError(f"{path}: checkpoint not found")

    device = resolve_device(config.train.device, config.train.threads)
    model = build_model(config.model)
    load_weights(model, path)
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)

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
    conf = evaluate_model(
        model,
        val,
        num_classes,
        input_size=target_size,
        device=device,
        precision=config.train.precision,
        channels_last=config.train.channels_last,
        num_workers=config.train.num_workers,
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
        "git_revision": git_revision(),
        "num_classes": num_classes,
        "class_names": list(class_names(num_classes)),
        **score_summary(conf),
    }
    out = run_dir / "eval" / config.protocol.name
    with atomic_path(out / "confusion.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, conf.numpy().astype(np.int64))
    write_json(out / "metrics.json", metrics)
    print(f"{out / 'metrics.json'}: mIoU {metrics['mIoU']} (percent)")


def checkpoint_iteration(path: Path) -> int | None:
    """The training iteration stored in an hqtd checkpoint; None for other checkpoint files."""
    try:  # memory-mapped: reads the small entries without loading the weights
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError):
        return None  # e.g. the authors' legacy-format files; load_weights has already read them
    if isinstance(checkpoint, dict) and checkpoint.get("format") == "hqtd-train-v1":
        return int(checkpoint["iteration"])
    return None
