"""Boundary metrics and paired differences in ``hqtd tables`` (issue 14).

Runs are synthetic (``test_tables.write_eval``) plus a ``per_image.npz`` of made-up per-image
counts. Set HQTD_UPDATE_GOLDEN=1 to rewrite tests/golden/boundary_tables after a deliberate
change of the rendering (and review the diff).
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_tables import write_eval

from hqtd.config import ScoringConfig
from hqtd.errors import HqtdError
from hqtd.report.tables import write_tables

GOLDEN = Path(__file__).parent / "golden" / "boundary_tables"
QUALITY = {"baseline": 0.5, "full": 0.56, "t2s": 0.5, "source_only": 0.3}
SCORING = ScoringConfig(bootstrap_draws=200)  # fewer draws: a quicker test


def per_image_counts(method: str, seed: int, num_classes: int = 19, images: int = 12):
    """Made-up per-image confusion matrices (a diagonal that grows with the method's quality) and
    their (images, C) IoU counts, plus boundary and trimap counts: unions shared by all runs
    (the same images), intersections binomial with the method's quality.

    Returns:
        the counts of ``per_image.npz`` and the summed confusion matrix.
    """
    shared = np.random.default_rng(99)
    own = np.random.default_rng([seed, list(QUALITY).index(method)])
    conf = own.integers(0, 20, size=(images, num_classes, num_classes))
    diagonal = np.arange(num_classes)
    conf[:, diagonal, diagonal] += own.binomial(400, QUALITY[method], size=(images, num_classes))
    inter = conf[:, diagonal, diagonal]
    arrays = {"iou_intersection": inter, "iou_union": conf.sum(1) + conf.sum(2) - inter}
    for score, scale in (("boundary_iou", 0.8), ("trimap4_iou", 0.9)):
        union = shared.integers(0, 300, size=(images, num_classes))
        arrays[f"{score}_intersection"] = own.binomial(union, QUALITY[method] * scale)
        arrays[f"{score}_union"] = union
    return arrays, conf.sum(0)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """mini_gta5 under the paper protocol: baseline, full (better) and t2s (same quality) with
    seeds 0 and 1, and a t2s seed 2 that baseline lacks (not paired)."""
    root = tmp_path / "runs"
    for method, seeds in (("baseline", (0, 1)), ("full", (0, 1)), ("t2s", (0, 1, 2))):
        for seed in seeds:
            arrays, conf = per_image_counts(method, seed)
            write_eval(root, "mini_gta5", method, seed, "paper", conf)
            out = root / "mini_gta5" / method / f"seed{seed}" / "eval" / "paper"
            np.savez_compressed(out / "per_image.npz", **arrays)
    return root


def test_golden_boundary_tables(runs, tmp_path):
    out = tmp_path / "tables"
    written = write_tables(runs, out, "mini", scoring=SCORING)
    new = sorted(p.name for p in written if p.stem.startswith(("boundary", "ablation_delta")))
    assert new == sorted(f"{s}.{x}" for s in ("ablation_delta_paper", "boundary_paper")
                         for x in ("csv", "html", "md", "tex"))  # fmt: skip
    kept = [p for p in written if p.name in new or p.name == "runs.csv"]
    if os.environ.get("HQTD_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for path in kept:
            (GOLDEN / path.name).write_bytes(path.read_bytes())
    for path in kept:
        assert path.read_bytes() == (GOLDEN / path.name).read_bytes(), path.name


def _mean_iou(arrays, score):
    inter = arrays[f"{score}_intersection"].sum(0)
    union = arrays[f"{score}_union"].sum(0)
    return 100 * np.mean(inter[union > 0] / union[union > 0])


def test_runs_csv_boundary_columns_and_delta_cells(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out, "mini", scoring=SCORING)
    tidy = pd.read_csv(out / "runs.csv")
    assert list(tidy.columns[6:14]) == [
        "metric", "iou", "iou_low", "iou_high", "boundary_iou", "boundary_iou_low",
        "boundary_iou_high", "trimap4_iou",
    ]  # fmt: skip
    row = tidy.query("method == 'full' and seed == 1 and metric == 'mIoU19'").iloc[0]
    arrays = per_image_counts("full", 1)[0]
    assert row["boundary_iou"] == pytest.approx(_mean_iou(arrays, "boundary_iou"), abs=1e-4)
    assert row["trimap4_iou"] == pytest.approx(_mean_iou(arrays, "trimap4_iou"), abs=1e-4)
    assert row["iou"] == pytest.approx(_mean_iou(arrays, "iou"), abs=1e-4)
    assert row["iou_low"] < row["iou"] < row["iou_high"]
    # delta of full against baseline: mean over seeds 0, 1 of the per-seed differences
    delta = pd.read_csv(out / "ablation_delta_paper.csv").set_index("method")
    expected = np.mean(
        [_mean_iou(per_image_counts("full", s)[0], "iou")
         - _mean_iou(per_image_counts("baseline", s)[0], "iou") for s in (0, 1)]
    )  # fmt: skip
    column = "mini_gta5 ΔmIoU19"
    assert delta.loc["full", column] == pytest.approx(expected, abs=1e-4)
    assert delta.loc["full", f"{column} n"] == 2 and delta.loc["t2s", f"{column} n"] == 2
    assert delta.loc["full", f"{column} low"] > 0  # 6 points better: the interval excludes 0
    assert delta.loc["t2s", f"{column} low"] < 0 < delta.loc["t2s", f"{column} high"]
    md = (out / "ablation_delta_paper.md").read_text()
    full_line = next(line for line in md.splitlines() if line.startswith("| full"))
    t2s_line = next(line for line in md.splitlines() if line.startswith("| t2s"))
    assert full_line.count("*") == 2 and "*" not in t2s_line  # ΔmIoU19 and ΔmBIoU19
    assert "95% bootstrap interval" in md and "200 draws" in md


def test_bad_per_image_files_are_one_line_errors(runs, tmp_path):
    bad = runs / "mini_gta5/full/seed0/eval/paper/per_image.npz"
    other, _ = per_image_counts("full", 1)  # another evaluation's counts
    np.savez(bad, **other)
    with pytest.raises(HqtdError, match="per_image.npz: per-image counts do not sum"):
        write_tables(runs, tmp_path / "out", "mini", scoring=SCORING)
    np.savez(bad, iou_intersection=np.zeros((3, 16), dtype=np.int64))
    with pytest.raises(HqtdError, match="per_image.npz: expected \\(images, 19\\)"):
        write_tables(runs, tmp_path / "out", "mini", scoring=SCORING)


def _write_grid_results(root: Path, monkeypatch, quality: dict[str, float]) -> None:
    """The demo grid's runs (full, source_only; seeds 0, 1; mini_gta5, paper) and tables, the
    methods of the given quality."""
    runs = root / "results" / "runs" / "demo"
    for method in ("source_only", "full"):
        monkeypatch.setitem(QUALITY, method, quality[method])
        for seed in (0, 1):
            arrays, conf = per_image_counts(method, seed)
            out = runs / "mini_gta5" / method / f"seed{seed}" / "eval" / "paper"
            if out.exists():
                for path in out.iterdir():
                    path.unlink()
                out.rmdir()
            write_eval(runs, "mini_gta5", method, seed, "paper", conf)
            np.savez_compressed(out / "per_image.npz", **arrays)
    write_tables(runs, root / "results" / "tables" / "demo", "demo", scoring=SCORING)


def test_compare_shows_paired_intervals_between_revisions(tmp_path, monkeypatch):
    """A commit that makes full better (quality 0.5 -> 0.6) and leaves source_only alone: the
    interval of full's delta excludes 0, source_only's delta is 0 with a zero-width interval."""
    from test_compare import git

    from hqtd.report.compare import compare

    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q")
    _write_grid_results(tmp_path, monkeypatch, {"source_only": 0.3, "full": 0.5})
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    before = {s: per_image_counts("full", s)[0] for s in (0, 1)}
    _write_grid_results(tmp_path, monkeypatch, {"source_only": 0.3, "full": 0.6})
    after = {s: per_image_counts("full", s)[0] for s in (0, 1)}
    report = compare("HEAD", None, "demo", scoring=SCORING)
    assert "95% bootstrap interval" in report and "200 draws" in report
    line = next(x for x in report.splitlines() if x.startswith("| full ") and "| mIoU19 " in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    expected = np.mean([_mean_iou(after[s], "iou") - _mean_iou(before[s], "iou") for s in (0, 1)])
    assert float(cells[4]) == pytest.approx(expected, abs=0.01)
    low, high = (float(v) for v in cells[8].split("]")[0].strip("[").split(","))
    assert 0 < low < expected < high and cells[8].endswith("(n=2) *")
    same = next(x for x in report.splitlines() if x.startswith("| source_only ") and "mIoU19 " in x)
    assert same.strip("|").split("|")[-1].strip() == "[+0.00, +0.00] (n=2)"
    assert "### mini_gta5, paper protocol: boundary_iou" in report
    assert "### mini_gta5, paper protocol: trimap4_iou" in report


def test_cli_bootstrap_options_reach_the_tables_and_are_checked(runs, tmp_path, capsys):
    from hqtd.cli import main

    out = tmp_path / "out"
    args = ["tables", "--grid", "mini", "--runs", str(runs), "--out", str(out)]
    args += ["--bootstrap-draws", "50"]
    assert main([*args, "--confidence", "0.9"]) == 0
    assert "90% bootstrap interval" in (out / "ablation_delta_paper.md").read_text()
    assert "(50 draws" in (out / "ablation_delta_paper.md").read_text()
    assert main([*args, "--confidence", "1.5"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "hqtd tables: error: scoring.confidence=1.5: expected a level in (0, 1)"


def test_sixteen_class_boundary_columns_take_the_mean_of_the_13_classes():
    """mIoU13's subset is a tuple of class indices: it must select classes, not index axes."""
    from hqtd.report.tables import extra_columns, headline_subsets

    union = np.full((2, 16), 10, dtype=np.int64)
    inter = np.tile(np.arange(16, dtype=np.int64)[None] % 10, (2, 1))  # class c: IoU (c % 10)/10
    per_image = {"boundary_iou_intersection": inter, "boundary_iou_union": union,
                 "iou_intersection": inter, "iou_union": union}  # fmt: skip
    columns = extra_columns(per_image, headline_subsets(16), ScoringConfig(bootstrap_draws=10))
    per_class = [100.0 * (c % 10) / 10 for c in range(16)]
    thirteen = [per_class[c] for c in (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)]
    mean16, mean13 = columns["boundary_iou"][16:]
    assert mean16 == pytest.approx(sum(per_class) / 16)
    assert mean13 == pytest.approx(sum(thirteen) / 13)
