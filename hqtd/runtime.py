"""Where this process computes: the device, its precision, the model's input tensors, and its
place among the DistributedDataParallel processes under ``torchrun``.

Shared by training (:mod:`hqtd.train`), evaluation (:mod:`hqtd.evaluate`) and the figures
(:mod:`hqtd.report.figures`), none of which needs to import another for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hqtd.config import Config, Precision
from hqtd.errors import HqtdError


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


@dataclass
class Runtime:
    """Where this process trains: its device and its place among the DDP processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: Config) -> Runtime:
    """Pick the device, set threads and determinism, and join the process group under torchrun."""
    device = resolve_device(config.train.device, config.train.threads)
    if device.type == "cpu":  # CUDA stays non-deterministic (atomics in upsampling backward)
        torch.use_deterministic_algorithms(True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, dist.get_rank(), world_size)


def distribute(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module the step calls: ``model`` itself, or under DDP a DistributedDataParallel wrapper
    (with SyncBatchNorm on CUDA; the wrapped parameters are ``model``'s own)."""
    if runtime.world_size == 1:
        return model
    if runtime.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[runtime.device])
    return DistributedDataParallel(model)
