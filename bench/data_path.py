"""Training data path: samples per CPU second of the loader hqtd.train builds, at the mini and the
paper resolution, and pre-resized vs resized on load.

Each case reads a prepared GTA5-layout fixture (bench.fixtures, made once with ``hqtd prepare``)
through ``SegmentationDataset(train=True)`` (decode, resize, flip, blur) and the DataLoader of
``hqtd.training.streams.batches`` (batch 2, per-item seeding, collation), in this process
(``num_workers=0``): the figure is the CPU cost of a sample; with W workers the wall time of a
batch divides by up to W. Paper resolution: 1914×1052 GTA5 images for a 1280×720 source,
either prepared with ``--resize 1280x720`` (images stored at that size) or resized on every load.

    .venv/bin/python -m bench.data_path [--quick]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from tabulate import tabulate

from bench.common import Row, best_times, finish, parser, ratio, setup_threads
from bench.fixtures import prepared_gta5
from hqtd.config import load_config
from hqtd.runtime import Runtime
from hqtd.training import streams
from hqtd.training.stage import stage_datasets

BATCH = 2
GTA5_SIZE = (1914, 1052)
MINI_SIZE = (256, 144)  # what hqtd synth writes for the mini GTA5
SOURCE_SIZE = (1280, 720)


def loader(benchmark: str, root: Path) -> tuple[str, Iterator[dict]]:
    """The source size of ``benchmark`` (WxH) and endless source batches as hqtd.train builds
    them, data from ``root``."""
    overrides = [f"benchmark={benchmark}", "method=source_only", "run_dir=unused",
                 f"benchmark.source.root={root}", f"train.batch_size={BATCH}",
                 "train.num_workers=0", "train.device=cpu"]  # fmt: skip
    cfg = load_config(overrides)
    dataset, _ = stage_datasets(cfg)
    runtime = Runtime(torch.device("cpu"))
    width, height = cfg.benchmark.source_size
    return f"{width}x{height}", streams.batches(dataset, streams.SOURCE_STREAM, 0, cfg, runtime)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup_threads()
    count = 4  # images per fixture, read round robin
    mini_size, mini = loader("mini_gta5", prepared_gta5("mini_gta5", 8, MINI_SIZE))
    cases = {
        f"mini: {MINI_SIZE[0]}x{MINI_SIZE[1]} files, {mini_size} loaded": mini,
        "paper, resized on load": loader("gta5", prepared_gta5("gta5_full", count, GTA5_SIZE))[1],
        "paper, pre-resized": loader(
            "gta5", prepared_gta5("gta5_1280x720", count, GTA5_SIZE, SOURCE_SIZE)
        )[1],
    }
    for batches in cases.values():
        next(batches)  # start the iterators
    rounds = 3 if args.quick else 8
    seconds = best_times({name: lambda b=b: next(b) for name, b in cases.items()}, rounds)
    rate = {name: BATCH / s for name, s in seconds.items()}
    lines = [[name, f"{s / BATCH * 1e3:.1f}", f"{rate[name]:.1f}"] for name, s in seconds.items()]
    print(f"training loader, batch {BATCH}, num_workers=0, one thread, best of {rounds} batches")
    print(tabulate(lines, headers=["case", "CPU ms / sample", "samples / CPU s"]))
    rows = [Row(f"data path: {name}", "samples / CPU s", f"{r:.1f}") for name, r in rate.items()]
    rows.append(
        Row(
            "data path: paper",
            "samples/s pre-resized / resized on load",
            ratio(rate["paper, pre-resized"], rate["paper, resized on load"]),
        )
    )
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
