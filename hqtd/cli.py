"""The ``hqtd`` command line (DESIGN.md's command contract).

Every subcommand is a thin shell around one function of the package. User mistakes raise
:class:`~hqtd.errors.HqtdError` and end here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from hqtd.data.formats import DATASETS
from hqtd.errors import HqtdError


def _size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``1280x720``)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}"
        ) from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive WIDTHxHEIGHT, got {text!r}")
    return width, height


def _cmd_synth(args: argparse.Namespace) -> None:
    from hqtd.data.synth.write import generate

    generate(args.out, seed=args.seed)


def _cmd_prepare(args: argparse.Namespace) -> None:
    from hqtd.data.prepare import prepare

    prepare(
        args.dataset,
        root=args.root,
        out=args.out,
        resize=args.resize,
        split_list=args.split_list,
        workers=args.workers,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from hqtd.config import check_init, load_config, params_choices, to_yaml
    from hqtd.determinism import pin_cpu_kernels

    config = load_config(args.overrides)  # validate before importing the training stack
    if args.cfg:  # the files merged (e.g. the benchmark's loss weights), then the result
        chosen = params_choices(args.overrides)
        print(f"# composed from params/: {', '.join(f'{g}/{o}.yaml' for g, o in chosen.items())}")
        print(to_yaml(config), end="")
        return
    check_init(config)
    pin_cpu_kernels(config.train.determinism)  # before anything imports torch
    from hqtd.train import train

    train(config)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from hqtd.config import evaluation_config
    from hqtd.determinism import pin_cpu_kernels

    pin_cpu_kernels(evaluation_config(args.overrides).train.determinism)  # before torch loads
    from hqtd.evaluate import evaluate_command

    evaluate_command(args.overrides)


def _scoring(args: argparse.Namespace):
    """The typed bootstrap settings of ``--bootstrap-draws`` and ``--confidence``."""
    from hqtd.config import ScoringConfig, checked_scoring

    scoring = ScoringConfig(bootstrap_draws=args.bootstrap_draws, confidence=args.confidence)
    return checked_scoring(scoring)


def _add_bootstrap_options(parser: argparse.ArgumentParser) -> None:
    from hqtd.config import ScoringConfig

    default = ScoringConfig()
    parser.add_argument(
        "--bootstrap-draws",
        type=int,
        default=default.bootstrap_draws,
        help="resamples of val images and seeds per interval (default %(default)s)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=default.confidence,
        help="level of the bootstrap intervals (default %(default)s)",
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    from hqtd.config import evaluation_config
    from hqtd.determinism import pin_cpu_kernels

    pin_cpu_kernels(evaluation_config(args.overrides).train.determinism)  # before torch loads
    from hqtd.predict import predict_command

    predict_command(args.overrides)


def _cmd_tables(args: argparse.Namespace) -> None:
    from hqtd.grid import load_grid
    from hqtd.report.tables import write_tables

    grid = load_grid(args.grid).narrowed(args.seeds, args.overrides)
    write_tables(
        args.runs or grid.runs_dir, args.out or grid.tables_dir, grid=grid, scoring=_scoring(args)
    )


def _cmd_figures(args: argparse.Namespace) -> None:
    from hqtd.determinism import pin_cpu_kernels, strictest_mode
    from hqtd.grid import load_grid

    grid = load_grid(args.grid).narrowed(args.seeds, args.overrides)
    runs = args.runs or grid.runs_dir
    pin_cpu_kernels(strictest_mode(runs))  # the qualitative panel runs the models
    from hqtd.report.figures import write_figures

    write_figures(runs, args.out or grid.figures_dir, grid=grid)


def _cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from hqtd.dvcfile import write_dvc_yaml

    write_dvc_yaml(args.out, grid=args.grid, check=args.check)


def _cmd_compare(args: argparse.Namespace) -> None:
    from hqtd.report.compare import compare

    print(compare(args.rev_a, args.rev_b, grid=args.grid, scoring=_scoring(args)))


class _OneLineParser(argparse.ArgumentParser):
    """A mistake on the command line ends in one line, as other user errors do (argparse prints
    the whole usage first); the subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _key_value_command(commands, name: str, summary: str, func) -> argparse.ArgumentParser:
    """A subcommand that takes ``KEY=VALUE`` overrides of the typed config (train, evaluate,
    predict)."""
    parser = commands.add_parser(name, help=summary)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="hqtd",
        description="EHTDI domain-adaptive segmentation: data, training, evaluation, tables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth", help="write the embedded mini benchmark (real formats)")
    synth.add_argument("--out", type=Path, required=True, help="folder for the raw mini datasets")
    synth.add_argument("--seed", type=int, default=0, help="same seed gives byte-identical files")
    synth.set_defaults(func=_cmd_synth)

    prepare = commands.add_parser("prepare", help="check a raw dataset, write trainId labels")
    prepare.add_argument("dataset", choices=DATASETS)
    prepare.add_argument("--root", type=Path, required=True, help="raw dataset folder (read only)")
    prepare.add_argument("--out", type=Path, required=True, help="prepared dataset folder")
    prepare.add_argument(
        "--resize",
        type=_size,
        default=None,
        metavar="WxH",
        help="pre-resize images (bilinear) and labels (nearest)",
    )
    prepare.add_argument(
        "--split-list",
        type=Path,
        default=None,
        help="text file of sample ids to keep (e.g. the 12,403-image GTA5 list)",
    )
    prepare.add_argument("--workers", type=int, default=2, help="parallel worker processes")
    prepare.set_defaults(func=_cmd_prepare)

    train = _key_value_command(
        commands,
        "train",
        "train one run (Hydra overrides: benchmark= method= seed= run_dir= ...)",
        _cmd_train,
    )
    train.add_argument(
        "--cfg", action="store_true", help="print the composed, typed config and exit (no run)"
    )
    _key_value_command(
        commands,
        "evaluate",
        "evaluate a run or any checkpoint (run_dir=DIR | checkpoint=FILE benchmark=B; "
        "[protocol=] [out=DIR])",
        _cmd_evaluate,
    )
    _key_value_command(
        commands,
        "predict",
        "trainId, labelId and colour PNGs of a checkpoint on a folder of images "
        "(checkpoint=FILE benchmark=B input=DIR out=DIR [overlay=true])",
        _cmd_predict,
    )

    grid_help = "grid of params/grid.yaml (default: its default grid)"
    seeds_help = "only these seeds of the grid (as Snakemake's --config seeds)"
    overrides_help = "the overrides the runs were queued with (as --config overrides): their folder"
    tables = commands.add_parser("tables", help="per-class IoU tables (Markdown, LaTeX, CSV)")
    tables.add_argument("--grid", default=None, help=grid_help + "; its runs, in its row order")
    tables.add_argument("--runs", type=Path, default=None, help="default: results/runs/<grid>")
    tables.add_argument("--seeds", type=int, nargs="+", default=None, help=seeds_help)
    tables.add_argument("--overrides", default="", help=overrides_help)
    tables.add_argument("--out", type=Path, default=None, help="default: results/tables/<grid>")
    _add_bootstrap_options(tables)
    tables.set_defaults(func=_cmd_tables)

    figures = commands.add_parser("figures", help="IoU bars, training curves, qualitative panel")
    figures.add_argument("--grid", default=None, help=grid_help)
    figures.add_argument("--runs", type=Path, default=None, help="default: results/runs/<grid>")
    figures.add_argument("--seeds", type=int, nargs="+", default=None, help=seeds_help)
    figures.add_argument("--overrides", default="", help=overrides_help)
    figures.add_argument("--out", type=Path, default=None, help="default: results/figures/<grid>")
    figures.set_defaults(func=_cmd_figures)

    dvc_yaml = commands.add_parser(
        "dvc-yaml", help="write dvc.yaml from params/grid.yaml (after editing grids or imports)"
    )
    dvc_yaml.add_argument("--grid", default=None, help=grid_help)
    dvc_yaml.add_argument("--out", type=Path, default=None, help="default: dvc.yaml of the repo")
    dvc_yaml.add_argument(
        "--check", action="store_true", help="write nothing; fail unless the file is up to date"
    )
    dvc_yaml.set_defaults(func=_cmd_dvc_yaml)

    compare = commands.add_parser("compare", help="per-class IoU deltas between two git revisions")
    compare.add_argument("rev_a")
    compare.add_argument("rev_b", nargs="?", default=None, help="default: the working tree")
    compare.add_argument(
        "--grid", default=None, help=grid_help + "; compares results/tables/<grid>/runs.csv"
    )
    _add_bootstrap_options(compare)
    compare.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HqtdError as error:
        print(f"hqtd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hqtd {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
