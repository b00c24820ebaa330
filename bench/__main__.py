"""Run the whole bench suite and print one summary table.

    .venv/bin/python -m bench            # full: with the dense N=12,800 InfoNCE (~15 GiB)
    .venv/bin/python -m bench --quick    # a couple of minutes
    .venv/bin/python -m bench --only prototype adapt_step

Each script runs in its own process (a clean allocator and thread setting) with one thread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import CHILD_ENV, Row, summary_table

#: In running order; the heavy dense InfoNCE comparison comes last.
SCRIPTS = (
    "label_conversion",
    "data_path",
    "prototype",
    "argmax",
    "augment",
    "adapt_step",
    "dag",
    "gpu_step",
    "determinism",
    "contrastive",
)


def machine() -> str:
    """One line on where and when the suite ran."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{datetime.datetime.now().isoformat(timespec='minutes')}  {model}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}, load average {load}")  # fmt: skip


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--quick", action="store_true", help="smaller cases, a couple of minutes")
    parse.add_argument("--only", nargs="+", choices=SCRIPTS, help="run these scripts only")
    args = parse.parse_args()
    print(f"bench suite: python -m bench {' '.join(sys.argv[1:])}\n{machine()}", flush=True)
    rows: list[Row] = []
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SCRIPTS:
            summary = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", f"bench.{name}", "--summary", str(summary)]
            command += ["--quick"] if args.quick else []
            print(f"\n== bench.{name}", flush=True)
            start = time.perf_counter()
            done = subprocess.run(command, env={**os.environ, **CHILD_ENV})
            print(f"({time.perf_counter() - start:.0f} s)", flush=True)
            if done.returncode != 0 or not summary.exists():
                failed.append(name)
                rows.append(Row(f"bench.{name}", "FAILED", f"exit status {done.returncode}"))
                continue
            rows += [Row(**row) for row in json.loads(summary.read_text())]
    print(f"\n== summary\n{machine()}\n{summary_table(rows)}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
