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
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from hqtd.config import from_yaml, load_config
from hqtd.errors import HqtdError
from hqtd.grid import (
    SUPERVISED_STAGES,
    Grid,
    Run,
    grid_names,
    load_grid,
    method_stage,
    protocols,
    source_method,
)
from hqtd.io import write_text
from hqtd.metrics import iou_per_class, summary
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


def headline_metrics(num_classes: int) -> tuple[str, ...]:
    """The mean-IoU columns of a benchmark, as :func:`hqtd.metrics.summary` names them: mIoU19, or
    mIoU16 and mIoU13 (METHOD.md §1)."""
    return tuple(k for k in summary(np.eye(num_classes)) if k not in ("mIoU", "pixel_accuracy"))


def read_run(metrics_path: Path) -> RunScores:
    """Read one ``metrics.json`` and recompute its numbers from the ``confusion.npy`` beside it.

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
    )


def _text(value: object) -> str:
    """A provenance value as one CSV field ("" when missing)."""
    return "" if value is None else str(value)


def _order(values: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """``values`` sorted by their position in ``preferred``, unknown ones after, alphabetically."""
    rank = {value: i for i, value in enumerate(dict.fromkeys(preferred))}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def _preferred_orders(grid: Grid | None) -> tuple[list[str], list[str]]:
    """Benchmark and method order: the grid's, else every grid's, longest method list first."""
    if grid is not None:
        return list(grid.benchmarks), list(grid.methods)
    grids = sorted((load_grid(name) for name in grid_names()), key=lambda g: -len(g.methods))
    benchmarks = [b for g in grids for b in g.benchmarks]
    return benchmarks, [m for g in grids for m in g.methods]


def _named_by(metrics_path: Path) -> tuple[str, str, str, str]:
    """(benchmark, method, seed<k>, protocol) that a ``.../eval/<protocol>/metrics.json`` names."""
    benchmark, method, seed, _, protocol, _ = metrics_path.parts[-6:]
    return benchmark, method, seed, protocol


#: Saved-config keys that say where a run lives, not what it computed.
PLACE_KEYS = ("run_dir", "data_root", "train.init_checkpoint")


def config_mismatch(run_dir: Path, run: Run, grid: Grid) -> list[str]:
    """Keys whose value in ``run_dir/config.yaml`` differs from the config the grid would train
    ``run`` with (its benchmark, method, seed and overrides); [] without a saved config."""
    from hqtd.train import config_differences  # torch: only when there are configs to compare

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


def collect(runs: Path, grid: Grid | str | None = None) -> list[RunScores]:
    """Every evaluated run under ``runs`` (only the grid's runs when ``grid`` is given, see
    :func:`grid_paths`), in table order: benchmark and method in grid order, then protocol, then
    seed.

    Raises:
        HqtdError: no evaluation found, or a file whose contents contradict its path.
    """
    grid = load_grid(grid) if isinstance(grid, str) else grid
    paths = sorted(runs.glob("*/*/seed*/eval/*/metrics.json"))
    if grid is not None:
        paths = grid_paths(paths, grid)
    if not paths:
        raise HqtdError(f"{runs}: no */*/seed*/eval/*/metrics.json found (run hqtd evaluate first)")
    scores = [read_run(path) for path in paths]
    for path, s in zip(paths, scores, strict=True):
        if (s.benchmark, s.method, f"seed{s.seed}", s.protocol) != _named_by(path):
            raise HqtdError(f"{path}: describes {s.benchmark}/{s.method}/seed{s.seed}/{s.protocol}")
    bench_order, method_order = _preferred_orders(grid)
    bench_rank = {b: i for i, b in enumerate(_order((s.benchmark for s in scores), bench_order))}
    method_rank = {m: i for i, m in enumerate(_order((s.method for s in scores), method_order))}
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
    """``runs.csv``: one row per run x protocol x class, then one per headline mean; the run's
    provenance columns after ``iou``."""
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
        for name, value in zip(s.class_names, s.iou, strict=True):
            rows.append({**keys, "metric": name, "iou": value, **s.provenance})
        rows.extend(
            {**keys, "metric": name, "iou": value, **s.provenance}
            for name, value in s.means.items()
        )
    frame = pd.DataFrame(rows)
    frame["iteration"] = frame["iteration"].astype("Int64")
    return frame


# ------------------------------------------------------------------------------------------------
# Table model


@dataclass(frozen=True)
class Cell:
    """Mean ± sample std over the n runs of one table cell (std NaN when n < 2)."""

    mean: float
    std: float
    n: int


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


def _value_lookup(scores: list[RunScores]) -> dict[tuple[str, str, str, str], list[float]]:
    """(benchmark, protocol, method, metric) -> the per-run values over seeds."""
    lookup: dict[tuple[str, str, str, str], list[float]] = {}
    for s in scores:
        pairs = [*zip(s.class_names, s.iou, strict=True), *s.means.items()]
        for metric, value in pairs:
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


def build_tables(scores: list[RunScores]) -> list[Table]:
    """Per-class tables per benchmark x protocol, an ablation table per protocol and a summary."""
    lookup = _value_lookup(scores)
    benchmarks = list(dict.fromkeys(s.benchmark for s in scores))
    methods = list(dict.fromkeys(s.method for s in scores))
    protocol_names = _order((s.protocol for s in scores), protocols())
    names = {s.benchmark: s.class_names for s in scores}
    metrics = {b: list(headline_metrics(len(names[b]))) for b in benchmarks}
    tables = []

    def add(name: str, title: str, columns: list[tuple[str, str, str]], labels: list[str]) -> None:
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
    return tables


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
            text = f"{cell.mean:.{DECIMALS}f}"
            if not math.isnan(cell.std):
                text += f" {pm} {cell.std:.{DECIMALS}f}"
            if not row.reported and cell.n != typical:
                text += f" (n={cell.n})"
            texts.append(bold(text) if i in best[col] else text)
        lines.append(texts)
    return lines


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
        records.append(record)
    frame = pd.DataFrame(records)
    n_columns = [c for c in frame.columns if c.endswith(" n")]
    frame[n_columns] = frame[n_columns].astype("Int64")
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


RENDERERS = {"md": render_markdown, "tex": render_latex, "html": render_html, "csv": render_csv}


def write_tables(runs: Path, out: Path, grid: Grid | str | None = None) -> list[Path]:
    """``hqtd tables``: write ``runs.csv`` and every table in every format into ``out``.

    Args:
        runs: the grid's runs folder (``results/runs/<grid>``).
        out: the tables folder (``results/tables/<grid>``).
        grid: only the runs of this grid of ``params/grid.yaml`` (a name, or a narrowed
            :class:`~hqtd.grid.Grid`), rows in its order; None: every run found, in the order of
            the grids.

    Returns:
        the files written.
    """
    scores = collect(Path(runs), grid)
    out = Path(out)
    written = [out / "runs.csv"]
    csv = tidy_frame(scores).to_csv(index=False, float_format="%.4f", lineterminator="\n")
    write_text(written[0], csv)
    for table in build_tables(scores):
        for suffix, render in RENDERERS.items():
            path = out / f"{table.name}.{suffix}"
            write_text(path, render(table))
            written.append(path)
    print(f"{out}: {len(written)} files from {len(scores)} evaluations")
    return written
