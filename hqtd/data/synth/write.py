"""``hqtd synth``: write the embedded mini benchmark in the real on-disk formats.

Each split of the three datasets is drawn from one domain (:mod:`hqtd.data.synth.domains`) by
:func:`~hqtd.data.synth.render.render`, and its files are encoded by the writers of its layout
(:mod:`hqtd.data.formats.gta5`, ``synthia``, ``cityscapes``), so ``hqtd prepare`` reads them with
the code that reads the real datasets. Every image is drawn from its own generator seeded with
``[seed, stream, index]``: the files do not depend on the number of workers, and the same seed
gives byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hqtd.data.formats import cityscapes, gta5, synthia
from hqtd.data.formats.png import encode_image
from hqtd.data.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID
from hqtd.data.synth.domains import CITYSCAPES, GTA5, SYNTHIA
from hqtd.data.synth.render import render
from hqtd.errors import HqtdError
from hqtd.io import write_bytes, write_json

#: Stored in each dataset's ``.complete`` marker; bump it when the drawing changes so that
#: ``generate`` redraws folders written by an older version.
GENERATOR_VERSION = 2

_CITYSCAPES_ID = {train_id: raw for raw, train_id in CITYSCAPES_ID_TO_TRAINID.items()}
_SYNTHIA_ID = {train_id: raw for raw, train_id in SYNTHIA_ID_TO_TRAINID.items()}
#: Scene code -> Cityscapes labelId (GTA5 uses the same ids): lane marking -> road (7), rail track
#: (10), static (4), ego vehicle (1), unlabeled (0).
CITYSCAPES_IDS = np.array([_CITYSCAPES_ID[t] for t in range(19)] + [7, 10, 4, 1, 0], np.uint8)
#: Scene code -> SYNTHIA class id: lane marking (22); the other void kinds are void (0).
SYNTHIA_IDS = np.array([_SYNTHIA_ID[t] for t in range(19)] + [22, 0, 0, 0, 0], np.uint16)


@dataclass(frozen=True)
class Counts:
    """Images per split of the mini benchmark."""

    gta5: int = 300
    synthia: int = 300
    cityscapes_train: int = 300
    cityscapes_val: int = 100


#: The splits of each dataset: (dataset folder, split) -> (domain, seed stream). The stream keeps
#: the images of different splits independent for the same index.
SPLITS = {
    ("mini_gta5", "train"): (GTA5, 0),
    ("mini_synthia", "train"): (SYNTHIA, 1),
    ("mini_cityscapes", "train"): (CITYSCAPES, 2),
    ("mini_cityscapes", "val"): (CITYSCAPES, 3),
}
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}


def _counts(counts: Counts) -> dict[tuple[str, str], int]:
    return {
        ("mini_gta5", "train"): counts.gta5,
        ("mini_synthia", "train"): counts.synthia,
        ("mini_cityscapes", "train"): counts.cityscapes_train,
        ("mini_cityscapes", "val"): counts.cityscapes_val,
    }


def sample_paths(dataset: str, split: str, index: int) -> tuple[str, str]:
    """(image, label) path of one sample relative to the dataset folder, in its layout: GTA5
    numbers frames from 1, SYNTHIA from 0, Cityscapes spreads them over :data:`CITIES`."""
    if dataset == "mini_gta5":
        return gta5.sample_paths(split, gta5.sample_id(index + 1))
    if dataset == "mini_synthia":
        return synthia.sample_paths(split, synthia.sample_id(index))
    cities = CITIES[split]
    city, sequence = cities[index % len(cities)], index // len(cities)
    return cityscapes.sample_paths(split, cityscapes.sample_id(city, sequence, 19))


def label_file(dataset: str, code: np.ndarray, instance: np.ndarray) -> bytes:
    """Encode a scene's labels (scene codes and instance ids, (H,W) each) as the dataset's label
    file, with the scene codes mapped to its raw ids."""
    if dataset == "mini_gta5":
        return gta5.encode_label(CITYSCAPES_IDS[code])
    if dataset == "mini_synthia":
        return synthia.encode_label(SYNTHIA_IDS[code], instance)
    return cityscapes.encode_label(CITYSCAPES_IDS[code])


def _write_sample(job: tuple[str, str, int, int, str]) -> None:
    """Draw and write one sample (a process-pool task): (dataset, split, index, seed, root)."""
    dataset, split, index, seed, root = job
    domain, stream = SPLITS[dataset, split]
    image, code, instance = render(domain, np.random.default_rng([seed, stream, index]))
    image_path, label_path = sample_paths(dataset, split, index)
    write_bytes(Path(root) / image_path, encode_image(image))
    write_bytes(Path(root) / label_path, label_file(dataset, code, instance))


def _sample_exists(job: tuple[str, str, int, int, str]) -> bool:
    """Whether both files of a :func:`_write_sample` job are on disk."""
    dataset, split, index, _, root = job
    return all((Path(root) / path).is_file() for path in sample_paths(dataset, split, index))


def _draw(jobs: list[tuple[str, str, int, int, str]], workers: int) -> None:
    """Run :func:`_write_sample` over ``jobs`` in ``workers`` processes."""
    if workers == 1:
        for job in jobs:
            _write_sample(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_sample, jobs, chunksize=8))


def generate(out: Path, seed: int = 0, counts: Counts = Counts(), workers: int = 2) -> None:
    """``hqtd synth``: write mini_gta5/, mini_synthia/ and mini_cityscapes/ under ``out``.

    Idempotent: a dataset folder whose ``.complete`` marker records the same seed, counts and
    generator version and all of whose files exist is left alone (deleted files are drawn again);
    any other folder of that name is removed and drawn again.
    Every file is written atomically and the marker last, so an interrupted run is redrawn.

    Args:
        out: folder for the three raw datasets.
        seed: non-negative; the same seed gives byte-identical files, another one a fresh draw.
        counts: images per split (the defaults are the benchmark's).
        workers: processes drawing in parallel (the files do not depend on it).

    Raises:
        HqtdError: a negative seed or count, or fewer than one worker.
    """
    if seed < 0:
        raise HqtdError(f"--seed must be a non-negative integer, got {seed}")
    if workers < 1:
        raise HqtdError(f"workers must be at least 1, got {workers}")
    if min(asdict(counts).values()) < 1:
        raise HqtdError(f"every split needs at least one image, got {counts}")
    out = Path(out)
    per_split = _counts(counts)
    for dataset in dict.fromkeys(d for d, _ in SPLITS):
        root = out / dataset
        splits = {split: n for (d, split), n in per_split.items() if d == dataset}
        spec = {"seed": seed, "counts": splits, "version": GENERATOR_VERSION}
        marker = root / ".complete"
        jobs = [(dataset, s, i, seed, str(root)) for s, n in splits.items() for i in range(n)]
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == spec:
            missing = [job for job in jobs if not _sample_exists(job)]
            if missing:  # deleted files: the same seed draws the same bytes again
                print(f"{root}: {len(missing)} sample(s) missing, drawing them again")
                _draw(missing, workers)
            else:
                print(f"{root}: up to date (seed {seed})")
            continue
        if root.exists():
            shutil.rmtree(root)
        start = time.perf_counter()
        _draw(jobs, workers)
        write_json(marker, spec)
        print(f"{root}: {len(jobs)} samples in {time.perf_counter() - start:.1f} s")
