# Targets and per-job settings, all derived from params/grid.yaml through hqtd.grid (no rules here).
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from hqtd.errors import HqtdError
from hqtd.grid import MINI_PREFIX, Run, benchmark, load_grid, protocols


validate(config, "../schemas/config.schema.yaml")


# Jobs call the `hqtd` installed next to the Python running Snakemake, so `.venv/bin/snakemake`
# works without an activated venv (with --use-conda the job's environment comes first).
envvars:
    "PATH",


os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def config_seeds() -> list[int] | None:
    """--config seeds: null, one seed, or a list (whose items Snakemake passes as strings)."""
    seeds = config.get("seeds")
    if seeds is None:
        return None
    return [int(seed) for seed in (seeds if isinstance(seeds, list) else [seeds])]


GRID = load_grid(config.get("grid")).narrowed(config_seeds(), config["overrides"] or "")
RUNS = GRID.runs()
PROTOCOLS = protocols()
DATA_ROOT = config["data_root"]
RAW = f"{DATA_ROOT}/raw"
PREPARED = f"{DATA_ROOT}/prepared"
try:  # a missing ImageNet init stops the workflow before any job, with hqtd's one line
    GRID.check_init(DATA_ROOT)
except HqtdError as error:
    sys.exit(f"hqtd: {error}")
# Wildcard patterns of one run's directory; Run.run_dir spells out the same layout. Each grid has
# its own runs, tables and figures folders: grids train the same runs with different settings.
RUN_DIR = f"{GRID.runs_dir}/{{benchmark}}/{{method}}/seed{{seed}}"
TABLES = str(GRID.tables_dir)
FIGURES = str(GRID.figures_dir)
ENV = "../envs/hqtd.yaml"  # relative to the rule files


wildcard_constraints:
    dataset="|".join(GRID.datasets),
    benchmark="|".join(GRID.benchmarks),
    method="|".join(GRID.methods),
    seed=r"\d+",
    protocol="|".join(PROTOCOLS),


def run_of(wildcards) -> Run:
    return Run(GRID.folder, wildcards.benchmark, wildcards.method, int(wildcards.seed))


def is_mini(wildcards) -> bool:
    """Resources follow the benchmark kind: the mini benchmark on CPU, the real ones on GPUs."""
    if hasattr(wildcards, "benchmark"):
        return benchmark(wildcards.benchmark).mini
    if hasattr(wildcards, "dataset"):
        return wildcards.dataset.startswith(MINI_PREFIX)
    return any(benchmark(name).mini for name in GRID.benchmarks)


def resource(step: str, key: str):
    """threads/resources callable: params/workflow.yaml resources.<kind>.<step>.<key>."""

    def lookup(wildcards):
        return config["resources"]["mini" if is_mini(wildcards) else "real"][step][key]

    return lookup


def prepared(dataset: str) -> str:
    """The manifest of a prepared dataset: the prepare job's only declared output."""
    return f"{PREPARED}/{dataset}/manifest.json"


def train_inputs(wildcards) -> dict[str, str]:
    """The run's prepared datasets and, for adaptation, the finished source-only run."""
    run = run_of(wildcards)
    source, target = run.datasets
    inputs = {"source": prepared(source), "target": prepared(target)}
    if run.source_run is not None:
        inputs["init"] = f"{run.source_run.run_dir}/done"
    return inputs


def train_args(wildcards) -> str:
    """hqtd train overrides: the run, the data root, train.init_checkpoint, the grid's overrides."""
    return shlex.join(run_of(wildcards).train_overrides(DATA_ROOT, GRID.overrides))


def report_args() -> str:
    """hqtd tables/figures options selecting exactly this run's grid: its name, and the seeds and
    overrides of --config when given."""
    args = ["--grid", GRID.name]
    if config_seeds() is not None:
        args += ["--seeds", *map(str, GRID.seeds)]
    if config["overrides"]:
        args += ["--overrides", config["overrides"]]
    return shlex.join(args)


def metrics_files() -> list[str]:
    return [f"{run.run_dir}/eval/{p}/metrics.json" for run in RUNS for p in PROTOCOLS]


def done_files() -> list[str]:
    return [f"{run.run_dir}/done" for run in RUNS]
