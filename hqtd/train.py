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
config (except :data:`RESUMABLE_KEYS`), code, data and initial weights. Otherwise ``hqtd train``
refuses with one line naming what differs, or with ``train.on_change=restart`` deletes what the
old run trained and starts over (what the workflows pass: they rerun a job only when one of its
inputs changed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from hqtd.adapt.diagnostics import pseudo_label_diagnostics
from hqtd.adapt.ema import ModelEMA
from hqtd.adapt.step import adaptation_step, pseudo_label_model, supervised_step
from hqtd.config import Config, DatasetConfig, OnChange, Stage, from_yaml, to_yaml
from hqtd.data.datasets import SegmentationDataset, image_resample
from hqtd.data.labels import class_names
from hqtd.determinism import cpu_kernels
from hqtd.errors import HqtdError
from hqtd.evaluate import (
    autocast,
    evaluate_model,
    images_to_float,
    resolve_device,
    score_summary,
    selection_score,
)
from hqtd.io import atomic_path, cannot_write, sweep_temporaries, write_json, write_text
from hqtd.models.checkpoints import load_weights, state_checksum, verify_checksum
from hqtd.models.deeplabv2 import build_model
from hqtd.provenance import differences, run_identity

CHECKPOINT_FORMAT = "hqtd-train-v1"
#: Settings that may change between a run and its resume: they do not change the results.
RESUMABLE_KEYS = (
    "train.device", "train.num_workers", "train.threads", "train.on_change", "train.diagnostics",
)  # fmt: skip
PROVENANCE_FILE = "provenance.json"
#: Held (flock) by the ``hqtd train`` process at work in a run directory; names it (pid, host).
LOCK_FILE = "train.lock"
#: What a restart deletes: everything a training run writes into its run directory, and the
#: evaluations of the old weights (``logs/`` stays: the workflows' log of the current job).
TRAINING_OUTPUTS = (
    "checkpoints", "tensorboard", "train_log.jsonl", "val_log.jsonl", "done", "eval",
    PROVENANCE_FILE,
)  # fmt: skip
# Independent random streams derived from the run's seed.
SOURCE_STREAM, TARGET_STREAM, STEP_STREAM = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# Schedule


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    """Poly decay ``base_lr * (1 - iteration / total) ** power`` (METHOD.md §2), iteration >= 0."""
    return base_lr * (1.0 - iteration / total) ** power


# ----------------------------------------------------------------------------------------------
# Distributed set-up


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


# ----------------------------------------------------------------------------------------------
# Reproducible data streams


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of integer ``keys`` (well mixed by SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


class BatchStream(Sampler):
    """Endless ``(index, item_seed)`` keys for one rank, a pure function of the run's seed.

    The global stream concatenates permutations of the dataset, epoch ``e`` drawn from a generator
    seeded by (seed, stream, e). Iteration ``k`` of rank ``r`` reads stream positions
    ``[(k * world + r) * batch, ... + batch)``, so every batch is full, ranks never overlap, and a
    resume at iteration ``k`` needs no saved state. Each position also carries the seed of its
    augmentation (see :class:`SeededItems`).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        stream: int,
        start_iteration: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.batch_size, self.seed, self.stream = size, batch_size, seed, stream
        self.start_iteration, self.rank, self.world_size = start_iteration, rank, world_size

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, 0, epoch))
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        iteration = self.start_iteration
        while True:
            first = (iteration * self.world_size + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                if position // self.size != epoch:
                    epoch = position // self.size
                    order = self.permutation(epoch)
                item_seed = derive_seed(self.seed, self.stream, 1, position)
                yield int(order[position % self.size]), item_seed
            iteration += 1


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU global RNGs for the block, then restore them."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU generator only (data loading is on CPU)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededItems(Dataset):
    """A dataset read with keys ``(index, item_seed)``: the item's random augmentation (flip,
    blur) is drawn from global RNGs seeded by ``item_seed``. The same key gives the same sample in
    any process, so DataLoader workers need no seeding of their own and resumes are exact."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, item_seed = key
        with seeded_global_rngs(item_seed):
            return self.dataset[index]


def batches(
    dataset: Dataset,
    stream: int,
    start_iteration: int,
    config: Config,
    runtime: Runtime,
) -> Iterator[dict]:
    """Endless batches of ``dataset`` for this rank from ``start_iteration`` on (BatchStream)."""
    sampler = BatchStream(
        len(dataset),
        config.train.batch_size,
        config.seed,
        stream,
        start_iteration,
        runtime.rank,
        runtime.world_size,
    )
    loader = DataLoader(
        SeededItems(dataset),
        batch_size=config.train.batch_size,
        sampler=sampler,
        num_workers=config.train.num_workers,
        pin_memory=runtime.device.type == "cuda",
        # Its own generator: creating the iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(derive_seed(config.seed, stream, 2)),
    )
    return iter(loader)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """Batch from the loader -> image float (B,3,H,W) in [0,1] and label int64 (B,H,W) on device."""
    return {
        "image": images_to_float(batch["image"], device, channels_last),
        "label": batch["label"].to(device, non_blocking=True),
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints


def rng_states() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU, CUDA), in types ``weights_only`` loads."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (CUDA only when both then and now have a GPU)."""
    random.setstate(states["python"])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training checkpoint (a kill leaves the previous file intact).

    Saved through an open file: given a path, torch.save names the zip archive inside after the
    (random) temporary file, so equal checkpoints would differ in their bytes. The file also
    stores the content's ``checksum`` (:func:`~hqtd.models.checkpoints.state_checksum`), which
    :func:`load_checkpoint` verifies; the tensors themselves are saved unchanged.
    """
    content = {"format": CHECKPOINT_FORMAT, **state, "rng": rng_states()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save({**content, "checksum": state_checksum(content)}, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and verify its checksum.

    Raises:
        HqtdError: an unreadable, foreign or damaged file (empty, text, bytes flipped).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file can fail anywhere in the unzipper or unpickler
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise HqtdError(f"{path}: unreadable checkpoint ({detail})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise HqtdError(f"{path}: not an hqtd training checkpoint (format {CHECKPOINT_FORMAT})")
    verify_checksum(checkpoint, path)
    return checkpoint


def resume_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint a run resumes from: ``last.pt`` or, when that one is damaged, ``best.pt``
    (a full training state too, from an earlier or the same iteration: the resume is as exact).

    Raises:
        HqtdError: ``last.pt`` is damaged and no good ``best.pt`` can replace it; the line says
            what to delete to train from scratch.
    """
    folder = run_dir / "checkpoints"
    try:
        return load_checkpoint(folder / "last.pt")
    except HqtdError as damaged:
        try:
            fallback = load_checkpoint(folder / "best.pt")
        except HqtdError:
            raise HqtdError(
                f"{damaged}; no good best.pt to fall back to: delete {folder} and rerun to "
                "train this run from scratch"
            ) from None
        print(f"{damaged}; resuming from {folder / 'best.pt'} (iteration {fallback['iteration']})")
        return fallback


# ----------------------------------------------------------------------------------------------
# Run directory


def config_differences(saved: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, except :data:`RESUMABLE_KEYS`."""

    def flat(config: Config) -> dict[str, Any]:
        container = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
        return _flatten(container)

    old, now = flat(saved), flat(new)
    keys = sorted(set(old) | set(now))
    return [k for k in keys if old.get(k) != now.get(k) and k not in RESUMABLE_KEYS]


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def truncate_log(path: Path, iteration: int) -> None:
    """Keep the JSON lines of ``path`` up to ``iteration`` (drops what a killed run logged after
    its last checkpoint, and a partly written last line), so a resumed log equals an uninterrupted
    one."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["iteration"] <= iteration:
            kept.append(line + "\n")
    write_text(path, "".join(kept))


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed: a kill loses at most this line, which a resume drops)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


class RunLog:
    """What rank 0 logs: ``train_log.jsonl`` and ``val_log.jsonl``, and the same scalars as
    TensorBoard events in ``tensorboard/`` (``tensorboard --logdir results/runs`` overlays runs).

    Args:
        run_dir: the run directory.
        start: the iterations the run's last checkpoint holds. On a resume, TensorBoard hides
            the events that the interrupted attempt wrote for later iterations (``purge_step``),
            as :func:`truncate_log` drops them from the JSON logs.
        num_classes: names the per-class IoU scalars.
    """

    def __init__(self, run_dir: Path, start: int, num_classes: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: training only

        self.run_dir = run_dir
        self.class_names = class_names(num_classes)
        purge_step = start + 1 if start else None  # steps up to start were logged before it
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def train(self, record: dict[str, Any]) -> None:
        """Loss terms and lr of one iteration (``record["iteration"]``)."""
        append_log(self.run_dir / "train_log.jsonl", record)
        step = record["iteration"]
        for name, value in record.items():
            if name != "iteration":
                self.writer.add_scalar(f"train/{name}", value, step)

    def val(self, record: dict[str, Any]) -> None:
        """One EMA evaluation: the means under ``val/``, each class's IoU under ``val_iou/``; the
        pseudo-label diagnostics, when the record has them, under ``diag/`` (overall fractions)
        and ``diag_<name>/<class>`` (per-class ones)."""
        append_log(self.run_dir / "val_log.jsonl", record)
        step = record["iteration"]
        nested = ("iteration", "iou", "diagnostics")
        scalars = {f"val/{k}": v for k, v in record.items() if k not in nested}
        scalars |= {f"val_iou/{n}": v for n, v in zip(self.class_names, record["iou"], strict=True)}
        for name, value in record.get("diagnostics", {}).items():
            if isinstance(value, list):
                named = zip(self.class_names, value, strict=True)
                scalars |= {f"diag_{name}/{n}": v for n, v in named}
            else:
                scalars[f"diag/{name}"] = value
        for tag, value in scalars.items():
            if value is not None:  # a class absent from val and never predicted has no IoU
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Write the pending events (with each checkpoint: a kill then loses nothing before it)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------------------------
# The run


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


def recorded_changes(config: Config, identity: dict[str, Any]) -> list[str]:
    """What differs between the run recorded in ``config.run_dir`` and this one: config keys
    (except :data:`RESUMABLE_KEYS`), ``code``, ``data PATH``, initial-weights content; a run
    recorded before hqtd wrote ``provenance.json`` has unknown code and data."""
    run_dir = Path(config.run_dir)
    saved = run_dir / "config.yaml"
    found = config_differences(from_yaml(saved), config) if saved.exists() else ["config unknown"]
    try:
        record = json.loads((run_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [*found, f"code and data unknown (no {PROVENANCE_FILE})"]
    except (OSError, ValueError) as error:
        raise HqtdError(f"{run_dir / PROVENANCE_FILE}: unreadable ({error})") from None
    return found + differences(record, identity)


def existing_run(config: Config, identity: dict[str, Any]) -> str:
    """Decide what to do with what ``config.run_dir`` holds, before anything is changed.

    Returns:
        ``new`` (nothing trained there, or a restart), ``resume`` (the same computation, with a
        last checkpoint) or ``finished`` (the same computation, done).

    Raises:
        HqtdError: the run directory holds another computation and ``train.on_change`` is
            ``refuse``.
    """
    run_dir = Path(config.run_dir)
    finished = (run_dir / "done").exists()
    if not finished and not (run_dir / "checkpoints" / "last.pt").exists():
        return "new"
    changed = recorded_changes(config, identity)
    if not changed:
        return "finished" if finished else "resume"
    what = f"{'finished' if finished else 'unfinished'} run of other {', '.join(changed)}"
    if config.train.on_change is OnChange.refuse:
        raise HqtdError(
            f"{run_dir}: holds a {what}; pass train.on_change=restart to train it again from "
            "scratch, or use another run_dir"
        )
    print(f"{run_dir}: held a {what}; training again from scratch (train.on_change=restart)")
    return "new"


def prepare_run_dir(
    config: Config, runtime: Runtime, resume: bool, identity: dict[str, Any]
) -> dict[str, Any] | None:
    """Start or resume the run directory: load the last checkpoint (``resume``) or delete what an
    earlier run trained there, then write ``config.yaml`` and ``provenance.json``.

    Returns:
        the last checkpoint, or None for a fresh run.
    """
    run_dir = Path(config.run_dir)
    checkpoint = resume_checkpoint(run_dir) if resume else None
    if runtime.is_main:
        if not resume:
            clear_training_outputs(run_dir)
        sweep_temporaries(run_dir)  # what a killed write left (the lock keeps other writers out)
        sweep_temporaries(run_dir / "checkpoints")
        write_text(run_dir / "config.yaml", to_yaml(config))
        write_json(run_dir / PROVENANCE_FILE, identity)
        start = checkpoint["iteration"] if checkpoint else 0
        truncate_log(run_dir / "train_log.jsonl", start)
        truncate_log(run_dir / "val_log.jsonl", start)
    return checkpoint


def clear_training_outputs(run_dir: Path) -> None:
    """Delete :data:`TRAINING_OUTPUTS` from ``run_dir`` (a fresh run must not inherit them)."""
    for name in TRAINING_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


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


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold :data:`LOCK_FILE` of ``run_dir`` for the block; a second ``hqtd train`` on the same
    directory stops with one line naming the holder. Under torchrun rank 0 holds it for all.

    The lock is an ``flock``: the kernel releases it when its holder dies, so the file a killed
    run leaves behind is stale by construction and the next run takes it over.

    Raises:
        HqtdError: another process holds the lock, or the directory cannot be written.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _locked_handle(run_dir / LOCK_FILE)
    except OSError as error:
        raise cannot_write(run_dir, error) from None
    try:
        yield
    finally:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)  # removed while held: no one waits on it
        handle.close()
        if created:
            with contextlib.suppress(OSError):  # only if nothing was written (a refused start)
                run_dir.rmdir()


def _locked_handle(path: Path) -> Any:
    """Open and flock ``path``, retrying if a finishing holder unlinked it meanwhile (a lock on a
    deleted file would not exclude the next process); write this process's name into it."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise HqtdError(
                f"{path.parent}: in use by {holder} (its {LOCK_FILE}); wait for it to finish or "
                "stop it, or use another run_dir"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    handle.seek(0)
    stale = handle.read().strip()
    if stale:
        print(f"{path}: taking over the lock of {stale}, which no longer runs")
    handle.truncate(0)
    handle.write(f"hqtd train pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    return handle


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


def distribute(model: nn.Module, runtime: Runtime) -> nn.Module:
    """The module the step calls: ``model`` itself, or under DDP a DistributedDataParallel wrapper
    (with SyncBatchNorm on CUDA; the wrapped parameters are ``model``'s own)."""
    if runtime.world_size == 1:
        return model
    if runtime.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[runtime.device])
    return DistributedDataParallel(model)


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
    pseudo-labels with, on :func:`diagnostic_images` (rank 0 only; no collective operation)."""
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


def run(config: Config, runtime: Runtime, resume: bool, identity: dict[str, Any]) -> None:
    """The training loop (see :func:`train`)."""
    tc, device, run_dir = config.train, runtime.device, Path(config.run_dir)
    # Data, opened (manifests checked) before the run directory changes: the labelled set
    # (source; target for the oracle), the unlabelled target set and target val.
    labelled_set, target_set = stage_datasets(config)
    val_set = SegmentationDataset(
        config.benchmark.target_val.root,
        config.benchmark.target_val.split,
        tuple(config.benchmark.target_size),  # the paper protocol: labels resized too
        config.benchmark.num_classes,
        train=False,
        image_resample=image_resample(config.method.augmentation),
    )
    diagnostic_set = diagnostic_images(config) if runtime.is_main else None
    checkpoint = prepare_run_dir(config, runtime, resume, identity)
    total = total_iterations(config)

    # The global RNGs that checkpoints save start from the seed: equal runs write equal files.
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
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
        }

    labelled = batches(labelled_set, SOURCE_STREAM, start, config, runtime)
    target = batches(target_set, TARGET_STREAM, start, config, runtime) if target_set else None
    # The authors' epoch (METHOD.md §8.5) paces validation and the EMA's BN buffer copies when set.
    epoch = None
    if tc.eval_per_epoch or config.method.quirk_ema_bn_per_epoch:
        sizes = [len(d) for d in (labelled_set, target_set) if d is not None]
        epoch = epoch_length(config, sizes, runtime.world_size)
    generator = torch.Generator(device)
    # Rank 0 alone writes files: logs, checkpoints and the done marker (``log`` is None elsewhere).
    log = RunLog(run_dir, start, config.benchmark.num_classes) if runtime.is_main else None

    progress = tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc=f"{config.method.name} seed{config.seed}",
        disable=None if runtime.is_main else True,  # None: off when stderr is not a terminal
        mininterval=5.0,
    )
    for iteration in progress:
        lr_scale = poly_lr(1.0, iteration, total, tc.poly_power)
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * lr_scale
        # Every random draw of the step comes from (seed, rank, iteration): resumes are exact.
        generator.manual_seed(derive_seed(config.seed, STEP_STREAM, runtime.rank, iteration))
        batch = to_device(next(labelled), device, tc.channels_last)
        with autocast(device, tc.precision):
            if target is None:
                result = supervised_step(student, batch, tc.aux_weight)
            else:
                target_batch = to_device(next(target), device, tc.channels_last)
                result = adaptation_step(student, ema, batch, target_batch, config, generator)
        check_finite(result.loss, result.terms, iteration + 1, runtime, run_dir)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        ema.update(model)

        done = iteration + 1  # iterations completed
        epoch_end = epoch is not None and done % epoch == 0
        if epoch_end and not ema.buffers_every_step:
            ema.copy_buffers(model)
        if done % tc.log_every == 0 and log is not None:
            log.train({"iteration": done, "lr": base_lrs[0] * lr_scale, **result.terms})
            progress.set_postfix({k: f"{v:.3f}" for k, v in result.terms.items()}, refresh=False)
        if (epoch_end if tc.eval_per_epoch else done % tc.eval_every == 0) or done == total:
            scores = validate(ema, val_set, config, runtime)
            if log is not None:
                extra = {}
                if diagnostic_set is not None:
                    extra["diagnostics"] = diagnose(model, ema, diagnostic_set, config, device)
                log.val({"iteration": done, **scores, **extra})
                tqdm.write(f"iteration {done}: EMA mIoU {scores['mIoU']} (percent) on target val")
            if selection_score(scores) > best_score:
                best_score = selection_score(scores)
                if log is not None:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", state(done))
        if (done % tc.checkpoint_every == 0 or done == total) and log is not None:
            log.flush()  # the events up to this checkpoint reach the disk before it does
            save_checkpoint(run_dir / "checkpoints" / "last.pt", state(done))
    progress.close()
    if log is not None:
        log.close()
        write_text(run_dir / "done", f"finished {total} iterations\n")


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
