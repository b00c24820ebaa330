"""Training loaders at the paper sizes: iterations per second the data path alone can feed.

Reads the prepared datasets that ``bench.real_size`` writes (``--data-root`` = its work folder:
GTA5 pre-resized to 1280×720 at prepare time as the README recommends, Cityscapes 2048×1024
resized to 1280×640 on load) through the loaders ``hqtd.train`` builds
(``hqtd.training.stage.stage_datasets``, ``hqtd.training.streams.batches``: decode, resize, flip,
blur, per-item seeding, batch 2 per domain), for ``num_workers`` 0, 1, 2 (per loader: a run has
two, source and target). One iteration needs one source and one target batch. Reported: wall
iterations/s (what a GPU waiting on the loader would see; with W > 0 only if W free cores per
loader exist) and, with 0 workers, CPU seconds per sample of this process (the cost a worker pays,
independent of the machine's load).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.loader_rate --data-root /tmp/hqtd-real-size-XXXX
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tabulate import tabulate

from hqtd.config import load_config
from hqtd.runtime import Runtime
from hqtd.training.stage import stage_datasets
from hqtd.training.streams import SOURCE_STREAM, TARGET_STREAM, batches


def loaders(data_root: Path, method: str, workers: int):
    cfg = load_config([
        "benchmark=gta5", f"method={method}", "run_dir=unused", f"data_root={data_root}",
        f"train.num_workers={workers}", "train.device=cpu",
    ])  # fmt: skip
    source_set, target_set = stage_datasets(cfg)
    runtime = Runtime(torch.device("cpu"))
    return (
        batches(source_set, SOURCE_STREAM, 0, cfg, runtime),
        batches(target_set, TARGET_STREAM, 0, cfg, runtime),
    )


def measure(data_root: Path, method: str, workers: int, iterations: int) -> dict[str, float]:
    source, target = loaders(data_root, method, workers)
    next(source), next(target)  # start the workers, first batch
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        next(source), next(target)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"it/s": iterations / wall, "cpu per sample": cpu / (4 * iterations)}


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--data-root", type=Path, required=True, help="bench.real_size's folder")
    parse.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parse.add_argument("--iterations", type=int, default=5, help="timed iterations per case")
    parse.add_argument("--methods", nargs="*", default=["full", "official"])
    args = parse.parse_args()
    torch.set_num_threads(1)
    rows = []
    for method in args.methods:  # official resizes with PIL bicubic (§8.6), full bilinear
        for workers in args.workers:
            r = measure(args.data_root, method, workers, args.iterations)
            cpu = f"{r['cpu per sample'] * 1e3:.0f}" if workers == 0 else ""
            rows.append([method, workers, f"{r['it/s']:.2f}", f"{4 * r['it/s']:.1f}", cpu])
    print("loaders of one run (source 2 + target 2 per iteration), paper sizes")
    print(tabulate(rows, headers=["method", "num_workers", "it/s", "samples/s", "CPU ms/sample"]))


if __name__ == "__main__":
    main()
