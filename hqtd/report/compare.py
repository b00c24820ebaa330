"""``hqtd compare REV_A [REV_B]``: what a commit did to per-class IoU and mIoU.

Reads a grid's committed tidy table ``results/tables/<grid>/runs.csv`` at two git revisions (``git
show REV:path``; REV_B defaults to the working tree), averages each (benchmark, protocol, method,
metric) over seeds on both sides and prints the deltas next to the seed spread as Markdown, so
a change can be judged against the noise between seeds. Above the tables, one warning line per
provenance key (:data:`hqtd.provenance.KEYS`) whose values differ between the sides: deltas
between results made with other library versions, devices, thread counts, data or determinism
settings mix the change with those.
"""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from hqtd.errors import HqtdError
from hqtd.grid import load_grid
from hqtd.provenance import KEYS as PROVENANCE_KEYS

KEYS = ["benchmark", "protocol", "method", "metric"]
COLUMNS = {"benchmark", "method", "seed", "protocol", "metric", "iou"}
#: Provenance keys compared between the sides; the git revision differs by design (each side's
#: results were made at its own commit).
WARNED_KEYS = tuple(key for key in PROVENANCE_KEYS if key != "git_revision")


def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    except OSError as error:
        raise HqtdError(f"git is not available: {error}") from None


def read_revision(rev: str | None, path: Path) -> str:
    """The text of ``path`` at git revision ``rev`` (the working tree when None).

    Raises:
        HqtdError: not in a git repository, an unknown revision, or no such file there.
    """
    if rev is None:
        if not path.is_file():
            raise HqtdError(f"{path}: not found in the working tree (run hqtd tables first)")
        return path.read_text()
    top = _git("rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise HqtdError("hqtd compare needs a git repository (run it inside the checkout)")
    if _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise HqtdError(f"{rev}: not a git revision")
    relative = Path(path).resolve().relative_to(Path(top.stdout.strip()).resolve())
    shown = _git("show", f"{rev}:{relative.as_posix()}")
    if shown.returncode != 0:
        raise HqtdError(f"{relative.as_posix()}: does not exist at revision {rev}")
    return shown.stdout


def read_runs(csv_text: str, origin: str) -> pd.DataFrame:
    """Parse a ``runs.csv`` (provenance columns as text).

    Raises:
        HqtdError: the text is not a ``runs.csv`` written by ``hqtd tables``, or is cut short.
    """
    check_complete_rows(csv_text, origin)
    try:
        frame = pd.read_csv(
            io.StringIO(csv_text),
            dtype={key: str for key in PROVENANCE_KEYS},
            keep_default_na=False,
        )
    except (ValueError, pd.errors.ParserError) as error:
        raise HqtdError(f"{origin}: not a CSV file ({error})") from None
    missing = COLUMNS - set(frame.columns)
    if missing:
        raise HqtdError(f"{origin}: not an hqtd runs.csv, missing {', '.join(sorted(missing))}")
    frame["iou"] = pd.to_numeric(frame["iou"])  # empty (undefined IoU) -> NaN
    return frame


def check_complete_rows(csv_text: str, origin: str) -> None:
    """Refuse a truncated file: ``hqtd tables`` ends every row with a newline and gives each as
    many fields as the header (pandas would fill a half row's missing fields and go on).

    Raises:
        HqtdError: the last line is unfinished, or a row has another number of fields.
    """
    if csv_text and not csv_text.endswith("\n"):
        raise HqtdError(f"{origin}: truncated (its last line is unfinished); regenerate it")
    rows = list(csv.reader(io.StringIO(csv_text)))
    width = len(rows[0]) if rows else 0
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise HqtdError(
                f"{origin}: line {number} has {len(row)} fields, the header {width}; "
                "truncated or damaged, regenerate it"
            )


def seed_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (benchmark, protocol, method, metric)."""
    grouped = frame.groupby(KEYS, sort=False)["iou"]
    return grouped.agg(mean="mean", std="std", n="count")


def _recorded(frame: pd.DataFrame, key: str) -> str:
    """The values of a provenance column, sorted and joined ("unknown" where none is recorded)."""
    values = sorted(set(frame[key]) - {""}) if key in frame.columns else []
    return ", ".join(values) if values else "unknown"


def provenance_warnings(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> list[str]:
    """One line per provenance key whose recorded values differ between the sides; a single line
    when a side records no provenance at all (a ``runs.csv`` from before hqtd recorded it)."""
    bare = [side for side, f in (("A", frame_a), ("B", frame_b)) if not set(WARNED_KEYS) & set(f)]
    if bare:
        verb = "records" if len(bare) == 1 else "record"
        return [f"Warning: {' and '.join(bare)} {verb} no provenance (older runs.csv)."]
    lines = []
    for key in WARNED_KEYS:
        a, b = _recorded(frame_a, key), _recorded(frame_b, key)
        if a != b:
            lines.append(f"Warning: {key} differs: A {a}; B {b}.")
    return lines


def _fmt(value: float, signed: bool = False) -> str:
    return "" if pd.isna(value) else f"{value:+.2f}" if signed else f"{value:.2f}"


def compare(rev_a: str, rev_b: str | None = None, grid: str | None = None) -> str:
    """Markdown tables of per-class and mean IoU deltas (B - A) between two revisions.

    Args:
        rev_a: the reference revision (any git revision: commit, tag, ``HEAD~1``...).
        rev_b: the compared revision; None compares the working tree.
        grid: the grid of ``params/grid.yaml`` whose ``results/tables/<grid>/runs.csv`` is
            compared; None: the default grid.

    Returns:
        the provenance warnings (:func:`provenance_warnings`), then one section per benchmark
        and protocol: for each method and metric the mean over seeds
        at A and B, the delta and both seed stds (sample std; empty for a single seed).
    """
    path = load_grid(grid).tables_dir / "runs.csv"
    label_b = rev_b if rev_b is not None else "working tree"
    frame_a = read_runs(read_revision(rev_a, path), f"{path}@{rev_a}")
    frame_b = read_runs(read_revision(rev_b, path), f"{path}@{label_b}")
    stats_a, stats_b = seed_statistics(frame_a), seed_statistics(frame_b)
    # Rows in runs.csv order (grid order), those only at B last; an outer join would sort them.
    order = stats_a.index.union(stats_b.index, sort=False)
    joined = stats_a.join(stats_b, how="outer", suffixes=("_a", "_b")).reindex(order)
    joined["delta"] = joined["mean_b"] - joined["mean_a"]
    parts = [
        f"IoU (%) at A = {rev_a} and B = {label_b}: mean over seeds, delta = B - A, "
        "std = sample std over seeds (n seeds per side)."
    ]
    warnings = provenance_warnings(frame_a, frame_b)
    if warnings:
        parts.append("\n".join(warnings))
    for (bench, proto), block in joined.groupby(level=[0, 1], sort=False):
        rows = [
            [
                method,
                metric,
                _fmt(r.mean_a),
                _fmt(r.mean_b),
                _fmt(r.delta, signed=True),
                _fmt(r.std_a),
                _fmt(r.std_b),
                f"{_count(r.n_a)} / {_count(r.n_b)}",
            ]
            for (_, _, method, metric), r in block.iterrows()
        ]
        headers = ["method", "metric", "A", "B", "delta", "std A", "std B", "n A / B"]
        align = ("left", "left") + ("right",) * 6
        table = tabulate(
            rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align
        )
        parts.append(f"### {bench}, {proto} protocol\n\n{table}")
    return "\n\n".join(parts) + "\n"


def _count(value: float) -> str:
    return "0" if pd.isna(value) else str(int(value))
