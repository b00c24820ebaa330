"""The experiment grid: the one enumeration of runs that Snakemake, DVC and the report share.

``params/grid.yaml`` names grids (``demo``, ``mini``, ``paper``); each lists benchmarks, methods and
seeds. :func:`runs` expands one grid into :class:`Run` objects, and each run knows its directory,
its datasets and, for an adaptation method, the source-only run it starts from. Every grid keeps its
results apart (``results/{runs,tables,figures}/<grid>``): grids train the same benchmark, method
and seed with different settings (demo shortens the schedules of mini). The benchmark and
method files under ``params/`` are the source of truth for datasets, training stages and the
source method each adaptation starts from: a grid's target, datasets and source-only runs are
derived here from the typed config those files compose into (:func:`hqtd.config.load_config`),
never spelled out (``hqtd dvc-yaml`` writes ``dvc.yaml`` from this module).
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from hqtd.config import Config, DatasetConfig, check_init, load_config, params_dir
from hqtd.data.formats import DATASETS
from hqtd.errors import HqtdError

RUNS_DIR = Path("results/runs")
TABLES_DIR = Path("results/tables")
FIGURES_DIR = Path("results/figures")
#: Stages of the methods trained from the model's init; every other method adapts.
SUPERVISED_STAGES = ("source_only", "oracle")
#: Prefix of the embedded mini datasets, which ``hqtd synth`` writes.
MINI_PREFIX = "mini_"


def grid_file() -> Path:
    """``params/grid.yaml`` (of the params folder in use, :func:`hqtd.config.params_dir`)."""
    return params_dir() / "grid.yaml"


@dataclass(frozen=True)
class Benchmark:
    """What the workflow needs from ``params/benchmark/<name>.yaml``."""

    name: str
    source: str  # prepared dataset names (folders under data/prepared)
    target: str
    num_classes: int
    mini: bool


def benchmark(name: str) -> Benchmark:
    """The benchmark ``name`` as the typed config composes it (``benchmark=<name>``).

    Raises:
        HqtdError: no such benchmark file, or a dataset root outside ``<data_root>/prepared``.
    """
    config = _group_config("benchmark", name, params_dir())
    section = config.benchmark
    return Benchmark(
        name=name,
        source=_dataset(config, section.source, "source"),
        target=_dataset(config, section.target, "target"),
        num_classes=section.num_classes,
        mini=section.mini,
    )


def _dataset(config: Config, dataset: DatasetConfig, key: str) -> str:
    """The prepared dataset a benchmark reads: its root's folder, which the workflow prepares
    (``hqtd prepare``) under ``<data_root>/prepared``."""
    root, prepared = PurePosixPath(dataset.root), PurePosixPath(config.data_root, "prepared")
    if root.parent != prepared:
        raise HqtdError(
            f"benchmark {config.benchmark.name}: benchmark.{key}.root={root}: expected "
            f"{prepared}/<dataset> (the workflow prepares every dataset there)"
        )
    return root.name


@cache
def _group_config(group: str, option: str, params: Path) -> Config:
    """The typed config of ``<group>=<option>`` (the other groups at their defaults), composed
    once per ``params`` folder (:func:`params_dir`, the cache key: Snakemake builds its DAG from
    these, and a test may point ``HQTD_PARAMS`` elsewhere).

    Raises:
        HqtdError: load_config's one line, prefixed with the group and option.
    """
    try:
        return load_config([f"{group}={option}", "run_dir=''"])
    except HqtdError as error:
        raise HqtdError(f"{group} {option!r}: {error}") from None


def method_stage(name: str) -> str:
    """The training stage (``source_only``, ``oracle``, ``adapt``) of ``params/method/<name>.yaml``.

    Raises:
        HqtdError: no such method file.
    """
    return _group_config("method", name, params_dir()).method.stage.value


def source_method(name: str) -> str:
    """The supervised method an adaptation method starts from (``method.source_method``).

    Raises:
        HqtdError: no such method file, or a source method that is not a supervised method.
    """
    source = _group_config("method", name, params_dir()).method.source_method
    if method_stage(source) not in SUPERVISED_STAGES:
        raise HqtdError(
            f"method {name!r}: source_method {source!r} has stage {method_stage(source)}, "
            f"expected one of {', '.join(SUPERVISED_STAGES)}"
        )
    return source


def dataset_format(dataset: str) -> str:
    """The ``hqtd prepare`` format of a dataset: ``mini_gta5`` -> ``gta5``, ``gta5`` -> itself."""
    fmt = dataset.removeprefix(MINI_PREFIX)
    if fmt not in DATASETS:
        raise HqtdError(f"dataset {dataset!r}: expected one of {', '.join(DATASETS)} (or mini_*)")
    return fmt


@dataclass(frozen=True)
class Run:
    """One training run of a grid: the grid's folder, a benchmark, a method and a seed."""

    grid: str  # Grid.folder: the grid's name, with its variant hash under extra overrides
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
        """The run of the method's ``source_method`` (same grid, benchmark and seed) that an
        adaptation run starts from; None for supervised methods."""
        if not self.adapts:
            return None
        return Run(self.grid, self.benchmark, source_method(self.method), self.seed)

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
    prepare_args: dict[str, tuple[str, ...]]  # dataset -> extra hqtd prepare options
    # Short hash of the overrides :meth:`narrowed` appended ("" for the grid's own settings): an
    # experiment queued with other settings trains into results/runs/<grid>-<variant>.
    variant: str = ""

    @property
    def folder(self) -> str:
        """``<grid>`` for the grid's own settings, ``<grid>-<variant>`` with extra overrides."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    @property
    def sources(self) -> tuple[str, ...]:
        """The source methods the adapted methods start from that ``supervised`` does not list
        (e.g. ``source_only_official`` for ``official``), in order of first use."""
        needed = (source_method(method) for method in self.adapted)
        return tuple(m for m in dict.fromkeys(needed) if m not in self.supervised)

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method of the grid in table order: supervised, the source methods the adapted
        ones need besides those, then adapted."""
        return self.supervised + self.sources + self.adapted

    @property
    def target(self) -> str:
        """The target dataset that the grid's benchmarks share."""
        return benchmark(self.benchmarks[0]).target

    @property
    def datasets(self) -> dict[str, str]:
        """Every prepared dataset the grid uses (sources, then the target) -> its prepare format."""
        used = [benchmark(name).source for name in self.benchmarks] + [self.target]
        return {dataset: dataset_format(dataset) for dataset in dict.fromkeys(used)}

    @property
    def synthesized(self) -> bool:
        """True when the grid's raw data is the embedded mini benchmark (``hqtd synth``)."""
        return any(dataset.startswith(MINI_PREFIX) for dataset in self.datasets)

    @property
    def runs_dir(self) -> Path:
        """``results/runs/<folder>``: the run directories of this grid, and only those."""
        return RUNS_DIR / self.folder

    @property
    def tables_dir(self) -> Path:
        """``results/tables/<folder>``: ``hqtd tables`` of this grid."""
        return TABLES_DIR / self.folder

    @property
    def figures_dir(self) -> Path:
        """``results/figures/<folder>``: ``hqtd figures`` of this grid."""
        return FIGURES_DIR / self.folder

    def narrowed(self, seeds: list[int] | None = None, overrides: str = "") -> Grid:
        """This grid with only ``seeds`` (None: all of its seeds) and ``overrides`` appended to
        its own (Snakemake's ``--config seeds=... overrides=...``, e.g. for a quick pass). Extra
        overrides give the grid its own :attr:`folder`, so its runs never mix with the grid's.

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
        extra = tuple(shlex.split(overrides))
        if not extra:
            return replace(self, seeds=kept)
        digest = hashlib.sha256(shlex.join(self.overrides + extra).encode()).hexdigest()[:8]
        return replace(self, seeds=kept, overrides=self.overrides + extra, variant=digest)

    def check_init(self, data_root: str = "data") -> None:
        """Stop before any job when a run of the grid would miss its ImageNet init file or start
        a real benchmark from random weights without ``model.init=scratch``
        (:func:`hqtd.config.check_init` on each benchmark x method's composed config).

        Raises:
            HqtdError: the first such run's one line, prefixed with the run.
        """
        for bench in self.benchmarks:
            for method in self.methods:
                run = Run(self.folder, bench, method, self.seeds[0])
                try:
                    check_init(load_config(run.train_overrides(data_root, self.overrides)))
                except HqtdError as error:
                    raise HqtdError(f"grid {self.name!r}, {bench} {method}: {error}") from None

    def runs(self) -> list[Run]:
        """The grid's runs, benchmark-major, then method, then seed."""
        return [
            Run(self.folder, bench, method, seed)
            for bench in self.benchmarks
            for method in self.methods
            for seed in self.seeds
        ]


def _read_grids(path: Path | None) -> dict:
    """The grid file (default :func:`grid_file`), checked to hold a ``grids`` mapping."""
    path = path or grid_file()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise HqtdError(f"{path}: unreadable grid file: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("grids"), dict):
        raise HqtdError(f"{path}: expected a mapping with a 'grids' section")
    return data


def grid_names(path: Path | None = None) -> list[str]:
    """Names of the grids in ``path`` (default :func:`grid_file`), in file order."""
    return list(_read_grids(path)["grids"])


def default_grid_name(path: Path | None = None) -> str:
    """The grid ``default`` names (the one ``dvc.yaml`` and a bare ``snakemake`` run)."""
    path = path or grid_file()
    data = _read_grids(path)
    name = data.get("default")
    if not isinstance(name, str) or name not in data["grids"]:  # e.g. an old `default: *demo`
        raise HqtdError(f"{path}: 'default' must name one of the grids: {', '.join(data['grids'])}")
    return name


#: Keys of a grid: all required but ``prepare``.
GRID_KEYS = ("benchmarks", "supervised", "adapted", "seeds", "overrides", "prepare")


def load_grid(name: str | None = None, path: Path | None = None) -> Grid:
    """Read and check one grid (the default grid when ``name`` is None).

    Raises:
        HqtdError: an unknown grid name, a missing or unknown key, an unknown benchmark or
            method, a method listed under the wrong kind, benchmarks with different targets, or
            ``prepare`` options for a dataset the grid does not use.
    """
    path = path or grid_file()
    grids = _read_grids(path)["grids"]
    name = default_grid_name(path) if name is None else name
    if name not in grids:
        raise HqtdError(f"{path}: unknown grid {name!r}; available: {', '.join(grids)}")
    spec = grids[name]
    where = f"{path}: grid {name!r}"
    missing = [key for key in GRID_KEYS[:-1] if key not in spec]
    unknown = [key for key in spec if key not in GRID_KEYS]
    if missing or unknown:
        raise HqtdError(
            f"{where}: expected the keys {', '.join(GRID_KEYS)} (prepare optional); "
            f"missing: {', '.join(missing) or '-'}, unknown: {', '.join(unknown) or '-'}"
        )
    prepare = spec.get("prepare") or {}
    if not isinstance(prepare, dict):
        raise HqtdError(f"{where}: prepare must map a dataset to its hqtd prepare options")
    grid = Grid(
        name=name,
        benchmarks=tuple(spec["benchmarks"]),
        supervised=tuple(spec["supervised"]),
        adapted=tuple(spec["adapted"]),
        seeds=tuple(int(seed) for seed in spec["seeds"]),
        overrides=tuple(shlex.split(spec["overrides"] or "")),
        prepare_args={str(k): tuple(shlex.split(v or "")) for k, v in prepare.items()},
    )
    _check(grid, where)
    every = {dataset: grid.prepare_args.get(dataset, ()) for dataset in grid.datasets}
    return replace(grid, prepare_args=every)


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
    targets = {benchmark(name).target for name in grid.benchmarks}
    if len(targets) > 1:
        raise HqtdError(
            f"{where}: the benchmarks must share their target dataset, "
            f"found {', '.join(sorted(targets))}"
        )
    extra = sorted(set(grid.prepare_args) - set(grid.datasets))
    if extra:
        raise HqtdError(
            f"{where}: prepare names dataset(s) {', '.join(extra)} that the grid does not use "
            f"({', '.join(grid.datasets)})"
        )


def protocols(path: Path | None = None) -> list[str]:
    """The evaluation protocols every run is evaluated under (``protocols`` of the grid file).

    Raises:
        HqtdError: the list is missing or names a protocol without ``params/protocol/<name>.yaml``.
    """
    path = path or grid_file()
    names = _read_grids(path).get("protocols")
    if not isinstance(names, list) or not names:
        raise HqtdError(f"{path}: expected a non-empty list 'protocols'")
    folder = params_dir() / "protocol"
    for name in names:
        if not (folder / f"{name}.yaml").is_file():
            available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
            raise HqtdError(f"{path}: protocol {name!r} unknown (available: {available})")
    return [str(name) for name in names]
