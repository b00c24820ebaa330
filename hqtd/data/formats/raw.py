"""A raw dataset on disk, by name: its samples per split, and its label files checked and decoded
as trainIds, each through the module of its layout (what ``hqtd prepare`` and the figures read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from hqtd.data.formats import DATASETS, cityscapes, gta5, synthia
from hqtd.data.formats.png import PngHeader
from hqtd.errors import HqtdError


@dataclass(frozen=True)
class RawSample:
    """One image and its label in a raw dataset."""

    id: str
    image: Path
    label: Path


def layout(dataset: str) -> ModuleType:
    """The module that reads and writes ``dataset``'s layout (:mod:`hqtd.data.formats.gta5`, ...).

    Raises:
        HqtdError: not one of :data:`~hqtd.data.formats.DATASETS`.
    """
    if dataset not in DATASETS:
        raise HqtdError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return {"gta5": gta5, "synthia": synthia, "cityscapes": cityscapes}[dataset]


def label_format(dataset: str) -> ModuleType:
    """The module that checks and decodes ``dataset``'s label files: GTA5's hold Cityscapes
    labelIds and are read as Cityscapes' are.

    Raises:
        HqtdError: not one of :data:`~hqtd.data.formats.DATASETS`.
    """
    return cityscapes if dataset == "gta5" else layout(dataset)


def label_table(dataset: str) -> np.ndarray:
    """The lookup table from a dataset's raw label ids to trainIds (see :func:`decode_label`)."""
    return label_format(dataset).LABEL_TABLE


def check_label_header(dataset: str, header: PngHeader, path: Path) -> None:
    """A raw label must be in its dataset's format.

    Raises:
        HqtdError: naming the file, what was expected and what was found.
    """
    label_format(dataset).LABEL_PNG.check(header, path)


def decode_label(dataset: str, path: Path) -> np.ndarray:
    """Read a raw label file and map its ids to trainIds in one lookup-table pass.

    Returns:
        (H, W) uint8 trainIds, 255 = ignore.

    Raises:
        HqtdError: the file cannot be decoded or has the wrong pixel format.
    """
    return label_format(dataset).decode_label(path)


def list_samples(dataset: str, root: Path) -> dict[str, list[RawSample]]:
    """Find every image/label pair of a raw dataset, per split, sorted by id.

    GTA5 and SYNTHIA have one split, ``train`` (everything); Cityscapes has ``train`` and ``val``.
    The files are found where the layout's ``sample_paths`` puts them (with ``*`` for the id).

    Raises:
        HqtdError: the root or a layout folder is missing, or an image lacks its label or a label
            its image (all such files are counted, the first few named).
    """
    module = layout(dataset)
    if not root.is_dir():
        raise HqtdError(f"{root}: dataset root does not exist (expected {module.LAYOUT})")
    for split in module.SPLITS:
        for pattern in module.sample_paths(split, "*"):
            folder = root / pattern.split("*")[0]
            if not folder.is_dir():
                raise HqtdError(f"{folder}: missing folder (expected {module.LAYOUT})")
    return {split: _pair(module, root, split) for split in module.SPLITS}


def raise_problems(problems: list[str], what: str) -> None:
    """Raise one one-line HqtdError for a list of problems (count, then the first three)."""
    if len(problems) == 1:
        raise HqtdError(problems[0])
    if problems:
        shown = "; ".join(problems[:3])
        more = f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise HqtdError(f"{len(problems)} {what}: {shown}{more}")


def _pair(module: ModuleType, root: Path, split: str) -> list[RawSample]:
    """Match a split's images and labels by id; an unmatched file is an error naming the missing
    partner, and so is a folder without images."""
    image_glob, label_glob = module.sample_paths(split, "*")
    images, labels = _files_by_id(root, image_glob), _files_by_id(root, label_glob)

    def expected(sample_id: str, which: int) -> Path:
        return root / module.sample_paths(split, sample_id)[which]

    problems = [
        f"{images[i]}: image has no label (expected {expected(i, 1)})"
        for i in sorted(images.keys() - labels.keys())
    ] + [
        f"{labels[i]}: label has no image (expected {expected(i, 0)})"
        for i in sorted(labels.keys() - images.keys())
    ]
    raise_problems(problems, "unpaired files")
    if not images:
        raise HqtdError(f"{root / image_glob.split('*')[0]}: no images found")
    return [RawSample(i, images[i], labels[i]) for i in sorted(images)]


def _files_by_id(root: Path, pattern: str) -> dict[str, Path]:
    """The files matching a layout path whose id is ``*``, by id (the file name up to the part
    of the pattern after its last ``*``)."""
    suffix = pattern.rsplit("*", 1)[1]
    return {path.name[: -len(suffix)]: path for path in root.glob(pattern)}
