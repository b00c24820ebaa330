"""``hqtd tables``: per-class, ablation and summary tables from the runs' evaluation files.

Input: ``<runs>/<benchmark>/<method>/seed<k>/eval/<protocol>/metrics.json`` (which run and protocol;
``<runs>`` is a grid's ``results/runs/<grid>``) and the ``confusion.npy`` beside it, from which
every number is recomputed: per-class IoU and the headline means (mIoU19, or mIoU16 and mIoU13 for
16-class benchmarks) of each run. A table cell is the mean ± sample std over seeds of these per-run
values; the number of seeds is stated in the caption, and cells built from fewer or more runs than
the rest carry their own ``(n=K)``.

Output, byte-stable (no timestamps, fixed formats), in ``out``:
- ``runs.csv``: tidy, one row per run x protocol x class (and one per headline mean), each
  with the evaluation's provenance (:data:`hqtd.provenance.KEYS`; empty where an older
  ``metrics.json`` has none);
- ``perclass_<benchmark>_<protocol>``, ``ablation_<protocol>`` and ``summary`` tables, each as
  ``.md`` (tabulate pipe), ``.tex`` (booktabs), ``.csv`` (means and stds) and ``.html`` (for the
  Snakemake report). Rows follow the grid's order; the best mean of each column is bold (the oracle
  is an upper bound, not a competitor, and reported numbers are references: neither is marked).
  Tables of the paper's benchmarks (gta5, synthia) add the paper's reported mIoUs as
  "(reported)" rows. Captions name the supervised run each adapted row started from.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from hqtd.config import ScoringConfig, checked_scoring, from_yaml, load_config
from hqtd.data.labels import SUBSET_13_OF_16
from hqtd.errors import HqtdError
from hqtd.grid import (
    SUPERVISED_STAGES,
    Grid,
    Run,
    load_grid,
    method_stage,
    protocols,
    source_method,
)
from hqtd.io import write_text
from hqtd.metrics import (
    bootstrap_mean_iou,
    iou_from_counts,
    iou_per_class,
    paired_delta_interval,
    summary,
)
from hqtd.provenance import KEYS as PROVENANCE_KEYS

#: Cityscapes val mIoUs the paper reports (METHOD.md §7, DeepLab-V2 R101, the paper's protocol).
REPORTED: dict[str, dict[str, dict[str, float]]] = {
    "gta5": {
        "EHTDI": {"mIoU19": 58.8},
        "EHTDI + edge": {"mIoU19": 62.0},
        "ProDA": {"mIoU19": 57.5},
        "DACS": {"mIoU19": 52.1},
        "PixMatch": {"mIoU19": 50.3},
    },
    "synthia": {
        "EHTDI": {"mIoU16": 57.8, "mIoU13": 64.6},
        "EHTDI + edge": {"mIoU16": 61.3, "mIoU13": 69.2},
        "ProDA": {"mIoU16": 55.5, "mIoU13": 62.0},
        "DACS": {"mIoU16": 48.3, "mIoU13": 54.8},
        "PixMatch": {"mIoU16": 46.1, "mIoU13": 54.5},
    },
}
#: Methods never marked best: an upper bound trained on target labels.
NOT_COMPETING = ("oracle",)
DECIMALS = 1
#: The method every other one is compared with in the ``ablation_delta`` tables.
REFERENCE_METHOD = "baseline"
#: ``per_image.npz`` counts beside ``runs.csv``'s ``iou``: Boundary IoU, then trimap widths.
BOUNDARY_SCORE = "boundary_iou"
TRIMAP_SCORE = re.compile(r"^trimap(\d+)_iou$")


# ------------------------------------------------------------------------------------------------
# Reading the runs


@dataclass(frozen=True)
class RunScores:
    """The per-run numbers of one evaluated run under one protocol (all in percent)."""

    benchmark: str
    method: str
    seed: int
    protocol: str
    checkpoint: str
    iteration: int | None
    class_names: tuple[str, ...]
    iou: tuple[float, ...]  # NaN where the class is absent from ground truth and prediction
    means: dict[str, float]  # mIoU19, or mIoU16 and mIoU13
    provenance: dict[str, str]  # PROVENANCE_KEYS -> value as text, "" where not recorded
    # per_image.npz beside metrics.json (issue 14): "<score>_intersection"/"_union" -> (N, C);
    # empty for an evaluation from before hqtd wrote it
    per_image: dict[str, np.ndarray]
    # runs.csv's columns after ``iou``: column -> per-class values then headline means (percent)
    extra: dict[str, tuple[float, ...]]


def headline_metrics(num_classes: int) -> tuple[str, ...]:
    """The mean-IoU columns of a benchmark, as :func:`hqtd.metrics.summary` names them: mIoU19, or
    mIoU16 and mIoU13 (METHOD.md §1)."""
    return tuple(k for k in summary(np.eye(num_classes)) if k not in ("mIoU", "pixel_accuracy"))


def read_run(metrics_path: Path, scoring: ScoringConfig | None = None) -> RunScores:
    """Read one ``metrics.json`` and recompute its numbers from the ``confusion.npy`` beside it
    (and its boundary metrics and bootstrap intervals from ``per_image.npz``, when present;
    ``scoring`` gives the bootstrap's draws, confidence and seed).

    Raises:
        HqtdError: unreadable or incomplete files, or a matrix that does not fit the class names.
    """
    try:
        meta = json.loads(metrics_path.read_text())
        names = tuple(meta["class_names"])
        fields = (meta["benchmark"], meta["method"], int(meta["seed"]), meta["protocol"])
        protocol, checkpoint = fields[3]["name"], str(fields[3]["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HqtdError(f"{metrics_path}: not a valid metrics.json ({error!r})") from None
    conf_path = metrics_path.with_name("confusion.npy")
    try:
        conf = np.load(conf_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise HqtdError(f"{conf_path}: cannot read the confusion matrix ({error})") from None
    if conf.shape != (len(names), len(names)):
        raise HqtdError(
            f"{conf_path}: shape {conf.shape} does not match the {len(names)} class names"
        )
    means = summary(conf)
    recorded = meta.get("provenance") or {"git_revision": meta.get("git_revision")}
    per_image = read_per_image(metrics_path.with_name("per_image.npz"), len(names))
    check_per_image(per_image, conf, metrics_path.with_name("per_image.npz"))
    headline = headline_subsets(len(names))
    extra = extra_columns(per_image, headline, scoring or ScoringConfig())
    return RunScores(
        benchmark=fields[0],
        method=fields[1],
        seed=fields[2],
        protocol=protocol,
        checkpoint=checkpoint,
        iteration=meta.get("iteration"),
        class_names=names,
        iou=tuple(float(v) * 100.0 for v in iou_per_class(conf)),
        means={key: means[key] * 100.0 for key in headline_metrics(len(names))},
        provenance={key: _text(recorded.get(key)) for key in PROVENANCE_KEYS},
        per_image=per_image,
        extra=extra,
    )


def headline_subsets(num_classes: int) -> dict[str, list[int] | None]:
    """Headline mean -> the class indices it averages (None: all), e.g. mIoU13's 13 of 16."""
    return {m: SUBSET_13_OF_16 if m == "mIoU13" else None for m in headline_metrics(num_classes)}


def read_per_image(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    """The (N, C) count arrays of ``per_image.npz``; empty when the file does not exist.

    Raises:
        HqtdError: an unreadable file or arrays of another class count.
    """
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise HqtdError(f"{path}: cannot read the per-image counts ({error})") from None
    if any(a.ndim != 2 or a.shape[1] != num_classes for a in arrays.values()):
        raise HqtdError(f"{path}: expected (images, {num_classes}) count arrays")
    return arrays


def check_per_image(per_image: dict[str, np.ndarray], conf: np.ndarray, path: Path) -> None:
    """The per-image IoU counts must sum to the confusion matrix of the same evaluation.

    Raises:
        HqtdError: they do not (files of two evaluations mixed).
    """
    if not per_image:
        return
    diagonal = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - diagonal
    summed = (per_image["iou_intersection"].sum(0), per_image["iou_union"].sum(0))
    if not (np.array_equal(summed[0], diagonal) and np.array_equal(summed[1], union)):
        raise HqtdError(f"{path}: per-image counts do not sum to confusion.npy")


def scores_of(per_image: dict[str, np.ndarray]) -> list[str]:
    """The scores of ``per_image.npz`` after ``iou``: Boundary IoU, then trimap by width."""
    names = {key.rsplit("_", 1)[0] for key in per_image if key.endswith("_intersection")}
    trimaps = sorted((n for n in names if TRIMAP_SCORE.match(n)), key=_trimap_width)
    return [BOUNDARY_SCORE] * (BOUNDARY_SCORE in names) + trimaps


def _trimap_width(score: str) -> int:
    return int(TRIMAP_SCORE.match(score).group(1))


def extra_columns(
    per_image: dict[str, np.ndarray],
    headline: dict[str, list[int] | None],
    scoring: ScoringConfig,
) -> dict[str, tuple[float, ...]]:
    """``runs.csv``'s columns from per-image counts, per class then per headline mean, in
    percent: the bootstrap interval of ``iou`` (``iou_low``, ``iou_high``; means only, classes
    NaN), each score of :func:`scores_of` and the interval of Boundary IoU's means."""
    if not per_image:
        return {}
    columns = {}
    for score in ["iou", *scores_of(per_image)]:
        inter, union = per_image[f"{score}_intersection"], per_image[f"{score}_union"]
        iou = 100.0 * iou_from_counts(inter, union)
        if score != "iou":
            columns[score] = (*iou, *(_mean(iou, subset) for subset in headline.values()))
        if score in ("iou", BOUNDARY_SCORE):
            intervals = [
                bootstrap_mean_iou(
                    inter,
                    union,
                    scoring.bootstrap_draws,
                    scoring.confidence,
                    scoring.bootstrap_seed,
                    subset,
                )
                for subset in headline.values()
            ]
            blank = (math.nan,) * len(iou)
            for side, name in enumerate(("low", "high")):
                columns[f"{score}_{name}"] = (*blank, *(100.0 * i[side] for i in intervals))
    return columns


def _mean(values: np.ndarray, subset: list[int] | None) -> float:
    """Mean of the defined values (of a subset of indices); NaN when none is defined."""
    chosen = values if subset is None else values[list(subset)]  # a tuple would index axes
    return float(np.nanmean(chosen)) if np.isfinite(chosen).any() else math.nan


def _text(value: object) -> str:
    """A provenance value as one CSV field ("" when missing)."""
    return "" if value is None else str(value)


def _order(values: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """``values`` sorted by their position in ``preferred``, unknown ones after, alphabetically."""
    rank = {value: i for i, value in enumerate(dict.fromkeys(preferred))}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def _named_by(metrics_path: Path) -> tuple[str, str, str, str]:
    """(benchmark, method, seed<k>, protocol) that a ``.../eval/<protocol>/metrics.json`` names."""
    benchmark, method, seed, _, protocol, _ = metrics_path.parts[-6:]
    return benchmark, method, seed, protocol


#: Saved-config keys that say where a run lives, not what it computed.
PLACE_KEYS = ("run_dir", "data_root", "train.init_checkpoint")


def config_mismatch(run_dir: Path, run: Run, grid: Grid) -> list[str]:
    """Keys whose value in ``run_dir/config.yaml`` differs from the config the grid would train
    ``run`` with (its benchmark, method, seed and overrides); [] without a saved config."""
    from hqtd.training.run_dir import config_differences  # torch: only with configs to compare

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = from_yaml(saved_path)
    expected = load_config(run.train_overrides(saved.data_root, grid.overrides))
    differing = config_differences(saved, expected)
    return [key for key in differing if key not in PLACE_KEYS and not key.endswith(".root")]


def grid_paths(paths: list[Path], grid: Grid) -> list[Path]:
    """The evaluation files of ``grid``'s runs whose saved config is the grid's. The others are
    left out with a warning on stderr naming them (e.g. seeds the grid no longer has, or runs of
    an older schedule)."""
    wanted = {(r.benchmark, r.method, f"seed{r.seed}"): r for r in grid.runs()}
    others = sorted({"/".join(_named_by(p)[:3]) for p in paths if _named_by(p)[:3] not in wanted})
    if others:
        _warn(f"left out {len(others)} run(s) not in grid {grid.folder}: {', '.join(others)}")
    mismatched: dict[Path, list[str]] = {}
    kept = []
    for path in (p for p in paths if _named_by(p)[:3] in wanted):
        run_dir = path.parents[2]
        if run_dir not in mismatched:
            mismatched[run_dir] = config_mismatch(run_dir, wanted[_named_by(path)[:3]], grid)
        if not mismatched[run_dir]:
            kept.append(path)
    for run_dir, keys in mismatched.items():
        if keys:
            _warn(
                f"left out {run_dir}: its config differs from grid {grid.folder}'s in "
                f"{', '.join(keys)}"
            )
    return kept


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def collect(runs: Path, grid: Grid | str, scoring: ScoringConfig | None = None) -> list[RunScores]:
    """The evaluated runs of ``grid`` (a name or a :class:`~hqtd.grid.Grid`) under ``runs`` (see
    :func:`grid_paths`), in table order: benchmark and method in grid order, then protocol, then
    seed; ``scoring``: the bootstrap settings (:func:`read_run`).

    Raises:
        HqtdError: no evaluation found, or a file whose contents contradict its path.
    """
    grid = load_grid(grid) if isinstance(grid, str) else grid
    paths = grid_paths(sorted(runs.glob("*/*/seed*/eval/*/metrics.json")), grid)
    if not paths:
        raise HqtdError(f"{runs}: no */*/seed*/eval/*/metrics.json found (run hqtd evaluate first)")
    scores = [read_run(path, scoring) for path in paths]
    for path, s in zip(paths, scores, strict=True):
        if (s.benchmark, s.method, f"seed{s.seed}", s.protocol) != _named_by(path):
            raise HqtdError(f"{path}: describes {s.benchmark}/{s.method}/seed{s.seed}/{s.protocol}")
    bench_rank = {
        b: i for i, b in enumerate(_order((s.benchmark for s in scores), grid.benchmarks))
    }
    method_rank = {m: i for i, m in enumerate(_order((s.method for s in scores), grid.methods))}
    proto_rank = {p: i for i, p in enumerate(_order((s.protocol for s in scores), protocols()))}
    return sorted(
        scores,
        key=lambda s: (
            bench_rank[s.benchmark],
            method_rank[s.method],
            proto_rank[s.protocol],
            s.seed,
        ),
    )


def tidy_frame(scores: list[RunScores]) -> pd.DataFrame:
    """``runs.csv``: one row per run x protocol x class, then one per headline mean; after
    ``iou`` the columns of :func:`extra_columns` (empty where a run has no ``per_image.npz``),
    then the run's provenance columns."""
    extra_names = _extra_column_names(scores)
    rows = []
    for s in scores:
        keys = {
            "benchmark": s.benchmark,
            "method": s.method,
            "seed": s.seed,
            "protocol": s.protocol,
            "checkpoint": s.checkpoint,
            "iteration": s.iteration,
        }
        metrics = [*s.class_names, *s.means]
        for i, (metric, value) in enumerate(zip(metrics, [*s.iou, *s.means.values()], strict=True)):
            extra = {c: s.extra[c][i] if c in s.extra else math.nan for c in extra_names}
            rows.append({**keys, "metric": metric, "iou": value, **extra, **s.provenance})
    frame = pd.DataFrame(rows)
    frame["iteration"] = frame["iteration"].astype("Int64")
    return frame


# ------------------------------------------------------------------------------------------------
# Table model


@dataclass(frozen=True)
class Cell:
    """Mean ± sample std over the n runs of one table cell (std NaN when n < 2); a difference
    cell has a confidence interval [low, high] instead of a std (NaN otherwise)."""

    mean: float
    std: float
    n: int
    low: float = math.nan
    high: float = math.nan

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell | None, ...]
    competing: bool  # eligible for the bold "best" mark
    reported: bool = False  # a published number, not a run of ours


@dataclass(frozen=True)
class Table:
    name: str
    caption: str
    first_column: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def aggregate(values: Iterable[float]) -> Cell | None:
    """Mean and sample std (ddof=1) over the defined values; None when none is defined."""
    defined = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if defined.size == 0:
        return None
    std = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
    return Cell(float(defined.mean()), std, int(defined.size))


def _extra_column_names(scores: list[RunScores]) -> list[str]:
    """The extra columns of any run, ``iou_low``/``iou_high`` first, then by score."""
    names = dict.fromkeys(name for s in scores for name in s.extra)
    return sorted(names, key=lambda n: (not n.startswith("iou_"), list(names).index(n)))


def _value_lookup(
    scores: list[RunScores], column: str = "iou"
) -> dict[tuple[str, str, str, str], list[float]]:
    """(benchmark, protocol, method, metric) -> the per-run values over seeds of ``runs.csv``'s
    ``column`` (``iou`` or an extra column)."""
    lookup: dict[tuple[str, str, str, str], list[float]] = {}
    for s in scores:
        if column == "iou":
            values = [*s.iou, *s.means.values()]
        elif column in s.extra:
            values = list(s.extra[column])
        else:
            continue
        for metric, value in zip([*s.class_names, *s.means], values, strict=True):
            lookup.setdefault((s.benchmark, s.protocol, s.method, metric), []).append(value)
    return lookup


def _measured_rows(
    methods: list[str], columns: list[tuple[str, str, str]], lookup: dict
) -> list[Row]:
    """One row per method; ``columns`` are (benchmark, protocol, metric) triples."""
    rows = []
    for method in methods:
        cells = tuple(aggregate(lookup.get((b, p, method, m), [])) for b, p, m in columns)
        rows.append(Row(method, cells, competing=method not in NOT_COMPETING))
    return rows


def _reported_rows(columns: list[tuple[str, str, str]]) -> list[Row]:
    """The paper's numbers for the columns of its benchmarks under the paper protocol."""
    names = dict.fromkeys(n for b, _, _ in columns for n in REPORTED.get(b, {}))
    rows = []
    for name in names:
        cells = tuple(
            Cell(REPORTED[b][name][m], math.nan, 0)
            if p == "paper" and m in REPORTED.get(b, {}).get(name, {})
            else None
            for b, p, m in columns
        )
        rows.append(Row(f"{name} (reported)", cells, competing=False, reported=True))
    return rows


def typical_n(rows: Iterable[Row]) -> int:
    """The most common number of runs per cell of our own rows (the n a caption states)."""
    counts = Counter(c.n for row in rows if not row.reported for c in row.cells if c is not None)
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def _sources_note(methods: Iterable[str]) -> str:
    """Which supervised run the adapted rows started from (their ``method.source_method``, e.g.
    ``source_only_official`` for ``official``, METHOD.md §8.3); empty without adapted rows."""
    by_source: dict[str, list[str]] = {}
    for method in methods:
        if method_stage(method) not in SUPERVISED_STAGES:
            by_source.setdefault(source_method(method), []).append(method)
    if not by_source:
        return ""
    if len(by_source) == 1:
        return f"; adapted rows start from their seed's {next(iter(by_source))} run"
    groups = [f"{source} ({', '.join(adapted)})" for source, adapted in by_source.items()]
    return "; adapted rows start from their seed's run of " + " or ".join(groups)


def _caption(title: str, rows: list[Row]) -> str:
    n = typical_n(rows)
    text = f"{title}. Mean ± std over seeds, n={n}"
    if any(c.n != n for row in rows if not row.reported for c in row.cells if c is not None):
        text += " (cells with another n say so)"
    text += "; best mean per column in bold"
    if any(not row.competing and not row.reported for row in rows):
        text += " (oracle excluded)"
    text += _sources_note(row.label for row in rows if not row.reported)
    if any(row.reported for row in rows):
        text += "; (reported): published Cityscapes val numbers, paper protocol"
    return text + "."


def build_tables(scores: list[RunScores], scoring: ScoringConfig | None = None) -> list[Table]:
    """Per-class tables per benchmark x protocol, an ablation table per protocol and a summary;
    where runs have ``per_image.npz``, a boundary table and an ``ablation_delta`` table (paired
    differences to :data:`REFERENCE_METHOD`, bootstrap settings from ``scoring``) per protocol."""
    lookup = _value_lookup(scores)
    benchmarks = list(dict.fromkeys(s.benchmark for s in scores))
    methods = list(dict.fromkeys(s.method for s in scores))
    protocol_names = _order((s.protocol for s in scores), protocols())
    names = {s.benchmark: s.class_names for s in scores}
    metrics = {b: list(headline_metrics(len(names[b]))) for b in benchmarks}
    tables = []

    def add(
        name: str,
        title: str,
        columns: list[tuple[str, str, str]],
        labels: list[str],
        lookup: dict = lookup,
    ) -> None:
        """Append a table over ``columns`` (benchmark, protocol, metric) that have measurements;
        rows: the methods measured there, then the reported numbers that fall in those columns."""
        keep = [
            i for i, (b, p, c) in enumerate(columns) if any((b, p, m, c) in lookup for m in methods)
        ]
        if not keep:  # e.g. a benchmark evaluated under one protocol only
            return
        columns, labels = [columns[i] for i in keep], [labels[i] for i in keep]
        present = [m for m in methods if any((b, p, m, c) in lookup for b, p, c in columns)]
        reported = [row for row in _reported_rows(columns) if any(row.cells)]
        rows = _measured_rows(present, columns, lookup) + reported
        tables.append(Table(name, _caption(title, rows), "method", tuple(labels), tuple(rows)))

    for bench in benchmarks:
        for proto in protocol_names:
            columns = [(bench, proto, c) for c in (*names[bench], *metrics[bench])]
            title = f"{bench}, {proto} protocol: per-class IoU (%)"
            add(f"perclass_{bench}_{proto}", title, columns, [c for _, _, c in columns])
    for proto in protocol_names:
        columns = [(b, proto, m) for b in benchmarks for m in metrics[b]]
        title = f"Ablation, {proto} protocol: mIoU (%)"
        add(f"ablation_{proto}", title, columns, [f"{b} {m}" for b, _, m in columns])
    columns = [(b, p, m) for b in benchmarks for m in metrics[b] for p in protocol_names]
    title = "Summary: mIoU (%) under each protocol"
    add("summary", title, columns, [f"{b} {m} ({p})" for b, p, m in columns])
    for proto in protocol_names:
        for table in _boundary_tables(scores, proto, metrics, scoring or ScoringConfig()):
            tables.append(table)
    return tables


def _boundary_tables(
    scores: list[RunScores], proto: str, metrics: dict[str, list[str]], scoring: ScoringConfig
) -> list[Table]:
    """``boundary_<proto>`` (Boundary IoU and trimap means, mean ± std over seeds) and
    ``ablation_delta_<proto>`` (paired differences to the reference method) of the runs of
    ``proto`` that have per-image counts; none when no run has them."""
    measured = [s for s in scores if s.protocol == proto and s.per_image]
    if not measured:
        return []
    score_names = list(dict.fromkeys(n for s in measured for n in scores_of(s.per_image)))
    methods = list(dict.fromkeys(s.method for s in measured))
    benchmarks = list(dict.fromkeys(s.benchmark for s in measured))
    columns, labels, cells = [], [], {m: [] for m in methods}
    for bench in benchmarks:
        for score in score_names:
            lookup = _value_lookup(measured, score)
            for metric in metrics[bench]:
                columns.append((bench, score, metric))
                labels.append(f"{bench} {_score_label(score, metric)}")
                for method in methods:
                    cells[method].append(aggregate(lookup.get((bench, proto, method, metric), [])))
    rows = [Row(m, tuple(cells[m]), competing=m not in NOT_COMPETING) for m in methods]
    title = (
        f"Boundary quality, {proto} protocol: mean IoU (%) of the Boundary IoU regions "
        "(Cheng et al. 2021; width d: each metrics.json's boundary_px) and of the trimap bands "
        "of w px around ground-truth boundaries"
    )
    caption = _caption(title, rows)
    tables = [Table(f"boundary_{proto}", caption, "method", tuple(labels), tuple(rows))]
    delta = _delta_table(measured, proto, benchmarks, metrics, score_names, scoring)
    return tables + ([delta] if delta is not None else [])


def _score_label(score: str, metric: str) -> str:
    """A headline mean of a score: mIoU19 of ``iou``, mBIoU19 of ``boundary_iou``, "trimap8
    mIoU19" of ``trimap8_iou``."""
    if score == "iou":
        return metric
    if score == BOUNDARY_SCORE:
        return metric.replace("mIoU", "mBIoU")
    return f"{score.removesuffix('_iou')} {metric}"


def _delta_table(
    measured: list[RunScores],
    proto: str,
    benchmarks: list[str],
    metrics: dict[str, list[str]],
    score_names: list[str],
    scoring: ScoringConfig,
) -> Table | None:
    """Each method's mean IoU and Boundary IoU minus :data:`REFERENCE_METHOD`'s, paired by seed,
    with a bootstrap interval (:func:`hqtd.metrics.paired_delta_interval`)."""
    runs = {(s.benchmark, s.method, s.seed): s for s in measured}
    methods = [m for m in dict.fromkeys(s.method for s in measured) if m != REFERENCE_METHOD]
    if not methods or not any(s.method == REFERENCE_METHOD for s in measured):
        return None
    deltas = ["iou"] + [BOUNDARY_SCORE] * (BOUNDARY_SCORE in score_names)
    columns = [(b, score, m) for b in benchmarks for score in deltas for m in metrics[b]]
    subsets = {s.benchmark: headline_subsets(len(s.class_names)) for s in measured}
    rows = []
    for method in methods:
        cells = []
        for bench, score, metric in columns:
            pairs = [
                (runs[bench, REFERENCE_METHOD, seed], run)
                for (b, m, seed), run in sorted(runs.items())
                if (b, m) == (bench, method) and (b, REFERENCE_METHOD, seed) in runs
            ]
            cells.append(_delta_cell(pairs, score, subsets[bench][metric], scoring))
        rows.append(Row(method, tuple(cells), competing=False))
    labels = tuple(f"{b} Δ{_score_label(score, m)}" for b, score, m in columns)
    caption = (
        f"Paired difference to {REFERENCE_METHOD}, {proto} protocol: method minus "
        f"{REFERENCE_METHOD} of the same seed (percentage points), mean over the n seeds run by "
        f"both, [{scoring.confidence:.0%} bootstrap interval] over val images and seeds "
        f"({scoring.bootstrap_draws} draws, seed {scoring.bootstrap_seed}); * where the interval "
        "excludes 0."
    )
    return Table(f"ablation_delta_{proto}", caption, "method", labels, tuple(rows))


def _delta_cell(
    pairs: list[tuple[RunScores, RunScores]],
    score: str,
    subset: list[int] | None,
    scoring: ScoringConfig,
) -> Cell | None:
    """The paired difference of ``score``'s mean over ``pairs`` (reference run, run), percent."""
    counts = [
        (*(a.per_image[f"{score}_{p}"] for p in ("intersection", "union")),
         *(b.per_image[f"{score}_{p}"] for p in ("intersection", "union")))
        for a, b in pairs
        if f"{score}_intersection" in a.per_image and f"{score}_intersection" in b.per_image
    ]  # fmt: skip
    if not counts:
        return None
    if len({c.shape for pair in counts for c in pair}) != 1:
        raise HqtdError(f"{pairs[0][0].benchmark}: runs scored different val images")
    delta, low, high = paired_delta_interval(
        counts, scoring.bootstrap_draws, scoring.confidence, scoring.bootstrap_seed, subset
    )
    return Cell(100.0 * delta, math.nan, len(counts), 100.0 * low, 100.0 * high)


# ------------------------------------------------------------------------------------------------
# Rendering


def _best(table: Table) -> list[set[int]]:
    """Per column, the indices of the competing rows whose rounded mean is the largest; none
    where all competing rows tie (nothing is best)."""
    best = []
    for col in range(len(table.columns)):
        means = {
            i: round(row.cells[col].mean, DECIMALS)
            for i, row in enumerate(table.rows)
            if row.competing and row.cells[col] is not None
        }
        top = max(means.values(), default=None)
        winners = {i for i, mean in means.items() if mean == top}
        best.append(winners if len(winners) < len(means) else set())
    return best


def _cell_texts(
    table: Table, pm: str, bold: Callable[[str], str], escape: Callable[[str], str]
) -> list[list[str]]:
    """The displayed rows: label, then "mean ± std" per cell (bold where best)."""
    best, typical = _best(table), typical_n(table.rows)
    lines = []
    for i, row in enumerate(table.rows):
        texts = [escape(row.label)]
        for col, cell in enumerate(row.cells):
            if cell is None:
                texts.append("")
                continue
            if cell.has_interval:
                texts.append(_interval_text(cell))
                continue
            text = f"{cell.mean:.{DECIMALS}f}"
            if not math.isnan(cell.std):
                text += f" {pm} {cell.std:.{DECIMALS}f}"
            if not row.reported and cell.n != typical:
                text += f" (n={cell.n})"
            texts.append(bold(text) if i in best[col] else text)
        lines.append(texts)
    return lines


def _interval_text(cell: Cell) -> str:
    """A difference cell: "+1.2 [-0.3, +2.6] (n=3)", starred where the interval excludes 0."""
    text = f"{cell.mean:+.{DECIMALS}f} [{cell.low:+.{DECIMALS}f}, {cell.high:+.{DECIMALS}f}]"
    return text + f" (n={cell.n})" + (" *" if cell.excludes_zero else "")


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def render_markdown(table: Table) -> str:
    rows = _cell_texts(table, "±", lambda t: f"**{t}**", lambda t: t)
    align = ("left",) + ("right",) * len(table.columns)
    body = tabulate(
        rows, headers=[table.first_column, *table.columns], tablefmt="pipe", colalign=align
    )
    return f"Table: {table.caption}\n\n{body}\n"


def render_latex(table: Table) -> str:
    rows = _cell_texts(table, "$\\pm$", lambda t: f"\\textbf{{{t}}}", _latex_escape)
    headers = [_latex_escape(h) for h in (table.first_column, *table.columns)]
    frame = pd.DataFrame(rows, columns=headers)
    return frame.style.hide(axis="index").to_latex(
        hrules=True,
        caption=_latex_escape(table.caption).replace("±", "$\\pm$"),
        label=f"tab:{table.name.replace('_', '-')}",
        position_float="centering",
        column_format="l" + "r" * len(table.columns),
    )


def render_html(table: Table) -> str:
    rows = _cell_texts(table, "±", lambda t: f"<b>{t}</b>", html.escape)
    headers = [html.escape(h) for h in (table.first_column, *table.columns)]
    body = tabulate(rows, headers=headers, tablefmt="unsafehtml")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(table.name)}</title>"
        "<style>td,th{padding:2px 8px;text-align:right}td:first-child{text-align:left}</style>"
        f"</head><body>\n<p>{html.escape(table.caption)}</p>\n{body}\n</body></html>\n"
    )


def render_csv(table: Table) -> str:
    """Means and stds as numbers: ``<column>`` and ``<column> std`` (and ``<column> n``)."""
    records = []
    for row in table.rows:
        record: dict[str, object] = {table.first_column: row.label}
        for column, cell in zip(table.columns, row.cells, strict=True):
            record[column] = None if cell is None else cell.mean
            record[f"{column} std"] = None if cell is None or math.isnan(cell.std) else cell.std
            record[f"{column} n"] = None if cell is None or row.reported else cell.n
            if cell is not None and cell.has_interval:
                record[f"{column} low"], record[f"{column} high"] = cell.low, cell.high
        records.append(record)
    frame = pd.DataFrame(records)
    n_columns = [c for c in frame.columns if c.endswith(" n")]
    frame[n_columns] = frame[n_columns].astype("Int64")
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


RENDERERS = {"md": render_markdown, "tex": render_latex, "html": render_html, "csv": render_csv}


def write_tables(
    runs: Path, out: Path, grid: Grid | str, scoring: ScoringConfig | None = None
) -> list[Path]:
    """``hqtd tables``: write ``runs.csv`` and every table in every format into ``out``.

    Args:
        runs: the grid's runs folder (``results/runs/<grid>``).
        out: the tables folder (``results/tables/<grid>``).
        grid: only the runs of this grid of ``params/grid.yaml`` (a name, or a narrowed
            :class:`~hqtd.grid.Grid`), rows in its order.
        scoring: the bootstrap's draws, confidence level and seed (default: the config's).

    Returns:
        the files written.
    """
    scoring = checked_scoring(scoring or ScoringConfig())
    scores = collect(Path(runs), grid, scoring)
    out = Path(out)
    written = [out / "runs.csv"]
    csv = tidy_frame(scores).to_csv(index=False, float_format="%.4f", lineterminator="\n")
    write_text(written[0], csv)
    for table in build_tables(scores, scoring):
        for suffix, render in RENDERERS.items():
            path = out / f"{table.name}.{suffix}"
            write_text(path, render(table))
            written.append(path)
    print(f"{out}: {len(written)} files from {len(scores)} evaluations")
    return written
