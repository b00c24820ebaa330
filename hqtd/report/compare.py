"""``hqtd compare REV_A [REV_B]``: what a commit did to per-class IoU and mIoU.

Reads a grid's committed tidy table ``results/tables/<grid>/runs.csv`` at two git revisions (``git
show REV:path``; REV_B defaults to the working tree), averages each (benchmark, protocol, method,
metric) over seeds on both sides and prints the deltas next to the seed spread as Markdown, so
a change can be judged against the noise between seeds. Above the tables, one warning line per
provenance key (:data:`hqtd.provenance.KEYS`) whose values differ between the sides: deltas
between results made with other library versions, devices, thread counts, data or determinism
settings mix the change with those.

Where both revisions hold the runs' ``per_image.npz`` (``results/runs/<grid>/.../eval/<protocol>``,
issue 14), each headline mean also gets the paired difference B - A with a bootstrap interval over
val images and seeds (:func:`hqtd.metrics.paired_delta_interval`), starred when it excludes 0;
runs.csv's Boundary IoU and trimap columns get their own section per benchmark and protocol.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from hqtd.config import ScoringConfig, checked_scoring
from hqtd.errors import HqtdError
from hqtd.grid import load_grid
from hqtd.metrics import paired_delta_interval
from hqtd.provenance import KEYS as PROVENANCE_KEYS
from hqtd.report.tables import BOUNDARY_SCORE, TRIMAP_SCORE, headline_subsets

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
    for column in frame.columns:
        if column == "iou" or column.endswith(("_iou", "_iou_low", "_iou_high")):
            frame[column] = pd.to_numeric(frame[column])  # empty (undefined IoU) -> NaN
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


def seed_statistics(frame: pd.DataFrame, column: str = "iou") -> pd.DataFrame:
    """Mean, sample std and count over seeds of ``column`` per (benchmark, protocol, method,
    metric)."""
    grouped = frame.groupby(KEYS, sort=False)[column]
    return grouped.agg(mean="mean", std="std", n="count")


def read_revision_bytes(rev: str | None, path: Path) -> bytes | None:
    """The bytes of ``path`` at ``rev`` (the working tree when None); None where it does not
    exist. ``rev`` must be a revision :func:`read_revision` has accepted."""
    if rev is None:
        return path.read_bytes() if path.is_file() else None
    top = Path(_git("rev-parse", "--show-toplevel").stdout.strip()).resolve()
    relative = Path(path).resolve().relative_to(top).as_posix()
    shown = subprocess.run(["git", "show", f"{rev}:{relative}"], capture_output=True, check=False)
    return shown.stdout if shown.returncode == 0 else None


def _per_image(data: bytes | None) -> dict[str, np.ndarray] | None:
    """The arrays of a ``per_image.npz`` file's bytes (None for no file or an unreadable one)."""
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError):
        return None


def paired_intervals(
    frames: tuple[pd.DataFrame, pd.DataFrame],
    revs: tuple[str, str | None],
    runs_dir: Path,
    scoring: ScoringConfig,
) -> dict[tuple[str, str, str, str, str], tuple[float, float, float, int]]:
    """Paired differences B - A of each headline mean of mIoU and Boundary IoU, from the
    ``per_image.npz`` of the runs (benchmark, protocol, method, seed) in both ``runs.csv`` files
    whose counts both revisions hold for the same val images.

    Returns:
        (score, benchmark, protocol, method, metric) -> (delta, low, high) in percent and the
        number of paired seeds.
    """
    run_keys = ["benchmark", "protocol", "method", "seed"]
    a_runs, b_runs = (set(f[run_keys].itertuples(index=False, name=None)) for f in frames)
    pairs: dict[tuple[str, str, str], list[tuple[dict, dict]]] = {}
    for bench, proto, method, seed in sorted(a_runs & b_runs):
        path = runs_dir / bench / method / f"seed{seed}" / "eval" / proto / "per_image.npz"
        a, b = (_per_image(read_revision_bytes(rev, path)) for rev in revs)
        if a and b and a["iou_intersection"].shape == b["iou_intersection"].shape:
            pairs.setdefault((bench, proto, method), []).append((a, b))
    result = {}
    for (bench, proto, method), runs in pairs.items():
        subsets = headline_subsets(runs[0][0]["iou_intersection"].shape[1])
        for score in ("iou", BOUNDARY_SCORE):
            names = (f"{score}_intersection", f"{score}_union")
            counts = [
                (a[names[0]], a[names[1]], b[names[0]], b[names[1]])
                for a, b in runs
                if names[0] in a and names[0] in b
            ]
            for metric, subset in subsets.items() if counts else ():
                delta = paired_delta_interval(
                    counts,
                    scoring.bootstrap_draws,
                    scoring.confidence,
                    scoring.bootstrap_seed,
                    subset,
                )
                key = (score, bench, proto, method, metric)
                result[key] = (*(100.0 * v for v in delta), len(counts))
    return result


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


#: runs.csv's mean rows (mIoU19, mIoU16, mIoU13): the rows of the boundary sections.
HEADLINE = re.compile(r"^mIoU\d+$")


def _score_columns(frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> list[str]:
    """``iou``, then the Boundary IoU and trimap columns that both files have."""
    shared = [c for c in frame_a.columns if c in set(frame_b.columns)]
    return ["iou"] + [c for c in shared if c == BOUNDARY_SCORE or TRIMAP_SCORE.match(c)]


def _joined(frame_a: pd.DataFrame, frame_b: pd.DataFrame, column: str) -> pd.DataFrame:
    """Seed statistics of ``column`` at A and B side by side, with ``delta`` = B - A."""
    stats_a, stats_b = seed_statistics(frame_a, column), seed_statistics(frame_b, column)
    # Rows in runs.csv order (grid order), those only at B last; an outer join would sort them.
    order = stats_a.index.union(stats_b.index, sort=False)
    joined = stats_a.join(stats_b, how="outer", suffixes=("_a", "_b")).reindex(order)
    joined["delta"] = joined["mean_b"] - joined["mean_a"]
    return joined


def _interval_text(found: tuple[float, float, float, int] | None) -> str:
    """ "[low, high] (n=K)", starred where the interval excludes 0; empty without counts."""
    if found is None:
        return ""
    _, low, high, n = found
    star = " *" if low > 0 or high < 0 else ""
    return f"[{low:+.2f}, {high:+.2f}] (n={n}){star}"


def compare(
    rev_a: str,
    rev_b: str | None = None,
    grid: str | None = None,
    scoring: ScoringConfig | None = None,
) -> str:
    """Markdown tables of per-class and mean IoU deltas (B - A) between two revisions.

    Args:
        rev_a: the reference revision (any git revision: commit, tag, ``HEAD~1``...).
        rev_b: the compared revision; None compares the working tree.
        grid: the grid of ``params/grid.yaml`` whose ``results/tables/<grid>/runs.csv`` is
            compared; None: the default grid.
        scoring: the bootstrap's draws, confidence level and seed (default: the config's).

    Returns:
        the provenance warnings (:func:`provenance_warnings`), then one section per benchmark
        and protocol: for each method and metric the mean over seeds at A and B, the delta,
        both seed stds (sample std; empty for a single seed) and, on the headline means, the
        paired-by-seed interval of the delta (:func:`paired_intervals`); then a section per
        benchmark and protocol of the headline means of Boundary IoU and trimap IoU.
    """
    scoring = checked_scoring(scoring or ScoringConfig())
    chosen = load_grid(grid)
    path = chosen.tables_dir / "runs.csv"
    label_b = rev_b if rev_b is not None else "working tree"
    frame_a = read_runs(read_revision(rev_a, path), f"{path}@{rev_a}")
    frame_b = read_runs(read_revision(rev_b, path), f"{path}@{label_b}")
    intervals = paired_intervals((frame_a, frame_b), (rev_a, rev_b), chosen.runs_dir, scoring)
    parts = [
        f"IoU (%) at A = {rev_a} and B = {label_b}: mean over seeds, delta = B - A, "
        "std = sample std over seeds (n seeds per side); interval: "
        f"{scoring.confidence:.0%} bootstrap interval of the delta paired by seed, over val "
        f"images and seeds ({scoring.bootstrap_draws} draws, seed {scoring.bootstrap_seed}; "
        "n paired seeds; * excludes 0; empty where a side has no per_image.npz)."
    ]
    warnings = provenance_warnings(frame_a, frame_b)
    if warnings:
        parts.append("\n".join(warnings))
    headers = ["method", "metric", "A", "B", "delta", "std A", "std B", "n A / B", "interval"]
    for column in _score_columns(frame_a, frame_b):
        joined = _joined(frame_a, frame_b, column)
        if column != "iou":
            joined = joined[joined.index.get_level_values("metric").str.match(HEADLINE.pattern)]
        for (bench, proto), block in joined.groupby(level=[0, 1], sort=False):
            rows = [
                [
                    method,
                    metric if column == "iou" else f"{column.removesuffix('_iou')} {metric}",
                    _fmt(r.mean_a),
                    _fmt(r.mean_b),
                    _fmt(r.delta, signed=True),
                    _fmt(r.std_a),
                    _fmt(r.std_b),
                    f"{_count(r.n_a)} / {_count(r.n_b)}",
                    _interval_text(intervals.get((column, bench, proto, method, metric))),
                ]
                for (_, _, method, metric), r in block.iterrows()
            ]
            align = ("left", "left") + ("right",) * 7
            table = tabulate(
                rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align
            )
            title = "" if column == "iou" else f": {column}"
            parts.append(f"### {bench}, {proto} protocol{title}\n\n{table}")
    return "\n\n".join(parts) + "\n"


def _count(value: float) -> str:
    return "0" if pd.isna(value) else str(int(value))
