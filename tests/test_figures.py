"""hqtd figures: deterministic PNGs from real (tiny) runs, predictions that match the evaluation,
validation curves and IoU bars from hand-made inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hqtd.cli import main
from hqtd.config import load_config
from hqtd.data.prepare import prepare
from hqtd.data.synth.write import Counts, generate
from hqtd.errors import HqtdError
from hqtd.evaluate import evaluate_command
from hqtd.grid import load_grid
from hqtd.metrics import confusion_counts
from hqtd.report.figures import (
    DPI,
    diagnostic_curves,
    featured_method,
    iou_bars,
    predict,
    read_val_log,
    val_curves,
    write_figures,
)
from hqtd.report.tables import RunScores
from hqtd.train import train

TINY = [
    "benchmark=mini_gta5",
    "benchmark.source_size=[64,36]",
    "benchmark.target_size=[64,32]",
    "benchmark.crop_size=32",
    "model.mini_width=8",
    "train.threads=1",
    "train.eval_every=1",
    "train.iterations=2",
    "train.source_only_iterations=2",
]


#: The grid of the ``runs`` fixture: the mini grid narrowed to seeds 0-1 and TINY's overrides.
NARROWED = ([0, 1], " ".join(TINY[1:]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/runs of mini_gta5 with source_only seeds 0, 1 and full seed 0 (2 iterations each,
    the latter with pseudo-label diagnostics), evaluated under the paper protocol."""
    root = tmp_path_factory.mktemp("figures")
    generate(root / "raw", seed=0, counts=Counts(2, 2, 2, 3), workers=1)
    for name, kind in (("mini_gta5", "gta5"), ("mini_cityscapes", "cityscapes")):
        prepare(kind, root / "raw" / name, root / "prepared" / name, workers=1)
    runs = root / "runs"
    common = [f"data_root={root}", *TINY]
    for seed in (0, 1):
        run_dir = runs / "mini_gta5" / "source_only" / f"seed{seed}"
        train(load_config([*common, "method=source_only", f"seed={seed}", f"run_dir={run_dir}"]))
    init = runs / "mini_gta5" / "source_only" / "seed0" / "checkpoints" / "last.pt"
    full = runs / "mini_gta5" / "full" / "seed0"
    train(load_config([*common, "method=full", f"run_dir={full}", f"train.init_checkpoint={init}",
                       "train.diagnostics=2"]))  # fmt: skip
    for run_dir in sorted(runs.glob("*/*/seed*")):
        evaluate_command([f"run_dir={run_dir}", "protocol=paper"])
    return runs


def test_figures_are_written_and_byte_stable(runs, tmp_path):
    first = write_figures(runs, tmp_path / "a", load_grid("mini").narrowed(*NARROWED))
    names = ["iou_mini_gta5.png", "boundary_mini_gta5.png", "curves_mini_gta5.png",
             "diagnostics_mini_gta5.png", "qualitative_mini_gta5.png"]  # fmt: skip
    assert [p.name for p in first] == names
    second = write_figures(runs, tmp_path / "b", load_grid("mini").narrowed(*NARROWED))
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    with Image.open(first[0]) as png:
        assert png.size == (10 * DPI, int(3.6 * DPI))
        assert "Software" not in png.info


def test_panel_is_skipped_without_checkpoints(runs, tmp_path, capsys):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("*.pt"))
    written = write_figures(copy, tmp_path / "out", load_grid("mini").narrowed(*NARROWED))
    names = ["iou_mini_gta5.png", "boundary_mini_gta5.png", "curves_mini_gta5.png",
             "diagnostics_mini_gta5.png"]  # fmt: skip
    assert [p.name for p in written] == names
    assert "qualitative panel skipped" in capsys.readouterr().out


def test_cli_reads_and_writes_the_folders_of_its_grid(runs, tmp_path, monkeypatch):
    """The tiny runs are the mini grid narrowed to seeds 0-1 and TINY's overrides: their own
    folder, results/runs/mini-<hash of the overrides>."""
    narrowing = ["--seeds", "0", "1", "--overrides", " ".join(TINY[1:])]
    grid = load_grid("mini").narrowed(*NARROWED)
    shutil.copytree(runs, tmp_path / grid.runs_dir, ignore=shutil.ignore_patterns("*.pt"))
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "--grid", "mini", *narrowing]) == 0
    assert sorted(p.name for p in Path("results/figures").iterdir()) == [grid.folder]
    written = sorted(p.name for p in grid.figures_dir.iterdir())
    assert written == ["boundary_mini_gta5.png", "curves_mini_gta5.png",
                       "diagnostics_mini_gta5.png", "iou_mini_gta5.png"]  # fmt: skip
    assert main(["figures"]) == 2  # the default grid, demo, has no runs here


def test_predictions_reproduce_the_paper_protocol_confusion(runs):
    run_dir = runs / "mini_gta5" / "full" / "seed0"
    images, labels, preds, classes = predict(run_dir, "paper", [0, 1, 2])
    assert classes == 19 and images[0].shape == (32, 64, 3) and images[0].dtype == np.uint8
    conf = sum(confusion_counts(p, y, 19).numpy() for p, y in zip(preds, labels, strict=True))
    assert np.array_equal(conf, np.load(run_dir / "eval" / "paper" / "confusion.npy"))


def test_featured_method_prefers_full_then_the_last_adaptation():
    assert featured_method(["source_only", "baseline", "full", "official"]) == "full"
    assert featured_method(["source_only", "oracle", "baseline", "t2s"]) == "t2s"
    assert featured_method(["source_only", "oracle"]) is None


def test_val_curves_average_seeds_at_common_iterations():
    curves = {"full": [[(100, 10.0), (200, 30.0)], [(100, 20.0), (200, 50.0), (300, 60.0)]]}
    line = val_curves(curves, "mini_gta5").axes[0].lines[0]
    assert line.get_xydata().tolist() == [[100.0, 15.0], [200.0, 40.0]]


def test_diagnostic_curves_average_seeds_and_leave_gaps_for_undefined_values():
    def diag(accuracy, boundary):
        keys = ("coverage", "paste_precision")
        return {"pseudo_label_accuracy": accuracy, "paste_precision_boundary": boundary,
                **dict.fromkeys(keys, 0.5)}  # fmt: skip

    seed0 = [(100, diag(0.2, 0.1)), (200, diag(0.4, None))]
    seed1 = [(100, diag(0.4, 0.3)), (200, diag(0.6, None)), (300, diag(0.9, 1.0))]
    curves = {"full": [seed0, seed1]}
    fig = diagnostic_curves(curves, "mini_gta5")
    accuracy, _, precision = fig.axes
    np.testing.assert_allclose(accuracy.lines[0].get_xydata(), [[100, 0.3], [200, 0.5]])
    boundary = precision.lines[1].get_xydata()
    assert precision.lines[1].get_linestyle() == "--"
    assert boundary[0].tolist() == pytest.approx([100, 0.2]) and np.isnan(boundary[1, 1])


def test_iou_bars_are_seed_means():
    def scores(method, seed, iou):
        no_extras = ({}, {}, {}, {})  # means, provenance, per-image counts, extra columns
        return RunScores("b", method, seed, "paper", "best", 1, ("road", "sky"), iou, *no_extras)

    runs = [scores("source_only", 0, (10.0, 40.0)), scores("source_only", 1, (20.0, 60.0)),
            scores("full", 0, (30.0, float("nan")))]  # fmt: skip
    ax = iou_bars(runs, "b", "paper", ["source_only", "full"]).axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert heights[:2] == [15.0, 50.0]
    assert heights[2] == 30.0 and np.isnan(heights[3])


def test_bad_val_log_line_names_the_file_and_line(tmp_path):
    log = tmp_path / "val_log.jsonl"
    log.write_text(json.dumps({"iteration": 1, "mIoU": 5.0}) + "\n{not json\n")
    with pytest.raises(HqtdError, match=r"val_log.jsonl:2: expected a JSON object"):
        read_val_log(log)
