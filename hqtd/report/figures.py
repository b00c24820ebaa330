"""``hqtd figures``: per benchmark, per-class IoU bars, validation curves and a qualitative panel.

- ``iou_<benchmark>.png``: per-class IoU of source-only and the featured adaptation method (``full``
  when the grid has it), mean over seeds with the seed std as error bars, first protocol (paper);
- ``boundary_<benchmark>.png``: mIoU next to Boundary IoU and trimap mIoU (issue 14) of every
  method, mean over seeds with the seed std as error bars, first protocol (paper); only where the
  runs have ``per_image.npz``;
- ``curves_<benchmark>.png``: target-val mIoU of the EMA weights against training iteration, from
  each run's ``val_log.jsonl`` (mean over seeds, min-max band);
- ``diagnostics_<benchmark>.png``: the pseudo-label diagnostics of runs trained with
  ``train.diagnostics=N`` (:mod:`hqtd.adapt.diagnostics`) against training iteration: accuracy of
  ŷ^t, coverage of M^t, precision of the pasted labels overall and near the paste boundary (mean
  over seeds, min-max band); only where a run's ``val_log.jsonl`` has them;
- ``qualitative_<benchmark>.png``: a few target val images, their ground truth and the predictions
  of source-only and the featured method (lowest common seed, the protocol's checkpoint, EMA
  weights) in the Cityscapes palette. Needs the runs' checkpoints; without them it is skipped.

PNG files are deterministic for the same inputs: Agg rendering, fixed size and dpi, no software
or date metadata. Numbers come from the same per-run values as the tables (:mod:`.tables`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from hqtd.config import evaluation_config
from hqtd.data.datasets import SegmentationDataset
from hqtd.data.labels import colorize
from hqtd.determinism import cpu_kernels
from hqtd.errors import HqtdError
from hqtd.grid import SUPERVISED_STAGES, Grid, method_stage
from hqtd.io import atomic_path
from hqtd.models.checkpoints import load_weights
from hqtd.models.deeplabv2 import build_model
from hqtd.report.tables import RunScores, aggregate, collect, scores_of
from hqtd.runtime import images_to_float, resolve_device

DPI = 100
#: No "Software" (matplotlib version) entry: the bytes depend on the figure only.
PNG_METADATA = {"Software": None}
BASELINE = "source_only"
FEATURED = "full"
PANEL_IMAGES = 3
COLOURS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
           "#bcbd22", "#17becf")  # fmt: skip


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` atomically as a deterministic PNG."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)


def featured_method(methods: Iterable[str]) -> str | None:
    """The adaptation method the figures show against source-only: ``full`` if present, else the
    last adaptation method in grid order; None without any."""
    adapted = [m for m in methods if method_stage(m) not in SUPERVISED_STAGES]
    if FEATURED in adapted:
        return FEATURED
    return adapted[-1] if adapted else None


def iou_bars(scores: list[RunScores], benchmark: str, protocol: str, methods: list[str]) -> Figure:
    """Grouped bars: per class, one bar per method (mean over seeds, std error bars)."""
    runs = [s for s in scores if s.benchmark == benchmark and s.protocol == protocol]
    names = runs[0].class_names
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    for i, method in enumerate(methods):
        cells = [aggregate(s.iou[c] for s in runs if s.method == method) for c in range(len(names))]
        means = [math.nan if cell is None else cell.mean for cell in cells]
        stds = [0.0 if cell is None or math.isnan(cell.std) else cell.std for cell in cells]
        n = max((cell.n for cell in cells if cell is not None), default=0)
        offset = (i - (len(methods) - 1) / 2) * width
        colour, label = COLOURS[i % len(COLOURS)], f"{method} (n={n})"
        ax.bar(x + offset, means, width, yerr=stds, color=colour, label=label, capsize=1.5)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{benchmark}: per-class IoU on target val, {protocol} protocol", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def boundary_bars(scores: list[RunScores], benchmark: str, protocol: str) -> Figure | None:
    """Grouped bars: per score (mIoU, then Boundary IoU and trimap mIoU by band width), one bar
    per method (the benchmark's first headline mean, mean over seeds, std error bars); None
    when no run has boundary counts."""
    runs = [s for s in scores if s.benchmark == benchmark and s.protocol == protocol and s.extra]
    if not runs:
        return None
    metric = next(iter(runs[0].means))  # mIoU19 or mIoU16
    position = len(runs[0].class_names)  # the first mean's index in the extra columns
    columns = ["iou", *scores_of(runs[0].per_image)]
    methods = list(dict.fromkeys(s.method for s in runs))
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    x = np.arange(len(columns))
    for i, method in enumerate(methods):
        mine = [s for s in runs if s.method == method]
        cells = [
            aggregate(s.means[metric] if c == "iou" else s.extra[c][position] for s in mine)
            for c in columns
        ]
        means = [math.nan if cell is None else cell.mean for cell in cells]
        stds = [0.0 if cell is None or math.isnan(cell.std) else cell.std for cell in cells]
        offset = (i - (len(methods) - 1) / 2) * width
        label = f"{method} (n={len(mine)})"
        ax.bar(x + offset, means, width, yerr=stds, color=COLOURS[i % len(COLOURS)], label=label,
               capsize=1.5)  # fmt: skip
    labels = [metric if c == "iou" else f"{c.removesuffix('_iou')}" for c in columns]
    ax.set_xticks(x, [label.replace("boundary", "Boundary IoU") for label in labels], fontsize=8)
    ax.set_ylabel(f"mean over classes (%) ({metric} classes)")
    ax.set_ylim(0, 100)
    title = f"{benchmark}: boundary quality on target val, {protocol} protocol"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def read_val_log(path: Path) -> list[tuple[int, float]]:
    """(iteration, mIoU) pairs of a ``val_log.jsonl``, in file order.

    Raises:
        HqtdError: a line that is not a JSON object with ``iteration`` and ``mIoU``.
    """
    points = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            value = record["mIoU"]
            points.append((int(record["iteration"]), math.nan if value is None else float(value)))
        except (ValueError, KeyError, TypeError):
            raise HqtdError(
                f"{path}:{number}: expected a JSON object with iteration and mIoU"
            ) from None
    return points


def seed_curve(ax: Any, seeds: list[list[tuple[int, float]]], colour: str, **style: Any) -> None:
    """One line on ``ax``: the mean over ``seeds`` (one list of (iteration, value) points each)
    at the iterations all seeds logged, with the seeds' min-max as a band."""
    common = sorted(set.intersection(*(set(dict(points)) for points in seeds)))
    values = np.array([[dict(points)[it] for it in common] for points in seeds])  # (seeds, T)
    ax.plot(common, values.mean(0), marker="o", ms=3, color=colour, **style)
    if len(seeds) > 1:
        ax.fill_between(common, values.min(0), values.max(0), color=colour, alpha=0.2, lw=0)


def val_curves(curves: dict[str, list[list[tuple[int, float]]]], benchmark: str) -> Figure:
    """One line per method: mean over its seeds at the iterations all seeds logged, with the
    seeds' min-max as a band. ``curves[method]`` holds one list of points per seed."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for i, (method, seeds) in enumerate(curves.items()):
        seed_curve(ax, seeds, COLOURS[i % len(COLOURS)], label=f"{method} (n={len(seeds)})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("target val mIoU (%)")
    ax.set_title(f"{benchmark}: EMA weights during training", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def read_diagnostics(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(iteration, diagnostics) of the ``val_log.jsonl`` entries that have pseudo-label
    diagnostics (``train.diagnostics``), in file order."""
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [(r["iteration"], r["diagnostics"]) for r in records if "diagnostics" in r]


#: The panels of :func:`diagnostic_curves`: title, then (diagnostics key, line style) per line.
DIAGNOSTIC_PANELS = (
    ("accuracy of ŷ^t", (("pseudo_label_accuracy", "-"),)),
    ("coverage of M^t", (("coverage", "-"),)),
    ("pasted labels' precision\n(dashed: near the boundary)",
     (("paste_precision", "-"), ("paste_precision_boundary", "--"))),
)  # fmt: skip


def diagnostic_curves(
    curves: dict[str, list[list[tuple[int, dict[str, Any]]]]], benchmark: str
) -> Figure:
    """The pseudo-label diagnostics against iteration, a panel per quantity
    (:data:`DIAGNOSTIC_PANELS`), one colour per method: mean over its seeds at the iterations all
    seeds logged, min-max band. ``curves[method]`` holds one :func:`read_diagnostics` list per
    seed; an undefined value (null) is a gap."""
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, len(DIAGNOSTIC_PANELS), sharex=True)
    for ax, (title, lines) in zip(axes, DIAGNOSTIC_PANELS, strict=True):
        for i, (method, seeds) in enumerate(curves.items()):
            for key, style in lines:
                points = [[(it, math.nan if d[key] is None else d[key]) for it, d in seed]
                          for seed in seeds]  # fmt: skip
                label = f"{method} (n={len(seeds)})" if style == "-" else None
                seed_curve(ax, points, COLOURS[i % len(COLOURS)], ls=style, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("fraction of pixels")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{benchmark}: target pseudo-labels on fixed labelled train images", fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def predict(run_dir: Path, protocol: str, indices: list[int]) -> tuple[list, list, list, int]:
    """Target val images, labels and predictions of a run's EMA weights (the protocol's checkpoint),
    at the paper protocol's size (the benchmark's target size, where the network runs).

    Returns:
        images (H,W,3) uint8, labels (H,W) and predictions (H,W) as numpy arrays, num_classes.
    """
    config = evaluation_config([f"run_dir={run_dir}", f"protocol={protocol}"])
    checkpoint = Path(run_dir) / "checkpoints" / f"{config.protocol.checkpoint.value}.pt"
    device = resolve_device(config.train.device, config.train.threads)
    model = build_model(config.model)
    load_weights(model, checkpoint)
    model.to(device).eval()
    bench = config.benchmark
    split, size = bench.target_val.split, tuple(bench.target_size)
    val = SegmentationDataset(bench.target_val.root, split, size, bench.num_classes, train=False)
    images, labels, preds = [], [], []
    for index in indices:
        item = val[index]
        image = images_to_float(item["image"][None], device, False)
        with cpu_kernels(config.train.determinism, config.train.threads):
            logits = model(image, aux=False).main  # (1,C,H,W)
        images.append(item["image"].permute(1, 2, 0).numpy())
        labels.append(item["label"].numpy())
        preds.append(logits.argmax(1)[0].cpu().numpy())
    return images, labels, preds, bench.num_classes


def panel_indices(run_dir: Path, count: int = PANEL_IMAGES) -> list[int]:
    """``count`` evenly spaced indices into the run's target val split."""
    config = evaluation_config([f"run_dir={run_dir}"])
    bench = config.benchmark
    split = bench.target_val.split
    val = SegmentationDataset(bench.target_val.root, split, None, bench.num_classes, train=False)
    return sorted({int(i) for i in np.linspace(0, len(val) - 1, min(count, len(val)))})


def qualitative_panel(baseline_dir: Path, featured_dir: Path, protocol: str) -> Figure:
    """Rows of target image | ground truth | baseline prediction | featured prediction."""
    indices = panel_indices(baseline_dir)
    images, labels, base, classes = predict(baseline_dir, protocol, indices)
    *_, adapted, _ = predict(featured_dir, protocol, indices)
    titles = ("target image", "ground truth", baseline_dir.parent.name, featured_dir.parent.name)
    height, width = labels[0].shape
    fig = Figure(figsize=(8, 8 / 4 * height / width * len(indices) + 0.4))
    axes = fig.subplots(len(indices), 4, squeeze=False)
    for row, panels in enumerate(zip(images, labels, base, adapted, strict=True)):
        image, *maps = panels
        for col, picture in enumerate(
            [image, *(colorize(m.astype(np.uint8), classes) for m in maps)]
        ):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.03, hspace=0.05)
    return fig


def write_figures(runs: Path, out: Path, grid: Grid | str) -> list[Path]:
    """``hqtd figures``: the three figures of every benchmark with evaluated runs under ``runs``.

    Args:
        runs: the grid's runs folder (``results/runs/<grid>``).
        out: the figures folder (``results/figures/<grid>``).
        grid: only the runs of this grid (a name or a :class:`~hqtd.grid.Grid`, see
            :func:`hqtd.report.tables.collect`).

    Returns:
        the files written.
    """
    runs, out = Path(runs), Path(out)
    scores = collect(runs, grid)
    protocol = scores[0].protocol  # the first in table order: paper
    written = []
    for bench in dict.fromkeys(s.benchmark for s in scores):
        mine = [s for s in scores if s.benchmark == bench and s.protocol == protocol]
        methods = list(dict.fromkeys(s.method for s in mine))
        featured = featured_method(methods)
        shown = [m for m in (BASELINE, featured) if m in methods]
        if shown:
            written.append(out / f"iou_{bench}.png")
            save_png(iou_bars(scores, bench, protocol, shown), written[-1])
        boundary = boundary_bars(scores, bench, protocol)
        if boundary is not None:
            written.append(out / f"boundary_{bench}.png")
            save_png(boundary, written[-1])

        curves: dict[str, list] = {}
        diagnostics: dict[str, list] = {}
        for s in mine:
            log = runs / bench / s.method / f"seed{s.seed}" / "val_log.jsonl"
            if log.is_file():
                curves.setdefault(s.method, []).append(read_val_log(log))
                if diagnosed := read_diagnostics(log):
                    diagnostics.setdefault(s.method, []).append(diagnosed)
        if curves:
            written.append(out / f"curves_{bench}.png")
            save_png(val_curves(curves, bench), written[-1])
        if diagnostics:
            written.append(out / f"diagnostics_{bench}.png")
            save_png(diagnostic_curves(diagnostics, bench), written[-1])

        seeds = sorted(
            {s.seed for s in mine if s.method == BASELINE}
            & {s.seed for s in mine if s.method == featured}
        )
        if not seeds:
            continue
        pair = [runs / bench / m / f"seed{seeds[0]}" for m in (BASELINE, featured)]
        if not all(any((d / "checkpoints").glob("*.pt")) for d in pair):
            print(f"{bench}: no checkpoints in {pair[0]} and {pair[1]}, qualitative panel skipped")
            continue
        written.append(out / f"qualitative_{bench}.png")
        save_png(qualitative_panel(pair[0], pair[1], protocol), written[-1])
    print(f"{out}: {len(written)} figures")
    return written
