"""What a training run writes as it goes: the JSON logs, TensorBoard events, checkpoints and the
``done`` marker. Rank 0 alone writes (:class:`RunLog`); the other DDP ranks get a
:class:`NullLog`, so the loop calls the same methods on every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from hqtd.data.labels import class_names
from hqtd.io import write_text
from hqtd.models.checkpoints import save_checkpoint


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (flushed: a kill loses at most this line, which a resume drops)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


class NullLog:
    """The log of every DDP rank but 0: :class:`RunLog`'s methods, writing nothing."""

    def train(self, record: dict[str, Any]) -> None:
        """Nothing (rank 0 logs the iteration)."""

    def val(self, record: dict[str, Any]) -> None:
        """Nothing (rank 0 logs the evaluation)."""

    def checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """Nothing (rank 0 saves the checkpoint)."""

    def finish(self, total: int) -> None:
        """Nothing (rank 0 marks the run done)."""


class RunLog:
    """What rank 0 writes: ``train_log.jsonl`` and ``val_log.jsonl``, the same scalars as
    TensorBoard events in ``tensorboard/`` (``tensorboard --logdir results/runs`` overlays runs),
    the checkpoints in ``checkpoints/`` and the ``done`` marker.

    Args:
        run_dir: the run directory.
        start: the iterations the run's last checkpoint holds. On a resume, TensorBoard hides
            the events that the interrupted attempt wrote for later iterations (``purge_step``),
            as :func:`hqtd.training.run_dir.truncate_log` drops them from the JSON logs.
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
        tqdm.write(f"iteration {step}: EMA mIoU {record['mIoU']} (percent) on target val")

    def checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """Save ``state`` as ``checkpoints/<name>``; the pending events reach the disk first, so a
        kill loses nothing logged before the checkpoint."""
        self.writer.flush()
        save_checkpoint(self.run_dir / "checkpoints" / name, state)

    def finish(self, total: int) -> None:
        """Close the events and mark the run complete (``done``)."""
        self.writer.close()
        write_text(self.run_dir / "done", f"finished {total} iterations\n")
