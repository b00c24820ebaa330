"""``pip install .`` (not editable): hqtd refuses in one line without the repository's params/,
and runs with ``HQTD_PARAMS`` naming them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hqtd.config import PARAMS_DIR, PARAMS_ENV

REPO = PARAMS_DIR.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding hqtd as a wheel installs it: the package, without params/."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy: building in the repository would leave build/ there
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "hqtd", source / "hqtd", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = work / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(source)], check=True, capture_output=True)
    return site


def hqtd(site: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``hqtd args`` with only the installed copy importable, run from ``cwd``."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", PARAMS_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "hqtd.cli", *args],
        cwd=cwd,
        env=environ | {"PYTHONPATH": str(site)} | env,
        capture_output=True,
        text=True,
    )


def test_installed_hqtd_refuses_in_one_line_then_runs_with_hqtd_params(installed, tmp_path):
    args = ("train", "--cfg", "benchmark=mini_gta5", "method=full", "run_dir=runs/x")
    refused = hqtd(installed, tmp_path, *args)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert str(installed / "params" / "config.yaml") in refused.stderr  # the installed copy
    assert "pip install -e" in refused.stderr and PARAMS_ENV in refused.stderr

    done = hqtd(installed, tmp_path, *args, **{PARAMS_ENV: str(PARAMS_DIR)})
    assert done.returncode == 0, done.stderr
    assert "loss_weights/paper_x10.yaml" in done.stdout and "name: mini_gta5" in done.stdout
