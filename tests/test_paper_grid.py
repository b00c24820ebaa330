"""The `paper` grid on raw datasets in the real GTA5, SYNTHIA and Cityscapes layouts.

Snakemake runs in a scratch folder that links the repository's Snakefile, workflow/ and params/, so
results/ and logs/ stay there; the raw fixture trees (tests/raw_datasets.py) are its data_root.
The dry run must list exactly the jobs hqtd.grid enumerates; the slow test runs the grid end to end
with a tiny model, one seed and two iterations per stage (`--config seeds=... overrides=...`).
"""

import csv
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from raw_datasets import KEPT_16, make_cityscapes, make_gta5, make_synthia
from test_dag import BIN, ROOT, dry_run_jobs, expected_commands, normalise

from hqtd.config import AUTHORS_INIT_FILE, load_config
from hqtd.data.labels import CLASS_NAMES
from hqtd.errors import HqtdError
from hqtd.grid import Grid, load_grid, protocols

#: Every `hqtd train` of the slow test: the mini network at a few pixels, two iterations per stage,
#: on the CPU (`official` starts from the 2-branch source_only_official checkpoint).
TINY = (
    "model=mini model.init=scratch model.mini_width=8 benchmark.source_size=[32,18] "
    "benchmark.target_size=[32,16] benchmark.crop_size=16 train.iterations=2 "
    "train.source_only_iterations=2 train.eval_every=2 train.checkpoint_every=2 "
    "train.batch_size=1 train.num_workers=0 train.threads=1 train.device=cpu"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw GTA5, SYNTHIA and Cityscapes trees under <root>/raw and the ImageNet init file (a
    stand-in: a dry run only checks that it exists), as the paper grid expects."""
    root = tmp_path_factory.mktemp("data")
    (root / "pretrained").mkdir()
    (root / "pretrained" / AUTHORS_INIT_FILE).touch()
    make_gta5(root / "raw" / "gta5")
    make_synthia(root / "raw" / "synthia")
    make_cityscapes(root / "raw" / "cityscapes")
    return root


def workdir(tmp_path: Path) -> Path:
    """A scratch Snakemake directory running the repository's workflow."""
    for name in ("Snakefile", "workflow", "params"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def check_jobs(
    jobs: list[dict[str, str]], grid: Grid, data_root: Path, narrowing: tuple[str, ...] = ()
) -> None:
    """The dry run holds each job of ``grid`` once: its commands, trained and evaluated runs
    (``narrowing``: the report jobs' options of a narrowed grid)."""
    runs = grid.runs()
    expected_counts = {
        "prepare": len(grid.datasets),
        "train": len(runs),
        "evaluate": len(runs) * len(protocols()),
        "tables": 1,
        "figures": 1,
        "all": 1,
    }
    assert Counter(job["rule"] for job in jobs) == expected_counts
    commands = {normalise(job["shell"]) for job in jobs if "shell" in job}
    assert commands == expected_commands(grid, str(data_root), narrowing)
    trained = {job["output"] for job in jobs if job["rule"] == "train"}
    assert trained == {f"{run.run_dir}/done" for run in runs}


def test_dry_run_lists_every_job_of_the_paper_grid(data_root: Path, tmp_path: Path):
    grid = load_grid("paper")
    jobs = dry_run_jobs(workdir(tmp_path), ("grid=paper", f"data_root={data_root}"))
    check_jobs(jobs, grid, data_root)
    # prepare; 10 methods (9 listed + source_only_official) x train + 2 evaluations; report
    assert len(jobs) == 3 + 2 * 10 * 3 * (1 + 2) + 3
    assert not (tmp_path / "results").exists()
    official_starts_from_the_two_branch_source_run(jobs)


def official_starts_from_the_two_branch_source_run(jobs: list[dict[str, str]]) -> None:
    """Each `official` run loads the last checkpoint of the source_only_official run of its
    benchmark and seed, which the DAG trains with 2 ASPP branches, as `official` itself."""
    trains = {
        job["output"]: normalise(job["shell"]).split() for job in jobs if job["rule"] == "train"
    }
    official = {out: words for out, words in trains.items() if "method=official" in words}
    assert len(official) == 2 * 3
    for out, words in official.items():
        source_dir = out.replace("/official/", "/source_only_official/").removesuffix("/done")
        assert f"train.init_checkpoint={source_dir}/checkpoints/last.pt" in words
        source = trains[f"{source_dir}/done"]
        assert "method=source_only_official" in source
        assert not any(word.startswith("train.init_checkpoint=") for word in source)
        chosen = [w for w in source if w.startswith(("benchmark=", "method="))]
        config = load_config([*chosen, "run_dir=x"])
        assert config.method.stage == "source_only" and config.model.aspp_branches == 2
        adapted = load_config(
            [w for w in words if w.startswith(("benchmark=", "method="))] + ["run_dir=x"]
        )
        assert adapted.model == config.model


def test_config_seeds_and_overrides_narrow_the_grid(data_root: Path, tmp_path: Path):
    config = ("grid=paper", f"data_root={data_root}", "seeds=[2,0]", "overrides=train.iterations=7")
    jobs = dry_run_jobs(workdir(tmp_path), config)
    grid = load_grid("paper").narrowed([0, 2], "train.iterations=7")
    check_jobs(jobs, grid, data_root, ("--seeds", "0", "2", "--overrides", "train.iterations=7"))
    trains = [normalise(job["shell"]).split() for job in jobs if job["rule"] == "train"]
    assert all(words[-1] == "train.iterations=7" for words in trains)
    assert {word for words in trains for word in words if word.startswith("seed=")} == {
        "seed=0",
        "seed=2",
    }


def test_snakemake_rejects_seeds_outside_the_grid(tmp_path: Path):
    command = [BIN / "snakemake", "-n", "--cores", "1", "--config", "grid=paper", "seeds=[0,5]"]
    result = subprocess.run(command, cwd=workdir(tmp_path), capture_output=True, text=True)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "seeds [0, 5]: expected a non-empty subset of grid 'paper'" in output


def test_narrowed_keeps_grid_order_and_appends_overrides():
    paper = load_grid("paper")
    assert paper.narrowed() == paper
    narrowed = paper.narrowed([2, 1], "model=mini 'train.lr=0.1'")
    assert narrowed.seeds == (1, 2)
    assert narrowed.overrides == ("model=mini", "train.lr=0.1")

    def named(runs):
        return [(run.benchmark, run.method, run.seed) for run in runs]

    assert named(narrowed.runs()) == [r for r in named(paper.runs()) if r[2] != 0]
    assert {run.grid for run in narrowed.runs()} == {narrowed.folder}  # its own folder
    demo = load_grid("demo")
    assert demo.narrowed(None, "train.iterations=5").overrides[-1] == "train.iterations=5"
    assert demo.narrowed(None, "train.iterations=5").overrides[:-1] == demo.overrides
    for seeds in ([], [3]):
        with pytest.raises(HqtdError, match=r"seeds .*: expected a non-empty subset"):
            paper.narrowed(seeds)


def read_header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle))


@pytest.mark.slow
def test_paper_grid_runs_end_to_end_on_raw_fixture_trees(data_root: Path, tmp_path: Path):
    config = ("grid=paper", f"data_root={data_root}", "seeds=[0]", f"overrides={TINY}")
    command = [BIN / "snakemake", "--cores", "2", "--config", *config]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=workdir(tmp_path), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    grid = load_grid("paper").narrowed([0], TINY)
    for run in grid.runs():
        for protocol in protocols():
            metrics = json.loads(
                (tmp_path / run.run_dir / "eval" / protocol / "metrics.json").read_text()
            )
            assert metrics["benchmark"] == run.benchmark
            assert len(metrics["iou"]) == (19 if run.benchmark == "gta5" else 16)
    names_16 = [CLASS_NAMES[i] for i in KEPT_16]
    layouts = {"gta5": (list(CLASS_NAMES), ["mIoU19"]), "synthia": (names_16, ["mIoU16", "mIoU13"])}
    tables = tmp_path / grid.tables_dir  # results/tables/paper-<hash of TINY>
    for benchmark, (classes, means) in layouts.items():
        for protocol in protocols():
            path = tables / f"perclass_{benchmark}_{protocol}.csv"
            columns = [c for c in read_header(path)[1:] if not c.endswith((" std", " n"))]
            assert columns == classes + means
            with path.open(newline="") as handle:
                methods = [row["method"] for row in csv.DictReader(handle)]
            assert methods[: len(grid.methods)] == list(grid.methods)
        figures = {f"{kind}_{benchmark}.png" for kind in ("iou", "curves", "qualitative")}
        assert figures <= {p.name for p in (tmp_path / grid.figures_dir).iterdir()}
