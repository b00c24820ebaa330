"""hqtd tables: numbers recomputed from confusion matrices, aggregation over seeds, golden renders.

The runs are synthetic: the test writes metrics.json + confusion.npy files in the layout of
``hqtd evaluate``. Set HQTD_UPDATE_GOLDEN=1 to rewrite tests/golden/tables after a deliberate
change of the rendering (and review the diff).
"""

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hqtd.cli import main
from hqtd.data.labels import class_names
from hqtd.errors import HqtdError
from hqtd.grid import Grid
from hqtd.report.tables import collect, write_tables

GOLDEN = Path(__file__).parent / "golden" / "tables"
#: The grid of the ``runs`` fixture, whose two benchmarks no grid of params/grid.yaml pairs.
FIXTURE_GRID = Grid("fixture", ("mini_synthia", "gta5"), ("source_only", "oracle"), ("full",),
                    seeds=(0, 1), overrides=(), prepare_args={})  # fmt: skip
METHOD_SHIFT = {"source_only": 0, "full": 40, "oracle": 90}
#: What ``hqtd evaluate`` records under "provenance" (values made up, one per key).
PROVENANCE = {
    "git_revision": "0" * 40, "git_dirty": False, "hqtd_version": "0.1.0",
    "torch_version": "2.13.0+cpu", "cuda_version": "none", "cudnn_version": "none",
    "device": "Some CPU @ 2.0GHz", "cpu_capability": "AVX2", "threads": 2, "data": "d" * 64,
    "determinism": "portable", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}  # fmt: skip


def confusion(num_classes: int, method: str, seed: int, absent: tuple[int, ...] = ()) -> np.ndarray:
    """A deterministic confusion matrix: a diagonal that grows with class, method and seed, small
    off-diagonal counts, and the ``absent`` classes neither in ground truth nor predicted."""
    gt, pred = np.meshgrid(np.arange(num_classes), np.arange(num_classes), indexing="ij")
    conf = (gt + 2 * pred + seed) % 4 * 3
    conf[np.arange(num_classes), np.arange(num_classes)] = (
        20 + 3 * np.arange(num_classes) + METHOD_SHIFT[method] + 7 * seed
    )
    conf[list(absent), :] = 0
    conf[:, list(absent)] = 0
    return conf.astype(np.int64)


def write_eval(
    runs: Path, benchmark: str, method: str, seed: int, protocol: str, conf, provenance=PROVENANCE
) -> None:
    """Files as ``hqtd evaluate`` writes them (metrics.json values deliberately not the real ones:
    the tables must recompute everything from confusion.npy); ``provenance=None``: a file from
    before hqtd recorded provenance."""
    out = runs / benchmark / method / f"seed{seed}" / "eval" / protocol
    out.mkdir(parents=True)
    np.save(out / "confusion.npy", conf)
    meta = {
        "benchmark": benchmark,
        "method": method,
        "seed": seed,
        "protocol": {"name": protocol, "label_size": "full", "checkpoint": "last"},
        "iteration": 600,
        "git_revision": "0" * 40,
        "num_classes": conf.shape[0],
        "class_names": list(class_names(conf.shape[0])),
        "iou": [-1.0] * conf.shape[0],
        "mIoU": -1.0,
        "pixel_accuracy": -1.0,
    }
    if provenance is not None:
        meta["provenance"] = provenance
    (out / "metrics.json").write_text(json.dumps(meta))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """gta5 (19 classes, reported rows) under both protocols; mini_synthia (16 classes, class 3
    absent) under the paper protocol with an oracle evaluated for one seed only, by an hqtd that
    did not record provenance yet."""
    root = tmp_path / "runs"
    for method in ("full", "source_only"):  # written out of order: tables sort by grid order
        for seed in (1, 0):
            for protocol in ("strict", "paper"):
                write_eval(root, "gta5", method, seed, protocol, confusion(19, method, seed))
            conf = confusion(16, method, seed, absent=(3,))
            write_eval(root, "mini_synthia", method, seed, "paper", conf)
    conf = confusion(16, "oracle", 0, (3,))
    write_eval(root, "mini_synthia", "oracle", 0, "paper", conf, provenance=None)
    return root


def hand_iou(conf: np.ndarray, c: int) -> float:
    """IoU of class c in percent: TP / (TP + FP + FN)."""
    tp = conf[c, c]
    return 100.0 * tp / (conf[c, :].sum() + conf[:, c].sum() - tp)


def test_golden_files(runs, tmp_path):
    out = tmp_path / "tables"
    written = write_tables(runs, out, FIXTURE_GRID)
    names = sorted(p.name for p in written)
    stems = ["ablation_paper", "ablation_strict", "perclass_gta5_paper", "perclass_gta5_strict",
             "perclass_mini_synthia_paper", "summary"]  # fmt: skip
    assert names == sorted(
        ["runs.csv"] + [f"{s}.{x}" for s in stems for x in ("csv", "html", "md", "tex")]
    )
    if os.environ.get("HQTD_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for path in written:
            (GOLDEN / path.name).write_bytes(path.read_bytes())
    for path in written:
        assert path.read_bytes() == (GOLDEN / path.name).read_bytes(), path.name
    # Byte-stable: a second run writes identical files.
    again = tmp_path / "again"
    write_tables(runs, again, FIXTURE_GRID)
    for path in written:
        assert (again / path.name).read_bytes() == path.read_bytes()


def test_cells_are_mean_and_sample_std_of_per_run_values(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out, FIXTURE_GRID)
    table = pd.read_csv(out / "perclass_gta5_paper.csv").set_index("method")
    per_run = [hand_iou(confusion(19, "full", seed), 4) for seed in (0, 1)]
    assert table.loc["full", "fence"] == pytest.approx(statistics.mean(per_run), abs=1e-4)
    assert table.loc["full", "fence std"] == pytest.approx(statistics.stdev(per_run), abs=1e-4)
    assert table.loc["full", "fence n"] == 2
    miou = [
        statistics.mean(hand_iou(confusion(19, "full", s), c) for c in range(19)) for s in (0, 1)
    ]
    assert table.loc["full", "mIoU19"] == pytest.approx(statistics.mean(miou), abs=1e-4)
    assert list(table.index[:2]) == ["source_only", "full"]
    assert table.loc["EHTDI (reported)", "mIoU19"] == 58.8
    assert np.isnan(table.loc["EHTDI (reported)", "road"])


def test_16_and_13_class_means_come_from_each_runs_matrix(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out, FIXTURE_GRID)
    tidy = pd.read_csv(out / "runs.csv")
    row = tidy.query("benchmark == 'mini_synthia' and method == 'source_only' and seed == 1")
    values = row.set_index("metric")["iou"]
    conf = confusion(16, "source_only", 1, absent=(3,))
    present16 = [c for c in range(16) if c != 3]  # class 3 (wall) is undefined: left out
    subset13 = [0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # METHOD.md §1, written out here
    expected16 = statistics.mean(hand_iou(conf, c) for c in present16)
    expected13 = statistics.mean(hand_iou(conf, c) for c in subset13)
    assert values["mIoU16"] == pytest.approx(expected16, abs=1e-4)
    assert values["mIoU13"] == pytest.approx(expected13, abs=1e-4)
    assert np.isnan(values["wall"])
    assert len(row) == 16 + 2
    # One row per run x protocol x class (+ means): gta5 2 methods x 2 seeds x 2 protocols x 20.
    assert len(tidy.query("benchmark == 'gta5'")) == 2 * 2 * 2 * 20


def test_every_row_carries_its_runs_provenance(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out, FIXTURE_GRID)
    tidy = pd.read_csv(out / "runs.csv", dtype=str, keep_default_na=False)
    assert list(tidy.columns[-len(PROVENANCE) :]) == list(PROVENANCE)
    recorded = tidy.query("method != 'oracle'")
    for key, value in PROVENANCE.items():
        assert set(recorded[key]) == {str(value)}, key
    old = tidy.query("method == 'oracle'")  # its metrics.json has only the git revision
    assert set(old["git_revision"]) == {"0" * 40}
    assert set(old["device"]) == set(old["data"]) == {""}


def test_markdown_marks_best_n_and_reported_rows(runs, tmp_path):
    out = tmp_path / "tables"
    write_tables(runs, out, FIXTURE_GRID)
    synthia = (out / "perclass_mini_synthia_paper.md").read_text()
    oracle_line = next(line for line in synthia.splitlines() if line.startswith("| oracle"))
    full_line = next(line for line in synthia.splitlines() if line.startswith("| full"))
    assert "(n=1)" in oracle_line and "**" not in oracle_line  # upper bound: never "best"
    assert full_line.count("**") == 2 * 17  # best in every defined column (15 classes, 2 means)
    assert "n=2" in synthia.splitlines()[0] and "(reported)" not in synthia
    # Reported numbers belong to the paper protocol only.
    assert "(reported)" not in (out / "perclass_gta5_strict.md").read_text()
    gta_paper = (out / "perclass_gta5_paper.md").read_text()
    reported = next(line for line in gta_paper.splitlines() if "EHTDI (reported)" in line)
    assert reported.split("|")[-2].strip() == "58.8"  # the mIoU19 column only
    assert all(not cell.strip() for cell in reported.split("|")[2:-2])  # no per-class numbers
    summary = (out / "summary.md").read_text()
    assert "gta5 mIoU19 (paper)" in summary and "mini_synthia mIoU13 (paper)" in summary
    assert "| EHTDI + edge (reported) |" in summary


def test_grid_selects_and_orders_runs(tmp_path):
    root = tmp_path / "runs"
    for method in ("full", "source_only", "pixel"):
        shift = {"pixel": "full"}.get(method, method)
        write_eval(root, "mini_gta5", method, 0, "paper", confusion(19, shift, 0))
    write_eval(root, "mini_gta5", "source_only", 5, "paper", confusion(19, "source_only", 0))
    picked = collect(root, "demo")  # demo: source_only, full; seeds 0, 1
    assert [(s.method, s.seed) for s in picked] == [("source_only", 0), ("full", 0)]


def test_cli_reads_and_writes_the_folders_of_its_grid(tmp_path, monkeypatch):
    """demo and mini hold a source_only run of the same benchmark and seed with different numbers:
    each grid's tables come from its own runs folder and go to its own tables folder."""
    monkeypatch.chdir(tmp_path)
    for grid, adapted, shift in (("demo", "full", 0), ("mini", "pixel", 1)):
        root = Path("results/runs") / grid
        write_eval(
            root, "mini_gta5", "source_only", 0, "paper", confusion(19, "source_only", shift)
        )
        write_eval(root, "mini_gta5", adapted, 0, "paper", confusion(19, "full", shift))
    assert main(["tables"]) == 0  # the default grid, demo
    assert main(["tables", "--grid", "mini"]) == 0
    assert sorted(p.name for p in Path("results/tables").iterdir()) == ["demo", "mini"]
    for grid, adapted, shift in (("demo", "full", 0), ("mini", "pixel", 1)):
        tidy = pd.read_csv(f"results/tables/{grid}/runs.csv")
        assert set(tidy["method"]) == {"source_only", adapted}
        road = tidy.query("method == 'source_only' and metric == 'road'")["iou"].item()
        assert road == pytest.approx(hand_iou(confusion(19, "source_only", shift), 0), abs=1e-4)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(HqtdError, match="no .*metrics.json found"):
        write_tables(tmp_path, tmp_path / "out", "paper")
    write_eval(tmp_path, "gta5", "full", 0, "paper", confusion(19, "full", 0))
    conf_file = tmp_path / "gta5/full/seed0/eval/paper/confusion.npy"
    np.save(conf_file, np.zeros((16, 16), dtype=np.int64))
    with pytest.raises(HqtdError, match="does not match the 19 class names"):
        write_tables(tmp_path, tmp_path / "out", "paper")
    conf_file.unlink()
    with pytest.raises(HqtdError, match="confusion.npy: cannot read"):
        write_tables(tmp_path, tmp_path / "out", "paper")
    moved = tmp_path / "gta5/full/seed1"
    (tmp_path / "gta5/full/seed0").rename(moved)
    np.save(moved / "eval/paper/confusion.npy", confusion(19, "full", 0))
    with pytest.raises(HqtdError, match="describes gta5/full/seed0/paper"):
        write_tables(tmp_path, tmp_path / "out", "paper")


def test_no_bold_where_every_competing_row_ties(tmp_path):
    root = tmp_path / "runs"
    for method in ("source_only", "full"):
        write_eval(root, "mini_gta5", method, 0, "paper", confusion(19, "source_only", 0))
    write_tables(root, tmp_path / "out", "mini")
    table = (tmp_path / "out" / "perclass_mini_gta5_paper.md").read_text()
    assert "**" not in table


def test_captions_name_the_source_run_of_each_adapted_row(tmp_path):
    """official adapts from source_only_official (its method file's source_method), the other
    adapted methods from source_only: the caption says which row started from which."""
    root = tmp_path / "runs"
    shifts = {"source_only": "source_only", "source_only_official": "source_only"}
    for method in ("source_only", "source_only_official", "full", "official"):
        conf = confusion(19, shifts.get(method, "full"), 0)
        write_eval(root, "mini_gta5", method, 0, "paper", conf)
    write_tables(root, tmp_path / "out", grid="mini")
    caption = (tmp_path / "out" / "summary.md").read_text().splitlines()[0]
    assert (
        "adapted rows start from their seed's run of source_only (full) or "
        "source_only_official (official)." in caption
    )
    methods = pd.read_csv(tmp_path / "out" / "summary.csv")["method"].tolist()
    assert methods == ["source_only", "source_only_official", "full", "official"]
    # Supervised rows alone: nothing started from anything.
    only = tmp_path / "only"
    write_eval(only, "mini_gta5", "source_only", 0, "paper", confusion(19, "source_only", 0))
    write_tables(only, tmp_path / "out_only", "mini")
    assert "adapted rows" not in (tmp_path / "out_only" / "summary.md").read_text()
