"""The experiment grid of params/grid.yaml: enumeration, run directories, consistency checks."""

from pathlib import Path

import pytest
import yaml

from hqtd.errors import HqtdError
from hqtd.grid import (
    GRID_FILE,
    Run,
    default_grid_name,
    grid_names,
    load_grid,
    protocols,
    runs,
)

ALL_VARIANTS = ["source_only", "oracle", "baseline", "t2s", "pixel", "proto", "full",
                "full_edge", "official"]  # fmt: skip


def test_default_grid_is_demo_with_eight_runs_in_grid_order():
    assert default_grid_name() == "demo"
    expected = [
        Run("demo", bench, method, seed)
        for bench in ("mini_gta5", "mini_synthia")
        for method in ("source_only", "full")
        for seed in (0, 1)
    ]
    assert runs() == expected
    assert runs(None) == runs("demo")


def test_mini_and_paper_grids_cover_the_variants():
    mini = load_grid("mini")
    assert list(mini.methods) == ALL_VARIANTS
    assert len(runs("mini")) == 2 * 9 * 3
    paper = load_grid("paper")
    assert list(paper.methods) == [v for v in ALL_VARIANTS if v != "oracle"]
    assert set(paper.benchmarks) == {"gta5", "synthia"}
    assert len(runs("paper")) == 2 * 8 * 3
    assert grid_names() == ["demo", "mini", "paper"]


def test_run_dir_datasets_and_source_run():
    run = Run("mini", "mini_synthia", "full", 2)
    assert run.run_dir == Path("results/runs/mini/mini_synthia/full/seed2")
    assert run.datasets == ("mini_synthia", "mini_cityscapes")
    assert run.adapts
    assert run.source_run == Run("mini", "mini_synthia", "source_only", 2)
    assert run.init_checkpoint == Path(
        "results/runs/mini/mini_synthia/source_only/seed2/checkpoints/last.pt"
    )
    assert Run("paper", "gta5", "baseline", 0).datasets == ("gta5", "cityscapes")
    for supervised in (
        Run("paper", "gta5", "source_only", 0),
        Run("mini", "mini_gta5", "oracle", 1),
    ):
        assert not supervised.adapts
        assert supervised.source_run is None and supervised.init_checkpoint is None


def test_train_overrides_name_the_run_and_end_with_the_grid_overrides():
    args = Run("paper", "gta5", "t2s", 1).train_overrides("/data", ("train.iterations=5",))
    assert args == [
        "benchmark=gta5",
        "method=t2s",
        "seed=1",
        "run_dir=results/runs/paper/gta5/t2s/seed1",
        "data_root=/data",
        "train.on_change=restart",  # the workflows rerun a job only when its inputs changed
        "train.init_checkpoint=results/runs/paper/gta5/source_only/seed1/checkpoints/last.pt",
        "train.iterations=5",
    ]
    assert Run("paper", "gta5", "source_only", 0).train_overrides()[-3:] == [
        "run_dir=results/runs/paper/gta5/source_only/seed0",
        "data_root=data",
        "train.on_change=restart",
    ]
    assert load_grid("demo").overrides[0] == "train.iterations=300"


def test_grids_never_share_a_run_tables_or_figures_folder():
    """demo and mini train the same benchmark, method and seed with different schedules: their
    results must live side by side, and adaptation must start from its own grid's source_only."""
    grids = [load_grid(name) for name in grid_names()]
    owner: dict[Path, str] = {}
    for grid in grids:
        for run in grid.runs():
            assert owner.setdefault(run.run_dir, grid.name) == grid.name, run.run_dir
            assert run.run_dir.is_relative_to(grid.runs_dir)
            if run.source_run is not None:
                assert run.source_run in grid.runs()
                assert run.init_checkpoint.is_relative_to(grid.runs_dir)
    shared = {(r.benchmark, r.method, r.seed) for r in runs("demo")} & {
        (r.benchmark, r.method, r.seed) for r in runs("mini")
    }
    assert ("mini_gta5", "full", 0) in shared  # the collision this layout exists to avoid
    for folders in (
        [g.runs_dir for g in grids],
        [g.tables_dir for g in grids],
        [g.figures_dir for g in grids],
    ):
        assert len(set(folders)) == len(grids)
        assert not any(a != b and a.is_relative_to(b) for a in folders for b in folders)
    assert load_grid("demo").tables_dir == Path("results/tables/demo")
    assert load_grid("mini").figures_dir == Path("results/figures/mini")


def test_unknown_grid_is_a_one_line_error_listing_the_grids():
    with pytest.raises(HqtdError, match=r"unknown grid 'nope'; available: demo, mini, paper"):
        runs("nope")


def _variant(tmp_path: Path, edit) -> Path:
    """A copy of params/grid.yaml with ``edit(data)`` applied to its parsed content."""
    data = yaml.safe_load(GRID_FILE.read_text())
    edit(data)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["grids"]["demo"].update(adapted=["source_only"]),
            "does not belong under adapted",
        ),
        (lambda d: d["grids"]["demo"].update(supervised=["oracle"]), "add it to supervised"),
        (lambda d: d["grids"]["demo"].update(benchmarks=["mini_gta5", "gta5"]), "target must be"),
        (lambda d: d["grids"]["demo"]["datasets"].pop("mini_synthia"), "datasets and formats"),
        (lambda d: d["grids"]["demo"]["datasets"].update(mini_gta5="gta5"), "format: FORMAT"),
        (lambda d: d["grids"]["demo"].update(synth=[]), r"synth must be \[mini\]"),
        (lambda d: d["grids"]["demo"].pop("seeds"), "missing key"),
        (
            lambda d: d["grids"]["demo"].update(methods=["full", "source_only"]),
            r"supervised \+ adapted",
        ),
        (lambda d: d["grids"]["demo"].update(adapted=["fulll"]), "method 'fulll'.*available"),
        (lambda d: d["grids"]["demo"].update(benchmarks=["mini_cs"]), "benchmark 'mini_cs'"),
    ],
)
def test_inconsistent_grid_is_rejected(tmp_path, edit, message):
    with pytest.raises(HqtdError, match=message):
        load_grid("demo", _variant(tmp_path, edit))


def test_default_must_alias_a_grid(tmp_path):
    path = _variant(tmp_path, lambda d: d.update(default={**d["default"], "seeds": [7]}))
    with pytest.raises(HqtdError, match="'default' must be an alias of one grid"):
        load_grid(None, path)
    # Naming the grid explicitly does not consult `default`.
    assert load_grid("mini", path).name == "mini"


def test_protocols_are_listed_once_for_every_grid(tmp_path):
    assert protocols() == ["paper", "strict"]
    with pytest.raises(HqtdError, match="protocol 'fast' unknown"):
        protocols(_variant(tmp_path, lambda d: d.update(protocols=["paper", "fast"])))


def test_prepare_args_are_split_per_dataset(tmp_path):
    def edit(data):
        data["grids"]["paper"]["datasets"]["gta5"]["args"] = (
            "--split-list ids.txt --resize 1280x720"
        )

    paper = load_grid("paper", _variant(tmp_path, edit))
    assert paper.prepare_args["gta5"] == ("--split-list", "ids.txt", "--resize", "1280x720")
    assert paper.prepare_args["cityscapes"] == ()
    assert paper.datasets == {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}
