"""The experiment grid of params/grid.yaml: enumeration, run directories, consistency checks."""

import shutil
from pathlib import Path

import pytest
import yaml

from hqtd.config import PARAMS_DIR, load_config
from hqtd.errors import HqtdError
from hqtd.grid import (
    Run,
    default_grid_name,
    grid_file,
    grid_names,
    load_grid,
    protocols,
    source_method,
)

ALL_VARIANTS = ["source_only", "oracle", "source_only_official", "baseline", "t2s", "pixel",
                "proto", "full", "full_edge", "official", "official_edge"]  # fmt: skip


def test_default_grid_is_demo_with_eight_runs_in_grid_order():
    assert default_grid_name() == "demo"
    expected = [
        Run("demo", bench, method, seed)
        for bench in ("mini_gta5", "mini_synthia")
        for method in ("source_only", "full")
        for seed in (0, 1)
    ]
    assert load_grid().runs() == expected
    assert load_grid(None).runs() == load_grid("demo").runs()


def test_mini_and_paper_grids_cover_the_variants():
    """The grids list neither source_only_official nor their datasets: official's method file
    names its source method, the benchmark files their datasets."""
    mini = load_grid("mini")
    assert list(mini.methods) == ALL_VARIANTS
    assert len(load_grid("mini").runs()) == 2 * 11 * 3
    paper = load_grid("paper")
    assert list(paper.methods) == [v for v in ALL_VARIANTS if v != "oracle"]
    assert set(paper.benchmarks) == {"gta5", "synthia"}
    assert len(load_grid("paper").runs()) == 2 * 10 * 3
    assert grid_names() == ["demo", "mini", "paper"]
    assert paper.target == "cityscapes" and not paper.synthesized
    assert paper.datasets == {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}
    assert mini.target == "mini_cityscapes" and mini.synthesized
    assert mini.prepare_args == {
        "mini_gta5": ("--resize", "192x108"),
        "mini_synthia": ("--resize", "192x108"),
        "mini_cityscapes": (),
    }


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
        Run("paper", "gta5", "source_only_official", 0),
    ):
        assert not supervised.adapts
        assert supervised.source_run is None and supervised.init_checkpoint is None


def test_official_starts_from_the_source_method_its_file_names():
    """official (2-branch ASPP) adapts from source_only_official, trained with 2 branches too."""
    assert source_method("official") == "source_only_official"
    assert source_method("full") == "source_only"  # the schema's default
    run = Run("paper", "synthia", "official", 1)
    assert run.source_run == Run("paper", "synthia", "source_only_official", 1)
    assert run.train_overrides()[-1] == (
        "train.init_checkpoint=results/runs/paper/synthia/source_only_official/seed1/"
        "checkpoints/last.pt"
    )
    source = load_config(["method=source_only_official", "benchmark=gta5", "run_dir=x"])
    adapted = load_config(["method=official", "benchmark=gta5", "run_dir=x"])
    assert source.method.stage == "source_only"
    assert source.model == adapted.model  # same architecture: the checkpoint loads as it is
    assert source.model.aspp_branches == 2 and source.model.align_corners
    assert source.method.augmentation == adapted.method.augmentation == "authors"


def test_a_source_method_must_be_supervised(tmp_path, monkeypatch):
    params = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, params)
    official = params / "method" / "official.yaml"
    official.write_text(official.read_text().replace("source_only_official", "full"))
    monkeypatch.setenv("HQTD_PARAMS", str(params))  # composed once per params folder
    with pytest.raises(HqtdError, match="method 'official': source_method 'full' has stage"):
        load_grid("paper")


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
    shared = {(r.benchmark, r.method, r.seed) for r in load_grid("demo").runs()} & {
        (r.benchmark, r.method, r.seed) for r in load_grid("mini").runs()
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
        load_grid("nope")


def _variant(tmp_path: Path, edit) -> Path:
    """A copy of params/grid.yaml with ``edit(data)`` applied to its parsed content."""
    data = yaml.safe_load(grid_file().read_text())
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
        (lambda d: d["grids"]["demo"].update(supervised=["full"]), "does not belong under"),
        (
            lambda d: d["grids"]["demo"].update(benchmarks=["mini_gta5", "gta5"]),
            "must share their target dataset, found cityscapes, mini_cityscapes",
        ),
        (lambda d: d["grids"]["demo"]["prepare"].update(gta5="--resize 1x1"), "names dataset"),
        (lambda d: d["grids"]["demo"].update(prepare=["--resize"]), "prepare must map"),
        (lambda d: d["grids"]["demo"].pop("seeds"), "missing: seeds, unknown: -"),
        (lambda d: d["grids"]["demo"].update(target="mini_cityscapes"), "unknown: target"),
        (lambda d: d["grids"]["demo"].update(adapted=["fulll"]), "method 'fulll'.*available"),
        (lambda d: d["grids"]["demo"].update(benchmarks=["mini_cs"]), "benchmark 'mini_cs'"),
    ],
)
def test_inconsistent_grid_is_rejected(tmp_path, edit, message):
    with pytest.raises(HqtdError, match=message):
        load_grid("demo", _variant(tmp_path, edit))


def test_default_must_name_a_grid(tmp_path):
    path = _variant(tmp_path, lambda d: d.update(default="tiny"))
    with pytest.raises(HqtdError, match="'default' must name one of the grids: demo, mini, paper"):
        load_grid(None, path)
    assert load_grid(None, _variant(tmp_path, lambda d: d.update(default="mini"))).name == "mini"
    aliased = _variant(tmp_path, lambda d: d.update(default=d["grids"]["demo"]))  # old `*demo`
    with pytest.raises(HqtdError, match="'default' must name one of the grids"):
        load_grid(None, aliased)
    # Naming the grid explicitly does not consult `default`.
    assert load_grid("mini", path).name == "mini"


def test_protocols_are_listed_once_for_every_grid(tmp_path):
    assert protocols() == ["paper", "strict"]
    with pytest.raises(HqtdError, match="protocol 'fast' unknown"):
        protocols(_variant(tmp_path, lambda d: d.update(protocols=["paper", "fast"])))


def test_prepare_args_are_split_per_dataset(tmp_path):
    def edit(data):
        data["grids"]["paper"]["prepare"] = {"gta5": "--split-list ids.txt --resize 1280x720"}

    paper = load_grid("paper", _variant(tmp_path, edit))
    assert paper.prepare_args["gta5"] == ("--split-list", "ids.txt", "--resize", "1280x720")
    assert paper.prepare_args["cityscapes"] == ()
    assert paper.datasets == {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}
