"""`hqtd dvc-yaml`: dvc.yaml is generated from hqtd.grid; its stages depend on the code they run.

The committed dvc.yaml must be the generated one. Its stages list the hqtd source files each
command imports, so that editing one (here hqtd/data/labels.py) makes `dvc status` report exactly
the stages whose computation could change, and editing a file no stage imports reports nothing.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from raw_datasets import make_cityscapes, make_gta5
from test_dag import BIN, ROOT
from test_paper_grid import TINY

from hqtd.cli import main
from hqtd.dvcfile import dvc_yaml
from hqtd.grid import load_grid


def test_committed_dvc_yaml_is_the_generated_one(tmp_path, capsys):
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(load_grid()), "dvc.yaml is stale: run `hqtd dvc-yaml`"
    assert main(["dvc-yaml", "--check"]) == 0
    stale = tmp_path / "dvc.yaml"
    stale.write_text(committed.replace("--workers 2", "--workers 3"))
    assert main(["dvc-yaml", "--check", "--out", str(stale)]) == 2
    assert "out of date with params/grid.yaml" in capsys.readouterr().err
    assert main(["dvc-yaml", "--out", str(stale)]) == 0
    assert stale.read_text() == committed


@pytest.fixture(scope="module")
def stage_deps() -> dict[str, set[str]]:
    """Stage name -> the paths it depends on, as DVC expands the committed dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {stage.name: {str(dep) for dep in stage.deps} for stage in repo.index.stages}


def test_training_and_evaluation_depend_on_the_code_they_import(stage_deps):
    """The modules the hand-written dvc.yaml left out (issue #12) are deps now; the command-line
    shell and the report comparison, which no stage computes with, are not."""
    train = stage_deps["train@mini_gta5-source_only-0"]
    adapt = stage_deps["adapt@mini_synthia-full-1"]
    evaluate = stage_deps["evaluate@mini_gta5-full-0-strict"]
    for imported in ("hqtd/data/labels.py", "hqtd/data/formats/png.py", "hqtd/io.py"):
        assert imported in train and imported in adapt and imported in evaluate
    for imported in ("hqtd/models/deeplabv2.py", "hqtd/data/datasets.py"):
        assert imported in evaluate
    assert "hqtd/adapt/step.py" in train and "hqtd/adapt/step.py" not in evaluate
    assert {
        "params/config.yaml",
        "params/benchmark/mini_gta5.yaml",
        "params/method/source_only.yaml",
        "params/model/mini.yaml",
    } <= train
    assert not any(dep.startswith("params/model/deeplabv2") for dep in train)
    assert "results/runs/demo/mini_synthia/source_only/seed1/checkpoints/last.pt" in adapt
    assert "params/protocol/strict.yaml" in evaluate
    assert "results/runs/demo/mini_gta5/full/seed0/config.yaml" in evaluate
    assert "params/grid.yaml" in stage_deps["tables"] | stage_deps["figures"]
    for deps in stage_deps.values():
        assert not {"hqtd/cli.py", "hqtd/report/compare.py", "hqtd/dvcfile.py"} & deps


def run(command: list, cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def changed_stages(cwd: Path, env: dict) -> dict[str, list]:
    """`dvc status --json`: out-of-date stage -> what changed."""
    return json.loads(run([BIN / "dvc", "status", "--json"], cwd, env))


@pytest.mark.slow
def test_editing_labels_py_invalidates_training_and_evaluation(tmp_path: Path):
    """A copy of the repository with a tiny grid (GTA5 fixture tree, source_only and full, one
    seed, two iterations), reproduced with `dvc repro`; then hqtd/data/labels.py is edited."""
    repo = tmp_path / "repo"
    for name in ("hqtd", "params"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    grids = {
        "protocols": ["paper", "strict"],
        "grids": {
            "tiny": {
                "benchmarks": ["gta5"],
                "supervised": ["source_only"],
                "adapted": ["full"],
                "seeds": [0],
                "overrides": TINY + " train.log_every=1",  # DVC expects train_log.jsonl
            }
        },
        "default": "tiny",
    }
    (repo / "params" / "grid.yaml").write_text(yaml.safe_dump(grids))
    make_gta5(repo / "data" / "raw" / "gta5")
    make_cityscapes(repo / "data" / "raw" / "cityscapes")
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    run([BIN / "dvc", "init", "--no-scm", "-q"], repo, env)
    run([BIN / "hqtd", "dvc-yaml"], repo, env)
    run([BIN / "dvc", "repro", "-q"], repo, env)
    assert changed_stages(repo, env) == {}

    labels = repo / "hqtd" / "data" / "labels.py"
    original = labels.read_text()
    labels.write_text(original + "# edited\n")
    changed = changed_stages(repo, env)
    expected = {
        "prepare@gta5",
        "prepare@cityscapes",
        "train@gta5-source_only-0",
        "adapt@gta5-full-0",
    }
    expected |= {
        f"evaluate@gta5-{m}-0-{p}" for m in ("source_only", "full") for p in ("paper", "strict")
    }
    assert expected <= set(changed)
    for stage in expected:
        assert {"changed deps": {"hqtd/data/labels.py": "modified"}} in changed[stage], stage

    labels.write_text(original)
    assert changed_stages(repo, env) == {}
    compare = repo / "hqtd" / "report" / "compare.py"  # imported by no computing stage
    compare.write_text(compare.read_text() + "# edited\n")
    assert set(changed_stages(repo, env)) <= {"tables", "figures"}
