"""Real-data runs start from ImageNet weights unless model.init=scratch says so (issue 17)."""

import subprocess
import sys
from pathlib import Path

import pytest

from hqtd.cli import main
from hqtd.config import AUTHORS_INIT_FILE, check_init, init_file, load_config
from hqtd.errors import HqtdError
from hqtd.grid import load_grid

REPO = Path(__file__).resolve().parent.parent


def test_paper_benchmarks_default_to_the_authors_init_under_data_root():
    config = load_config(["benchmark=synthia", "run_dir=r", "data_root=/d"])
    assert config.model.init == f"/d/pretrained/{AUTHORS_INIT_FILE}"


def test_missing_init_file_is_one_line_naming_the_file(tmp_path, capsys):
    status = main(["train", "benchmark=gta5", f"data_root={tmp_path}", f"run_dir={tmp_path}/r"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path}/pretrained/{AUTHORS_INIT_FILE} not found" in err
    assert not (tmp_path / "r").exists()  # stopped before the run directory was made


def test_unset_init_on_a_real_benchmark_needs_an_explicit_scratch():
    unset = load_config(["benchmark=gta5", "run_dir=r", "model.init=null"])
    with pytest.raises(HqtdError, match="model.init is not set"):
        check_init(unset)
    check_init(load_config(["benchmark=gta5", "run_dir=r", "model.init=scratch"]))
    check_init(load_config(["benchmark=mini_gta5", "run_dir=r"]))  # mini: from scratch by design
    adapt = ["benchmark=gta5", "run_dir=r", "model.init=null", "train.init_checkpoint=x.pt"]
    check_init(load_config(adapt))  # adaptation starts from its source-only checkpoint


def test_torchvision_init_is_the_torch_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    args = ["benchmark=gta5", "run_dir=r", "model.init=torchvision"]
    with pytest.raises(HqtdError, match="needs model.input_style=torchvision"):
        check_init(load_config(args))
    config = load_config([*args, "model.input_style=torchvision"])
    expected = tmp_path / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    assert init_file(config.model) == expected
    with pytest.raises(HqtdError, match="resnet101-63fe2227.pth not found"):
        check_init(config)
    expected.parent.mkdir(parents=True)
    expected.touch()
    check_init(config)


def test_grid_check_passes_once_the_file_is_in_place(tmp_path):
    paper = load_grid("paper")
    with pytest.raises(HqtdError, match=f"grid 'paper', gta5 source_only: model.init: {tmp_path}"):
        paper.check_init(str(tmp_path))
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / AUTHORS_INIT_FILE).touch()
    paper.check_init(str(tmp_path))


def test_paper_grid_without_weights_stops_before_any_job(tmp_path):
    snakemake = Path(sys.executable).parent / "snakemake"
    done = subprocess.run(
        [snakemake, "-n", "--config", "grid=paper", f"data_root={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hqtd: grid 'paper', gta5 source_only: model.init: ")
    assert f"{tmp_path}/pretrained/{AUTHORS_INIT_FILE} not found" in last
    assert "Job stats" not in done.stdout + done.stderr  # nothing was scheduled
