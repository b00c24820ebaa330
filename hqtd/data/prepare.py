"""``hqtd prepare``: check a raw dataset, write trainId labels and ``manifest.json``.

Two passes over the samples, both in parallel worker processes:

1. **check** every image and label from its PNG header and trailer — layout, pairing, pixel
   format, truncation, label size vs image size — and decode every image in full (damage inside
   the image data shows only then; the labels are decoded by pass 2). Any problem stops the
   command here with one line naming the files, before anything is written.
2. **convert** each raw label to a uint8 trainId PNG (255 = ignore) with one lookup-table pass,
   and with ``--resize WxH`` also write the resized image; count class pixels.

Outputs go to ``OUT`` only (``OUT/labels/<split>/<id>.png``, ``OUT/images/<split>/<id>.png`` when
resized, ``OUT/manifest.json``); the raw folder is only read. Every file is written atomically,
and the manifest last, so a killed run leaves complete files or none.

Freshness is decided by content, not by file times: every output PNG carries a text chunk
(:data:`SOURCE_KEY`) recording what it was made from — the prepared format version, the raw
file's size and SHA-256, the resize and, for labels, the SHA-256 of the dataset's lookup table
(:func:`~hqtd.data.formats.raw.label_table`). A second run reuses an output whose record equals
the current one, so an edited mapping or a replaced raw file (even one copied in with ``cp -p``,
which keeps the old mtime) is converted again; an unchanged manifest is left untouched. The
manifest lists each sample's source hashes and the table's hash, so its own hash (which
``hqtd train`` records) changes with them. Hashing reads every raw file that is converted (the
labels, and the images with ``--resize``) once per run.

A label whose ids all map to ignore (255) is listed under ``all_ignore`` in the manifest (the
key is present only when there is one) and a warning counts them: such a sample teaches nothing.
Temporary files that a killed run left in the output folders are deleted at the next start.

Label/image size mismatches (a few GTA5 samples): without ``--resize`` they are an error listing
the files; with ``--resize`` both are resized to WxH independently (which is what the authors'
loaders do to every sample) and the ids are recorded under ``size_mismatch`` in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from hqtd.data.formats import MANIFEST_NAME
from hqtd.data.formats.png import (
    check_image_header,
    read_image,
    read_label_png,
    read_png_header,
    resize_image,
    resize_label,
)
from hqtd.data.formats.raw import (
    RawSample,
    check_label_header,
    decode_label,
    label_table,
    list_samples,
    raise_problems,
)
from hqtd.data.labels import CLASS_NAMES
from hqtd.errors import HqtdError
from hqtd.io import atomic_path, file_sha256, sweep_temporaries, write_json

#: Version of the prepared form; part of every output's record, so changing how outputs are
#: made (a new value here) converts everything again.
MANIFEST_FORMAT = "hqtd-prepared-v2"
#: PNG text chunk key of an output's freshness record.
SOURCE_KEY = "hqtd-source"

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class _Job:
    """One sample to check and convert, with its output paths."""

    dataset: str
    split: str
    sample: RawSample
    label_out: Path
    image_out: Path | None  # only when images are resized
    resize: tuple[int, int] | None


@dataclass(frozen=True)
class _Checked:
    image_size: tuple[int, int]
    label_size: tuple[int, int]


@dataclass(frozen=True)
class _Converted:
    class_pixels: list[int]
    all_ignore: bool  # every label pixel is 255 (no id of the sample maps to a class)
    wrote: bool  # False when every output was already up to date
    sources: dict[str, str]  # "label" (and "image" when resized) -> SHA-256 of the raw file


def prepare(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    resize: tuple[int, int] | None = None,
    split_list: str | os.PathLike | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Check the raw dataset at ``root`` and write its prepared form to ``out``.

    Args:
        dataset: ``gta5``, ``synthia`` or ``cityscapes``.
        root: raw dataset folder (read only).
        out: prepared dataset folder (must not lie inside ``root``).
        resize: (W, H) to pre-resize images (bilinear) and labels (nearest) to.
        split_list: file of ids restricting the ``train`` split (see :func:`read_split_list`).
        workers: worker processes (1 = run in this process).

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        HqtdError: bad layout or input files, in one line naming them. Problems the check pass
            finds stop the command before anything is written; a file that only fails to decode
            during conversion leaves the other samples' complete outputs (reused by the next run)
            and no manifest.
    """
    root, out = Path(root), Path(out)
    if workers < 1:
        raise HqtdError(f"--workers must be at least 1, got {workers}")
    _check_out_outside_root(root, out)
    splits = list_samples(dataset, root)
    if split_list is not None:
        splits["train"] = _restrict(splits["train"], Path(split_list))
    jobs = [
        _job(dataset, split, sample, out, resize) for split in splits for sample in splits[split]
    ]

    checked = _check_all(jobs, workers, allow_size_mismatch=resize is not None)
    mismatched = [
        job for job, check in zip(jobs, checked, strict=True)
        if check.image_size != check.label_size
    ]  # fmt: skip
    for folder in (
        {out}
        | {job.label_out.parent for job in jobs}
        | {job.image_out.parent for job in jobs if job.image_out is not None}
    ):
        sweep_temporaries(folder)  # what a killed run left; complete outputs stay
    converted = _run(_convert, jobs, workers, f"{dataset}: convert")
    raise_problems([r for r in converted if isinstance(r, str)], "files could not be converted")

    manifest = _manifest(dataset, out, resize, jobs, checked, converted, mismatched)
    manifest_path = out / MANIFEST_NAME
    if _read_json(manifest_path) != manifest:
        write_json(manifest_path, manifest)
    ignored = sum(len(ids) for ids in manifest.get("all_ignore", {}).values())
    if ignored:
        print(f"{dataset}: warning: {ignored} label(s) hold no class (every id maps to ignore, "
              f"255); listed under all_ignore in {manifest_path}")  # fmt: skip
    wrote = sum(result.wrote for result in converted)
    counts = ", ".join(f"{split} {n}" for split, n in manifest["counts"].items())
    print(f"{dataset}: {counts} samples ({wrote} converted, {len(jobs) - wrote} up to date, "
          f"{len(mismatched)} size mismatches resized) -> {manifest_path}")  # fmt: skip
    return manifest


def read_split_list(path: Path) -> list[str]:
    """Sample ids from a split list: one per line, blank lines and ``#`` comments skipped.

    A line may be an id (``00001``), a file name (``00001.png``) or a path relative to the dataset
    (``images/00001.png``, ``aachen/aachen_000000_000019_leftImg8bit.png``), as the lists
    distributed with UDA code bases are.

    Raises:
        HqtdError: the file cannot be read.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise HqtdError(f"{path}: cannot read split list ({error})") from None
    entries = (line.split("#")[0].strip() for line in lines)
    names = (PurePosixPath(entry.replace("\\", "/")).name for entry in entries if entry)
    return [name.split(".")[0].removesuffix("_leftImg8bit") for name in names]


def _restrict(samples: list[RawSample], split_list: Path) -> list[RawSample]:
    """Keep the samples named in ``split_list``; every listed id must exist."""
    by_id = {_id_key(sample.id): sample for sample in samples}
    wanted = [_id_key(sample_id) for sample_id in read_split_list(split_list)]
    if not wanted:
        raise HqtdError(f"{split_list}: split list names no sample ids")
    missing = [sample_id for sample_id in wanted if sample_id not in by_id]
    if missing:
        raise HqtdError(
            f"{split_list}: {len(missing)} listed ids are not in the train split, "
            f"first: {', '.join(missing[:3])}"
        )
    return [by_id[sample_id] for sample_id in sorted(set(wanted))]


def _id_key(sample_id: str) -> str:
    """Numeric ids compare as numbers: the authors' GTA5 list says ``1`` for ``00001.png``."""
    return str(int(sample_id)) if sample_id.isdigit() else sample_id


def _check_out_outside_root(root: Path, out: Path) -> None:
    root_abs, out_abs = root.resolve(), out.resolve()
    if out_abs == root_abs or root_abs in out_abs.parents:
        raise HqtdError(f"{out}: --out must lie outside the raw dataset root {root}")


def _job(
    dataset: str, split: str, sample: RawSample, out: Path, resize: tuple[int, int] | None
) -> _Job:
    image_out = out / "images" / split / f"{sample.id}.png" if resize else None
    label_out = out / "labels" / split / f"{sample.id}.png"
    return _Job(dataset, split, sample, label_out, image_out, resize)


def _check_all(jobs: list[_Job], workers: int, allow_size_mismatch: bool) -> list[_Checked]:
    """Pass 1 over every sample; all problems found are reported together."""
    checked = _run(_check, jobs, workers, f"{jobs[0].dataset}: check")
    problems = [result for result in checked if isinstance(result, str)]
    if not allow_size_mismatch:
        problems += [
            f"{job.sample.label}: label is {_wxh(check.label_size)} but image "
            f"{job.sample.image} is {_wxh(check.image_size)} (pass --resize WxH to "
            f"resize both, or leave the id out with --split-list)"
            for job, check in zip(jobs, checked, strict=True)
            if isinstance(check, _Checked) and check.image_size != check.label_size
        ]
    raise_problems(problems, "bad input files")
    return checked


def _check(job: _Job) -> _Checked:
    """Pass 1: headers, pixel formats and completeness of one sample's files, without decoding."""
    image = read_png_header(job.sample.image)
    check_image_header(image, job.sample.image)
    read_image(job.sample.image)  # decodes all of it: damage inside the data fails here
    label = read_png_header(job.sample.label)
    check_label_header(job.dataset, label, job.sample.label)
    return _Checked(image.size, label.size)


def _convert(job: _Job) -> _Converted:
    """Pass 2: write the trainId label (and resized image) unless up to date; count classes."""
    label_size = job.resize or read_png_header(job.sample.label).size
    label_record = source_record(job.sample.label, job.resize, table_sha256(job.dataset))
    sources = {"label": label_record["source_sha256"]}
    wrote = False
    if _is_fresh(job.label_out, label_record, label_size):
        label = read_label_png(job.label_out)
    else:
        label = decode_label(job.dataset, job.sample.label)
        if job.resize:
            label = resize_label(label, job.resize)
        _save_png(Image.fromarray(label), job.label_out, label_record)
        wrote = True
    if job.image_out is not None:
        image_record = source_record(job.sample.image, job.resize)
        sources["image"] = image_record["source_sha256"]
        if not _is_fresh(job.image_out, image_record, job.resize):
            image = resize_image(read_image(job.sample.image), job.resize)
            _save_png(image, job.image_out, image_record)
            wrote = True
    pixels = np.bincount(label.ravel(), minlength=256)[: len(CLASS_NAMES)]
    all_ignore = not pixels.any()
    return _Converted(pixels.tolist(), all_ignore, wrote, sources)


def table_sha256(dataset: str) -> str:
    """SHA-256 of the lookup table that maps ``dataset``'s raw label ids to trainIds."""
    return hashlib.sha256(label_table(dataset).tobytes()).hexdigest()


def source_record(
    source: Path, resize: tuple[int, int] | None, table: str | None = None
) -> dict[str, Any]:
    """What an output made from ``source`` depends on (its freshness record): the prepared format,
    the raw file's size and SHA-256, the resize and, for a label, the lookup table's hash."""
    record = {
        "format": MANIFEST_FORMAT,
        "source_bytes": source.stat().st_size,
        "source_sha256": file_sha256(source),
        "resize": list(resize) if resize else None,
    }
    return record if table is None else record | {"label_table_sha256": table}


def _record_text(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def _is_fresh(output: Path, record: dict[str, Any], size: tuple[int, int]) -> bool:
    """True if ``output`` is a complete PNG of the expected size made from what ``record`` says."""
    try:
        with Image.open(output) as image:  # text chunks before the pixels: read without decoding
            if image.info.get(SOURCE_KEY) != _record_text(record):
                return False
        return read_png_header(output).size == tuple(size)
    except (OSError, SyntaxError, ValueError, HqtdError):
        return False


def _save_png(image: Image.Image, path: Path, record: dict[str, Any]) -> None:
    """Write ``image`` atomically with its freshness record as a PNG text chunk."""
    info = PngInfo()
    info.add_text(SOURCE_KEY, _record_text(record))
    # Low compression: several times faster to write, labels stay small anyway.
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1, pnginfo=info)


def _catch(fn: Callable[[_Job], _Result], job: _Job) -> _Result | str:
    """Run ``fn``; a user-facing error becomes its message so every sample gets checked."""
    try:
        return fn(job)
    except HqtdError as error:
        return str(error)


def _run(
    fn: Callable[[_Job], _Result], jobs: list[_Job], workers: int, desc: str
) -> list[_Result | str]:
    """``fn`` over ``jobs`` in order, in ``workers`` processes, with a progress bar."""
    task = partial(_catch, fn)
    bar = partial(tqdm, total=len(jobs), desc=desc, unit="img", disable=None)
    if workers == 1:
        return list(bar(map(task, jobs)))
    chunksize = max(1, len(jobs) // (workers * 32))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(bar(pool.map(task, jobs, chunksize=chunksize)))


def _manifest(
    dataset: str,
    out: Path,
    resize: tuple[int, int] | None,
    jobs: list[_Job],
    checked: Iterable[_Checked],
    converted: Iterable[_Converted],
    mismatched: list[_Job],
) -> dict[str, Any]:
    """The manifest of INTERFACES.md; paths relative to ``out``, sizes as ``WxH`` strings; each
    entry's ``sources`` holds the SHA-256 of its raw label (and image, when resized)."""

    def relative(path: Path) -> str:
        return Path(os.path.relpath(path.absolute(), out.absolute())).as_posix()

    splits: dict[str, list[dict[str, str]]] = {}
    class_pixels: dict[str, np.ndarray] = {}
    image_sizes: dict[str, Counter[str]] = {}
    for job, check, result in zip(jobs, checked, converted, strict=True):
        image = job.image_out or job.sample.image
        entry = {
            "id": job.sample.id,
            "image": relative(image),
            "label": relative(job.label_out),
            "sources": result.sources,
        }
        splits.setdefault(job.split, []).append(entry)
        class_pixels[job.split] = class_pixels.get(job.split, 0) + np.array(result.class_pixels)
        image_sizes.setdefault(job.split, Counter())[_wxh(check.image_size)] += 1
    all_ignore = {
        split: [job.sample.id for job, result in zip(jobs, converted, strict=True)
                if job.split == split and result.all_ignore]
        for split in splits
    }  # fmt: skip
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "resize": list(resize) if resize else None,
        "label_table_sha256": table_sha256(dataset),
        "splits": splits,
        "counts": {split: len(entries) for split, entries in splits.items()},
        "class_pixels": {split: counts.tolist() for split, counts in class_pixels.items()},
        "image_sizes": {split: dict(sorted(sizes.items())) for split, sizes in image_sizes.items()},
        "size_mismatch": {
            split: [job.sample.id for job in mismatched if job.split == split] for split in splits
        },
    }
    if any(all_ignore.values()):  # absent otherwise: the manifests of clean data stay as they were
        manifest["all_ignore"] = {split: ids for split, ids in all_ignore.items() if ids}
    return manifest


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
