"""The experiment grid: the one enumeration of runs that Snakemake, DVC and the report share.

``params/grid.yaml`` names grids (``demo``, ``mini``, ``paper``); each lists benchmarks, methods and
seeds. :func:`runs` expands one grid into :class:`Run` objects, and each run knows its directory,
its datasets and, for an adaptation method, the source-only run it starts from. Every grid keeps its
results apart (``results/{runs,tables,figures}/<grid>``): grids train the same benchmark, method
and seed with different settings (demo shortens the schedules of mini). The benchmark and
method files under ``params/`` are the source of truth for datasets and training stages; the copies
that ``grid.yaml`` spells out for ``dvc.yaml`` are checked against them here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from hqtd.cli import DATASETS
from hqtd.config import PARAMS_DIR
from hqtd.errors import HqtdError

GRID_FILE = PARAMS_DIR / "grid.yaml"
RUNS_DIR = Path("results/runs")
TABLES_DIR = Path("results/tables")
FIGURES_DIR = Path("results/figures")
#: Stages of the methods trained from the model's init; every other method adapts.
SUPERVISED_STAGES = ("source_only", "oracle")
#: Prefix of the embedded mini datasets, which ``hqtd synth`` writes.
MINI_PREFIX = "mini_"


@dataclass(frozen=True)
class Benchmark:
    """What the workflow needs from ``params/benchmark/<name>.yaml``."""

    name: str
    source: str  # prepared dataset names (folders under data/prepared)
    target: str
    num_classes: int
    mini: bool


@cache
def benchmark(name: str) -> Benchmark:
    """Read ``params/benchmark/<name>.yaml``.

    Raises:
        HqtdError: no such benchmark file.
    """
    section = _params_file("benchmark", name)["benchmark"]
    # Roots look like "${data_root}/prepared/<dataset>": the dataset is the last path component.
    return Benchmark(
        name=name,
        source=PurePosixPath(section["source"]["root"]).name,
        target=PurePosixPath(section["target"]["root"]).name,
        num_classes=int(section["num_classes"]),
        mini=bool(section["mini"]),
    )


@cache
def method_stage(name: str) -> str:
    """The training stage (``source_only``, ``oracle``, ``adapt``) of ``params/method/<name>.yaml``.

    Raises:
        HqtdError: no such method file.
    """
    return str(_params_file("method", name).get("stage", "adapt"))


def _params_file(group: str, name: str) -> dict:
    """The YAML of ``params/<group>/<name>.yaml``; a missing file names the available ones."""
    path = PARAMS_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise HqtdError(f"{group} {name!r}: {path} not found ({_available(group)})")
    return yaml.safe_load(path.read_text())


def _available(group: str) -> str:
    return "available: " + ", ".join(sorted(p.stem for p in (PARAMS_DIR / group).glob("*.yaml")))


def dataset_format(dataset: str) -> str:
    """The ``hqtd prepare`` format of a dataset: ``mini_gta5`` -> ``gta5``, ``gta5`` -> itself."""
    fmt = dataset.removeprefix(MINI_PREFIX)
    if fmt not in DATASETS:
        raise HqtdError(f"dataset {dataset!r}: expected one of {', '.join(DATASETS)} (or mini_*)")
    return fmt


@dataclass(frozen=True)
class Run:
    """One training run of a grid: the grid's name, a benchmark, a method and a seed."""

    grid: str
    benchmark: str
    method: str
    seed: int

    @property
    def run_dir(self) -> Path:
        """``results/runs/<grid>/<benchmark>/<method>/seed<k>`` (relative to the repository)."""
        return RUNS_DIR / self.grid / self.benchmark / self.method / f"seed{self.seed}"

    @property
    def datasets(self) -> tuple[str, str]:
        """The (source, target) prepared datasets this run trains and evaluates on."""
        info = benchmark(self.benchmark)
        return info.source, info.target

    @property
    def adapts(self) -> bool:
        """True for adaptation methods, which start from a source-only checkpoint."""
        return method_stage(self.method) not in SUPERVISED_STAGES

    @property
    def source_run(self) -> Run | None:
        """The source-only run (same grid, benchmark and seed) an adaptation run starts from."""
        return Run(self.grid, self.benchmark, "source_only", self.seed) if self.adapts else None

    @property
    def init_checkpoint(self) -> Path | None:
        """The checkpoint ``train.init_checkpoint`` points at, None for supervised methods."""
        source = self.source_run
        return None if source is None else source.run_dir / "checkpoints" / "last.pt"

    def train_overrides(
        self, data_root: str = "data", grid_overrides: tuple[str, ...] = ()
    ) -> list[str]:
        """The ``hqtd train`` arguments of this run (the grid's overrides come last).

        ``train.on_change=restart``: a workflow reruns a training job only when one of its inputs
        changed, so a run directory holding another computation is to be trained again.
        """
        args = [
            f"benchmark={self.benchmark}",
            f"method={self.method}",
            f"seed={self.seed}",
            f"run_dir={self.run_dir}",
            f"data_root={data_root}",
            "train.on_change=restart",
        ]
        if self.init_checkpoint is not None:
            args.append(f"train.init_checkpoint={self.init_checkpoint}")
        return args + list(grid_overrides)


@dataclass(frozen=True)
class Grid:
    """One named grid of ``params/grid.yaml``."""

    name: str
    benchmarks: tuple[str, ...]
    supervised: tuple[str, ...]
    adapted: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    target: str
    datasets: dict[str, str]  # dataset -> hqtd prepare format
    prepare_args: dict[str, tuple[str, ...]]  # dataset -> extra hqtd prepare options
    synth: tuple[str, ...]

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method of the grid in table order: supervised first, then adapted."""
        return self.supervised + self.adapted

    @property
    def runs_dir(self) -> Path:
        """``results/runs/<grid>``: the run directories of this grid, and only those."""
        return RUNS_DIR / self.name

    @property
    def tables_dir(self) -> Path:
        """``results/tables/<grid>``: ``hqtd tables`` of this grid."""
        return TABLES_DIR / self.name

    @property
    def figures_dir(self) -> Path:
        """``results/figures/<grid>``: ``hqtd figures`` of this grid."""
        return FIGURES_DIR / self.name

    def narrowed(self, seeds: list[int] | None = None, overrides: str = "") -> Grid:
        """This grid with only ``seeds`` (None: all of its seeds) and ``overrides`` appended to
        its own (Snakemake's ``--config seeds=... overrides=...``, e.g. for a quick pass).

        Raises:
            HqtdError: ``seeds`` is empty or names a seed the grid does not have (its tables would
                leave that run out).
        """
        if seeds is not None and not (seeds and set(seeds) <= set(self.seeds)):
            raise HqtdError(
                f"seeds {seeds}: expected a non-empty subset of grid {self.name!r}'s "
                f"seeds {list(self.seeds)}"
            )
        kept = self.seeds if seeds is None else tuple(s for s in self.seeds if s in seeds)
        return replace(self, seeds=kept, overrides=self.overrides + tuple(shlex.split(overrides)))

    def runs(self) -> list[Run]:
        """The grid's runs, benchmark-major, then method, then seed."""
        return [
            Run(self.name, bench, method, seed)
            for bench in self.benchmarks
            for method in self.methods
            for seed in self.seeds
        ]


def _read_grids(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise HqtdError(f"{path}: unreadable grid file: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("grids"), dict):
        raise HqtdError(f"{path}: expected a mapping with a 'grids' section")
    return data


def grid_names(path: Path = GRID_FILE) -> list[str]:
    """Names of the grids in ``path``, in file order."""
    return list(_read_grids(path)["grids"])


def default_grid_name(path: Path = GRID_FILE) -> str:
    """The grid ``default`` aliases (the one ``dvc repro`` and a bare ``snakemake`` run)."""
    data = _read_grids(path)
    default = data.get("default")
    name = default.get("name") if isinstance(default, dict) else None
    if name not in data["grids"] or data["grids"][name] != default:
        raise HqtdError(f"{path}: 'default' must be an alias of one grid, e.g. 'default: *demo'")
    return name


def load_grid(name: str | None = None, path: Path = GRID_FILE) -> Grid:
    """Read and check one grid (the default grid when ``name`` is None).

    Raises:
        HqtdError: an unknown grid name, a missing key, an unknown benchmark or method, a method
            listed under the wrong kind, or ``target``/``datasets``/``synth`` that disagree with
            the benchmark files.
    """
    grids = _read_grids(path)["grids"]
    name = default_grid_name(path) if name is None else name
    if name not in grids:
        raise HqtdError(f"{path}: unknown grid {name!r}; available: {', '.join(grids)}")
    spec = grids[name]
    where = f"{path}: grid {name!r}"
    keys = ("benchmarks", "supervised", "adapted", "methods", "seeds", "overrides", "target",
            "datasets", "synth")  # fmt: skip
    missing = [key for key in keys if key not in spec]
    if missing:
        raise HqtdError(f"{where}: missing key(s) {', '.join(missing)}")
    if not all(
        isinstance(entry, dict) and "format" in entry for entry in spec["datasets"].values()
    ):
        raise HqtdError(f"{where}: each of datasets must be {{format: FORMAT, args: OPTIONS}}")
    grid = Grid(
        name=name,
        benchmarks=tuple(spec["benchmarks"]),
        supervised=tuple(spec["supervised"]),
        adapted=tuple(spec["adapted"]),
        seeds=tuple(int(seed) for seed in spec["seeds"]),
        overrides=tuple(shlex.split(spec["overrides"] or "")),
        target=spec["target"],
        datasets={dataset: entry["format"] for dataset, entry in spec["datasets"].items()},
        prepare_args={
            dataset: tuple(shlex.split(entry.get("args") or ""))
            for dataset, entry in spec["datasets"].items()
        },
        synth=tuple(spec["synth"]),
    )
    _check(grid, where)
    if list(spec["methods"]) != list(grid.methods):
        raise HqtdError(f"{where}: methods must be supervised + adapted: {list(grid.methods)}")
    return grid


def _check(grid: Grid, where: str) -> None:
    """The consistency rules of :func:`load_grid` (see its Raises)."""
    if not (grid.benchmarks and grid.methods and grid.seeds):
        raise HqtdError(f"{where}: benchmarks, methods and seeds must not be empty")
    for kind, methods in (("supervised", grid.supervised), ("adapted", grid.adapted)):
        for method in methods:
            if (method_stage(method) in SUPERVISED_STAGES) != (kind == "supervised"):
                raise HqtdError(
                    f"{where}: method {method!r} (stage {method_stage(method)}) "
                    f"does not belong under {kind}"
                )
    if grid.adapted and "source_only" not in grid.supervised:
        raise HqtdError(f"{where}: adapted methods start from source_only, add it to supervised")
    infos = [benchmark(name) for name in grid.benchmarks]
    for info in infos:  # dvc.yaml names a run's source data after its benchmark
        if info.source != info.name:
            raise HqtdError(
                f"{where}: benchmark {info.name!r} must read data/prepared/{info.name} "
                f"as its source, not {info.source}"
            )
    targets = {info.target for info in infos}
    if targets != {grid.target}:
        raise HqtdError(
            f"{where}: target must be the benchmarks' target dataset, "
            f"found {', '.join(sorted(targets))}"
        )
    used = {info.source for info in infos} | targets
    expected = {dataset: dataset_format(dataset) for dataset in sorted(used)}
    if grid.datasets != expected:
        raise HqtdError(f"{where}: datasets and formats must be {expected}, got {grid.datasets}")
    synthesized = any(dataset.startswith(MINI_PREFIX) for dataset in used)
    if list(grid.synth) != (["mini"] if synthesized else []):
        raise HqtdError(f"{where}: synth must be {'[mini]' if synthesized else '[]'}")


def protocols(path: Path = GRID_FILE) -> list[str]:
    """The evaluation protocols every run is evaluated under (``protocols`` of the grid file).

    Raises:
        HqtdError: the list is missing or names a protocol without ``params/protocol/<name>.yaml``.
    """
    names = _read_grids(path).get("protocols")
    if not isinstance(names, list) or not names:
        raise HqtdError(f"{path}: expected a non-empty list 'protocols'")
    for name in names:
        if not (PARAMS_DIR / "protocol" / f"{name}.yaml").is_file():
            raise HqtdError(f"{path}: protocol {name!r} unknown ({_available('protocol')})")
    return [str(name) for name in names]


def runs(grid: str | None = None) -> list[Run]:
    """The runs of grid ``grid`` of ``params/grid.yaml`` (the default grid when None)."""
    return load_grid(grid).runs()
