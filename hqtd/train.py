"""One training run: source-only, oracle or adaptation (METHOD.md §3-4), resumable and DDP-ready.

``hqtd train benchmark=B method=V seed=K run_dir=DIR`` calls :func:`train`. Rerunning the same
command resumes from ``DIR/checkpoints/last.pt`` and produces the same logs, checkpoints and metrics
as an uninterrupted run on CPU: the data order, the augmentations and the step's random draws are
pure functions of (seed, iteration), so a resume needs no iterator state, and the global RNG states
are saved in every checkpoint. Under ``torchrun --nproc_per_node=N`` the same command trains with
DistributedDataParallel (gloo on CPU, NCCL on CUDA); only rank 0 writes files.

Run directory: ``config.yaml``, ``train_log.jsonl`` (loss terms and lr every ``train.log_every``
iterations), ``val_log.jsonl`` (EMA mIoU and per-class IoU on target val every
``train.eval_every``, or every epoch with ``train.eval_per_epoch``; with ``train.diagnostics=N``
also the pseudo-label ``diagnostics`` of :mod:`hqtd.adapt.diagnostics` on N fixed labelled
target-train images), the same scalars as TensorBoard events in ``tensorboard/``,
``checkpoints/last.pt`` and ``checkpoints/best.pt``, ``provenance.json`` (the code, data and
initial-weights fingerprint of :func:`hqtd.provenance.run_identity`), and ``done`` at the end.

A run directory is resumed (or, finished, left alone) only for the same computation: the same
config (except :data:`~hqtd.training.run_dir.RESUMABLE_KEYS`), code, data and initial weights.
Otherwise ``hqtd train`` refuses with one line naming what differs, or with
``train.on_change=restart`` deletes what the old run trained and starts over (what the workflows
pass: they rerun a job only when one of its inputs changed).

This module is the loop and what it composes; :mod:`hqtd.training` holds the parts: the random
streams, the run directory, the log, the schedule and the stage's data and initial network.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from hqtd.adapt.diagnostics import pseudo_label_diagnostics
from hqtd.adapt.ema import ModelEMA
from hqtd.adapt.step import adaptation_step, pseudo_label_model, supervised_step
from hqtd.config import Config
from hqtd.determinism import cpu_kernels
from hqtd.errors import HqtdError
from hqtd.evaluate import evaluate_model, score_summary, selection_score
from hqtd.provenance import run_identity
from hqtd.runtime import Runtime, autocast, distribute, images_to_float, setup_runtime
from hqtd.training.run_dir import existing_run, prepare_run_dir, run_dir_lock
from hqtd.training.run_log import NullLog, RunLog
from hqtd.training.schedule import apply_poly_lr, build_optimizer, epoch_length, total_iterations
from hqtd.training.stage import check_stage, initial_model, stage_data
from hqtd.training.streams import (
    SOURCE_STREAM,
    STEP_STREAM,
    TARGET_STREAM,
    batches,
    derive_seed,
    rng_states,
    seed_run_rngs,
    set_rng_states,
    to_device,
)


def train(config: Config) -> None:
    """Train one run as configured; resume from ``run_dir/checkpoints/last.pt`` when it holds the
    same computation (see the module docstring).

    Raises:
        HqtdError: a stage the benchmark cannot run, a missing or mismatched initial checkpoint,
            a run_dir holding another computation (unless ``train.on_change=restart``), a
            non-finite loss, or a ``train.determinism`` this process cannot hold
            (:func:`hqtd.determinism.cpu_kernels`).
    """
    identity = run_identity(config)
    with run_dir_lock(Path(config.run_dir)):
        # Decided by every process before any of them changes the directory: under torchrun,
        # rank 0 clears it only after all ranks joined the process group (setup_runtime).
        state = existing_run(config, identity)
        if state == "finished":
            print(f"{config.run_dir}: run complete, nothing to do")
            return
        check_stage(config)
        train_locked(config, state, identity)


def train_locked(config: Config, state: str, identity: dict[str, Any]) -> None:
    """:func:`train` once the run directory is locked and its state decided."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    with cpu_kernels(config.train.determinism, config.train.threads):
        runtime = setup_runtime(config)
        try:
            run(config, runtime, resume=state == "resume", identity=identity)
        finally:
            torch.use_deterministic_algorithms(deterministic)  # leave the caller's process as is
            if dist.is_initialized():
                dist.destroy_process_group()


def run(config: Config, runtime: Runtime, resume: bool, identity: dict[str, Any]) -> None:
    """The training loop (see :func:`train`)."""
    tc, device, run_dir = config.train, runtime.device, Path(config.run_dir)
    data = stage_data(config, runtime.is_main)  # opened before the run directory changes
    checkpoint = prepare_run_dir(config, runtime, resume, identity)
    total = total_iterations(config)

    seed_run_rngs(config.seed)
    # Model, EMA (evaluation always uses the EMA weights, in every stage) and optimiser.
    model, ema = initial_model(config)
    memory_format = torch.channels_last if tc.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    ema.module.to(device, memory_format=memory_format)
    optimizer, base_lrs = build_optimizer(model, config)
    start, best_score = 0, -math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_states(checkpoint["rng"])
        start, best_score = checkpoint["iteration"], checkpoint["best_score"]
    student = distribute(model, runtime)

    def state(iteration: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "best_score": best_score,
            "rng": rng_states(),
        }

    labelled = batches(data.labelled, SOURCE_STREAM, start, config, runtime)
    target = batches(data.target, TARGET_STREAM, start, config, runtime) if data.target else None
    # The authors' epoch (METHOD.md §8.5) paces validation and the EMA's BN buffer copies when set.
    epoch = None
    if tc.eval_per_epoch or config.method.quirk_ema_bn_per_epoch:
        sizes = [len(d) for d in (data.labelled, data.target) if d is not None]
        epoch = epoch_length(config, sizes, runtime.world_size)
    generator = torch.Generator(device)
    # Rank 0 alone writes files: logs, checkpoints and the done marker.
    log = RunLog(run_dir, start, config.benchmark.num_classes) if runtime.is_main else NullLog()

    progress = tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc=f"{config.method.name} seed{config.seed}",
        disable=None if runtime.is_main else True,  # None: off when stderr is not a terminal
        mininterval=5.0,
    )
    for iteration in progress:
        lr = apply_poly_lr(optimizer, base_lrs, iteration, total, tc.poly_power)
        # Every random draw of the step comes from (seed, rank, iteration): resumes are exact.
        generator.manual_seed(derive_seed(config.seed, STEP_STREAM, runtime.rank, iteration))
        batch = to_device(next(labelled), device, tc.channels_last)
        with autocast(device, tc.precision):
            if target is None:
                result = supervised_step(student, batch, tc.aux_weight)
            else:
                target_batch = to_device(next(target), device, tc.channels_last)
                crop = config.benchmark.crop_size
                result = adaptation_step(
                    student, ema, batch, target_batch, config.method, crop, tc.aux_weight, generator
                )
        check_finite(result.loss, result.terms, iteration + 1, runtime, run_dir)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        ema.update(model)

        done = iteration + 1  # iterations completed
        epoch_end = epoch is not None and done % epoch == 0
        if epoch_end and not ema.buffers_every_step:
            ema.copy_buffers(model)
        if done % tc.log_every == 0:
            log.train({"iteration": done, "lr": lr, **result.terms})
            progress.set_postfix({k: f"{v:.3f}" for k, v in result.terms.items()}, refresh=False)
        if (epoch_end if tc.eval_per_epoch else done % tc.eval_every == 0) or done == total:
            record = {"iteration": done, **validate(ema, data.val, config, runtime)}
            if data.diagnostic is not None:  # rank 0 only
                record["diagnostics"] = diagnose(model, ema, data.diagnostic, config, device)
            log.val(record)
            if selection_score(record) > best_score:
                best_score = selection_score(record)
                log.checkpoint("best.pt", state(done))
        if done % tc.checkpoint_every == 0 or done == total:
            log.checkpoint("last.pt", state(done))
    progress.close()
    log.finish(total)


def validate(ema: ModelEMA, val_set: Dataset, config: Config, runtime: Runtime) -> dict[str, Any]:
    """Per-class IoU and mIoU (percent) of the EMA weights on target val, paper protocol."""
    if runtime.world_size > 1:  # without SyncBatchNorm BN statistics differ per rank: use rank 0's
        for buffer in ema.module.buffers():
            dist.broadcast(buffer, 0)
    conf = evaluate_model(
        ema.module,
        val_set,
        config.benchmark.num_classes,
        device=runtime.device,
        precision=config.train.precision,
        channels_last=config.train.channels_last,
        num_workers=config.train.num_workers,
    )
    return score_summary(conf)


def diagnose(
    model: nn.Module,
    ema: ModelEMA,
    images_labels: tuple[torch.Tensor, torch.Tensor],
    config: Config,
    device: torch.device,
) -> dict[str, Any]:
    """:func:`~hqtd.adapt.diagnostics.pseudo_label_diagnostics` of the networks the step
    pseudo-labels with, on :func:`~hqtd.training.stage.diagnostic_images` (rank 0 only; no
    collective operation)."""
    images, labels = images_labels
    teacher = pseudo_label_model(model, ema, config.method)
    with autocast(device, config.train.precision):
        return pseudo_label_diagnostics(
            model,
            teacher,
            images_to_float(images, device, config.train.channels_last),
            labels.to(device),
            config.method.t_max,
            config.benchmark.num_classes,
        )


def check_finite(
    loss: torch.Tensor, terms: dict[str, float], iteration: int, runtime: Runtime, run_dir: Path
) -> None:
    """Stop on a non-finite loss before it reaches the weights (the last checkpoint stays good).

    Under DDP the verdict is shared, so every rank stops together instead of hanging.
    """
    bad = [name for name, value in terms.items() if not math.isfinite(value)]
    if not bad and not torch.isfinite(loss.detach()).item():
        bad = ["total loss"]
    flag = torch.tensor([float(bool(bad))], device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        where = ", ".join(bad) if bad else "on another process"
        last = run_dir / "checkpoints" / "last.pt"
        kept = f"{last} is kept" if last.exists() else "no checkpoint was written yet"
        raise HqtdError(
            f"iteration {iteration}: non-finite loss ({where}); stopped, {kept} — lower train.lr "
            "or check the data"
        )
