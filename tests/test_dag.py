"""The three views of the experiment DAG agree: hqtd.grid, dvc.yaml and the Snakemake workflow.

For the default grid, the training and evaluation commands that Snakemake would run (its dry-run)
and the stage commands and outputs DVC expands from dvc.yaml are the same set, and both equal what
hqtd.grid enumerates. Also: `snakemake --lint` is clean, and the conda environment pins the same
versions as pyproject.toml.
"""

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from hqtd.grid import Grid, load_grid, protocols

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


def normalise(command: str) -> str:
    """A command without its log redirection, with --workers N dropped (cores differ per host)."""
    words = shlex.split(REDIRECT.sub("", command))
    if "--workers" in words:
        i = words.index("--workers")
        del words[i : i + 2]
    return " ".join(words)


def expected_commands(
    grid: Grid | None = None, data_root: str = "data", narrowing: tuple[str, ...] = ()
) -> set[str]:
    """Every command of a grid's DAG (default: the default grid), built from hqtd.grid alone;
    ``narrowing``: the report jobs' ``--seeds``/``--overrides`` of a ``--config`` narrowed grid."""
    grid = load_grid() if grid is None else grid
    select = " ".join(["--grid", grid.name, *narrowing])
    commands = {
        f"hqtd tables --out {grid.tables_dir} {select}",
        f"hqtd figures --out {grid.figures_dir} {select}",
    }
    if grid.synthesized:
        commands.add(f"hqtd synth --out {data_root}/raw")
    for dataset, fmt in grid.datasets.items():
        raw, prepared = f"{data_root}/raw/{dataset}", f"{data_root}/prepared/{dataset}"
        args = [fmt, "--root", raw, "--out", prepared, *grid.prepare_args[dataset]]
        commands.add(" ".join(["hqtd", "prepare", *args]))
    for run in grid.runs():
        commands.add("hqtd train " + " ".join(run.train_overrides(data_root, grid.overrides)))
        for protocol in protocols():
            commands.add(f"hqtd evaluate run_dir={run.run_dir} protocol={protocol}")
    return commands


def expected_metrics() -> set[str]:
    return {f"{r.run_dir}/eval/{p}/metrics.json" for r in load_grid().runs() for p in protocols()}


def dry_run_jobs(
    cwd: Path = ROOT, config: tuple[str, ...] = (), forceall: bool = True
) -> list[dict[str, str]]:
    """The jobs of `snakemake -n -p` (default target) in ``cwd`` with ``--config config``: rule,
    output and shell command of each; every job of the DAG with ``forceall``, else the ones due."""
    force = ["--forceall"] if forceall else []
    result = subprocess.run(
        [BIN / "snakemake", "-n", "-p", *force, "--cores", "2", "--config", *config],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs, job = [], None
    for line in result.stdout.splitlines():
        if line.startswith("rule "):
            job = {"rule": line[5:].rstrip(":")}
            jobs.append(job)
        elif job is not None and line.strip().startswith("output: "):
            job["output"] = line.strip()[len("output: ") :]
        elif job is not None and line.startswith("Shell command: ") and job["rule"] != "all":
            job["shell"] = line[len("Shell command: ") :]
    return jobs


@pytest.fixture(scope="module")
def snakemake_jobs() -> list[dict[str, str]]:
    """The dry-run jobs of the default grid."""
    return dry_run_jobs()


@pytest.fixture(scope="module")
def dvc_stages() -> list:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(stage.name, stage.cmd, [(str(o), o.metric) for o in stage.outs])
                for stage in repo.index.stages]  # fmt: skip


def test_snakemake_runs_exactly_the_grids_commands(snakemake_jobs):
    commands = {normalise(job["shell"]) for job in snakemake_jobs if "shell" in job}
    assert commands == expected_commands()
    metrics = {
        path
        for job in snakemake_jobs
        if job["rule"] == "evaluate"
        for path in job["output"].split(", ")
        if path.endswith("metrics.json")
    }
    assert metrics == expected_metrics()
    trained = {job["output"] for job in snakemake_jobs if job["rule"] == "train"}
    assert trained == {f"{run.run_dir}/done" for run in load_grid().runs()}


def test_runs_missing_under_existing_tables_are_still_trained(tmp_path: Path):
    """Snakemake does not remake an existing output for an input that is merely missing: a run
    added to a grid whose tables and figures folders exist must still be due (the default target
    names every evaluation)."""
    shutil.copy(ROOT / "Snakefile", tmp_path)
    for folder in ("workflow", "params"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    grid = load_grid()
    (tmp_path / grid.tables_dir).mkdir(parents=True)
    (tmp_path / grid.figures_dir).mkdir(parents=True)
    jobs = dry_run_jobs(tmp_path, forceall=False)
    trained = {job["output"] for job in jobs if job["rule"] == "train"}
    assert trained == {f"{run.run_dir}/done" for run in grid.runs()}


def test_dvc_stages_run_exactly_the_grids_commands(dvc_stages):
    assert {normalise(cmd) for _, cmd, _ in dvc_stages} == expected_commands()
    metrics = {path for _, _, outs in dvc_stages for path, is_metric in outs if is_metric}
    assert metrics == expected_metrics()
    names = [name for name, _, _ in dvc_stages]
    assert len(names) == len(set(names)) == len(expected_commands())


def test_snakemake_lint_is_clean():
    result = subprocess.run(
        [BIN / "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_conda_env_pins_the_project_dependencies():
    env = yaml.safe_load((ROOT / "workflow/envs/hqtd.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(pip) == sorted(project["dependencies"])
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python.startswith("python=3.11")


def test_dvc_hashes_a_data_folder_alike_with_or_without_snakemakes_marker(tmp_path: Path):
    """Snakemake marks directory outputs with `.snakemake_timestamp`; the project's .dvcignore
    keeps that file out of DVC's hash, so `dvc status` accepts data however it was written."""
    (tmp_path / ".dvcignore").write_text((ROOT / ".dvcignore").read_text())
    subprocess.run([BIN / "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "0.png").write_bytes(b"pixels")

    def folder_hash() -> str:
        result = subprocess.run(
            [BIN / "dvc", "add", "-q", "data"], cwd=tmp_path, check=True, capture_output=True
        )
        assert not result.stderr, result.stderr
        return yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]

    plain = folder_hash()
    (data / ".snakemake_timestamp").touch()
    assert folder_hash() == plain
    (data / "1.png").write_bytes(b"more")
    assert folder_hash() != plain  # the hash does see real files
