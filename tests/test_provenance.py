"""hqtd.provenance: what marks a checkout's code as dirty (run in a git copy of the package)."""

import shutil
import subprocess
import sys
from pathlib import Path

import hqtd
from hqtd.config import PARAMS_DIR


def git(repo: Path, *args: str) -> None:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    subprocess.run(command, cwd=repo, check=True, capture_output=True)


def dirty_flag(repo: Path) -> str:
    code = "from hqtd.provenance import git_dirty; print(git_dirty())"
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip()


def test_git_dirty_follows_the_code_and_params_not_the_results(tmp_path: Path):
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(hqtd.__file__).parent, tmp_path / "hqtd", ignore=ignore)
    shutil.copytree(PARAMS_DIR, tmp_path / "params")
    result = tmp_path / "results" / "metrics.json"
    result.parent.mkdir()
    result.write_text("{}\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "code and a result")
    assert dirty_flag(tmp_path) == "False"
    result.write_text('{"mIoU": 1}\n')  # a rerun rewrote a committed result
    assert dirty_flag(tmp_path) == "False"
    (tmp_path / "params" / "config.yaml").write_text("# edited\n", encoding="utf-8")
    assert dirty_flag(tmp_path) == "True"
    git(tmp_path, "checkout", "-q", "params")
    (tmp_path / "hqtd" / "new_module.py").write_text("")  # a new, uncommitted module
    assert dirty_flag(tmp_path) == "True"
    shutil.rmtree(tmp_path / ".git")
    assert dirty_flag(tmp_path) == "unknown"
