"""Extending hqtd (README, Extending hqtd): a method variant or a benchmark is one params file plus
a grid line, in a params folder that ``HQTD_PARAMS`` selects."""

import shutil
from pathlib import Path

import pytest
from test_train import TINY, data_root, read_jsonl  # noqa: F401  (fixture)

from hqtd.config import PARAMS_DIR, PARAMS_ENV, from_yaml, load_config
from hqtd.grid import Run, benchmark, load_grid
from hqtd.train import train

VARIANT = """\
# full with a stricter pseudo-label threshold (the extension test's variant)
stage: adapt
t2s: true
pixel: true
proto: true
t_max: 0.99
"""


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of params/, selected by HQTD_PARAMS, whose demo grid may be edited."""
    copy = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, copy)
    monkeypatch.setenv(PARAMS_ENV, str(copy))
    return copy


def add_to_demo_grid(params: Path, line: str, added: str) -> None:
    """Replace the demo grid's ``line`` (``key: [...]``) with ``added`` (its one grid line)."""
    grid = params / "grid.yaml"
    text = grid.read_text()
    assert text.index(f"    {line}\n") < text.index("\n  mini:\n")  # the first grid is demo
    grid.write_text(text.replace(f"    {line}\n", f"    {added}\n", 1))


def test_a_new_variant_is_composed_listed_and_trained(
    params: Path,
    data_root: Path,  # noqa: F811  (fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    (params / "method" / "full_strict.yaml").write_text(VARIANT)
    add_to_demo_grid(params, "adapted: [full]", "adapted: [full, full_strict]")

    config = load_config(["method=full_strict", "run_dir=r"])
    assert config.method.name == "full_strict"  # named after its file
    assert (config.method.t_max, config.method.proto) == (0.99, True)
    assert config.method.lambda_st == 1.0  # the mini benchmark's loss weights (paper_x10)
    grid = load_grid("demo")
    assert grid.methods == ("source_only", "full", "full_strict")
    run = Run("demo", "mini_gta5", "full_strict", 0)
    assert run in grid.runs() and run.source_run == Run("demo", "mini_gta5", "source_only", 0)

    monkeypatch.chdir(tmp_path)  # the grid's run directories are relative
    tiny = [*TINY, "train.source_only_iterations=2", "train.iterations=2", "train.eval_every=2"]
    for each in (run.source_run, run):  # the grid's own train commands, shortened
        train(load_config([*each.train_overrides(str(data_root), grid.overrides), *tiny]))
    assert from_yaml(run.run_dir / "config.yaml").method.name == "full_strict"
    assert [record["iteration"] for record in read_jsonl(run.run_dir / "train_log.jsonl")] == [1, 2]


def test_a_new_benchmark_is_composed_and_listed(params: Path):
    text = (params / "benchmark" / "mini_gta5.yaml").read_text()
    assert "crop_size: 96" in text
    (params / "benchmark" / "mini_gta5_crop64.yaml").write_text(
        text.replace("crop_size: 96", "crop_size: 64")
    )
    add_to_demo_grid(
        params,
        "benchmarks: [mini_gta5, mini_synthia]",
        "benchmarks: [mini_gta5, mini_synthia, mini_gta5_crop64]",
    )
    config = load_config(["benchmark=mini_gta5_crop64", "run_dir=r"])
    assert (config.benchmark.name, config.benchmark.crop_size) == ("mini_gta5_crop64", 64)
    assert benchmark("mini_gta5_crop64").source == "mini_gta5"
    grid = load_grid("demo")
    assert Run("demo", "mini_gta5_crop64", "full", 1) in grid.runs()
