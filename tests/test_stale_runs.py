"""Tables come from exactly the grid's runs: its benchmarks, methods, seeds and config (issue 17).

The issue's case: a queued experiment with seeds=[0] and 10 iterations averaged old full-length
runs (and other seeds) with the new ones. Here the runs folder holds the demo grid's runs of both
seeds with their saved configs; the experiment retrains seed 0 with 10 iterations but one of its
runs is still the old one.
"""

import re
from pathlib import Path

from test_tables import confusion, write_eval

from hqtd.cli import main
from hqtd.config import load_config, to_yaml
from hqtd.grid import Run, load_grid
from hqtd.report.tables import collect

EXPERIMENT = "train.iterations=10"


def write_run(root: Path, run: Run, overrides: tuple[str, ...]) -> None:
    """An evaluated run whose config.yaml is what the grid's `hqtd train` saves."""
    write_eval(
        root,
        run.benchmark,
        run.method,
        run.seed,
        "paper",
        confusion(19 if run.benchmark == "mini_gta5" else 16, run.method, run.seed),
    )
    config = load_config(run.train_overrides("data", overrides))
    (root / run.benchmark / run.method / f"seed{run.seed}" / "config.yaml").write_text(
        to_yaml(config)
    )


def stale_folder(tmp_path: Path) -> tuple[Path, set[tuple[str, str, int]]]:
    """The runs folder and the runs the experiment really made."""
    demo = load_grid("demo")
    experiment = demo.narrowed([0], EXPERIMENT)
    root = tmp_path / "runs"
    new = {
        ("mini_gta5", "source_only", 0),
        ("mini_gta5", "full", 0),
        ("mini_synthia", "source_only", 0),
    }
    for run in demo.runs():
        fresh = (run.benchmark, run.method, run.seed) in new
        write_run(root, run, experiment.overrides if fresh else demo.overrides)
    return root, new


def test_tables_keep_exactly_the_experiments_runs_and_name_the_others(tmp_path, capsys):
    root, new = stale_folder(tmp_path)
    experiment = load_grid("demo").narrowed([0], EXPERIMENT)
    picked = collect(root, experiment)
    assert {(s.benchmark, s.method, s.seed) for s in picked} == new
    err = capsys.readouterr().err
    left_out = re.search(r"left out 4 run\(s\) not in grid demo-\w{8}: (.*)", err).group(1)
    assert left_out.split(", ") == sorted(
        f"{b}/{m}/seed1" for b in ("mini_gta5", "mini_synthia") for m in ("source_only", "full")
    )
    stale = root / "mini_synthia" / "full" / "seed0"
    assert f"left out {stale}: its config differs" in err and "train.iterations" in err


def test_the_grids_own_settings_still_read_their_runs(tmp_path, capsys):
    root, new = stale_folder(tmp_path)
    picked = collect(root, load_grid("demo"))  # committed settings: seeds 0, 1, 300 iterations
    expected = {(r.benchmark, r.method, r.seed) for r in load_grid("demo").runs()} - new
    assert {(s.benchmark, s.method, s.seed) for s in picked} == expected
    assert "config differs from grid demo's in train.iterations" in capsys.readouterr().err


def test_cli_selects_the_experiment_like_snakemake(tmp_path, capsys):
    root, new = stale_folder(tmp_path)
    out = tmp_path / "tables"
    argv = ["tables", "--grid", "demo", "--seeds", "0", "--overrides", EXPERIMENT]
    assert main([*argv, "--runs", str(root), "--out", str(out)]) == 0
    assert f"from {len(new)} evaluations" in capsys.readouterr().out


def test_an_experiment_with_other_settings_has_its_own_folders():
    demo = load_grid("demo")
    experiment = demo.narrowed([0], EXPERIMENT)
    assert demo.runs_dir == Path("results/runs/demo")  # the committed layout
    assert demo.narrowed([0]).runs_dir == demo.runs_dir  # fewer seeds: the same runs
    assert re.fullmatch(r"results/runs/demo-[0-9a-f]{8}", str(experiment.runs_dir))
    assert experiment.tables_dir.name == experiment.runs_dir.name == experiment.folder
    assert experiment.runs()[0].run_dir.parts[2] == experiment.folder
    assert demo.narrowed([0], "train.iterations=11").folder != experiment.folder
