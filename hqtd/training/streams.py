"""Reproducible random streams: the data order, the per-item augmentation seeds and the step's draws
are pure functions of (seed, stream, position), so a resume needs no iterator state; and the global
RNG states that every checkpoint saves (:func:`rng_states`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hqtd.config import Config
from hqtd.runtime import Runtime, images_to_float

# Independent random streams derived from the run's seed.
SOURCE_STREAM, TARGET_STREAM, STEP_STREAM = 1, 2, 3


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


def seed_run_rngs(seed: int) -> None:
    """Start Python's and NumPy's global RNGs, which every checkpoint saves, from the run's seed:
    equal runs write equal files (torch's is seeded where the network is built)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)


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
