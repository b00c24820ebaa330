"""What the bench scripts share: CPU timers, the peak memory of one call, summary rows, arguments.

Timing. The suite runs on shared machines, so times are CPU seconds of this process
(``time.process_time``) with one intra-op thread: another process competing for the core does not
inflate them the way it inflates wall time. The variants of one comparison run interleaved and each
keeps its best (least disturbed) repeat.

Memory. :func:`peak_memory` measures the resident set of the process, which is what a CPU run
actually uses, whatever allocates it (PyTorch, MKL scratch, glibc). Linux resets the high-water
mark VmHWM to the current VmRSS when ``5`` is written to ``/proc/self/clear_refs``, so the peak of
one call is VmHWM after it minus VmRSS before it. Run each variant in a fresh process
(:func:`run_child`): in a long-lived one, memory freed earlier and still resident (glibc keeps
some) can serve the call without growing the resident set.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

import hqtd  # noqa: F401  (the torchvision import guard, before anything imports torchvision)
from hqtd.io import write_json

MIB = 2**20
#: Environment of every child process: one thread for OpenMP and MKL as for torch itself.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Row:
    """One line of the suite's summary table.

    Attributes:
        bench: the script and case, e.g. ``pixel InfoNCE N=12,800``.
        measure: what the figure is, e.g. ``time blockwise / dense``.
        value: the figure, formatted.
        target: the goal it is held to, or ``""``.
        met: whether the goal is met; None where there is no goal.
    """

    bench: str
    measure: str
    value: str
    target: str = ""
    met: bool | None = None


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every script takes: ``--quick`` and ``--summary FILE`` (rows for ``bench``)."""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("--quick", action="store_true", help="smaller cases, a couple of minutes")
    parse.add_argument("--summary", type=Path, help="write the summary rows to this JSON file")
    return parse


def setup_threads() -> None:
    """One intra-op thread: comparable figures, and a fair share of a shared machine."""
    torch.set_num_threads(1)


def finish(rows: list[Row], summary: Path | None) -> None:
    """Print the rows and, for ``python -m bench``, save them."""
    print(summary_table(rows))
    if summary is not None:
        write_json(summary, [asdict(row) for row in rows])


def summary_table(rows: list[Row]) -> str:
    """The rows as a plain-text table (met: yes / NO / blank)."""
    verdict = {True: "yes", False: "NO", None: ""}
    body = [[r.bench, r.measure, r.value, r.target, verdict[r.met]] for r in rows]
    return tabulate(body, headers=["bench", "measure", "value", "target", "met"])


def sample_times(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, list[float]]:
    """Seconds of each variant in each of ``repeats`` rounds, the variants interleaved (the i-th
    samples of two variants ran back to back, under the same load). ``clock``: CPU seconds of
    this process by default; :func:`cuda_clock` for work on a GPU."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, call in variants.items():
            start = clock()
            call()
            samples[name].append(clock() - start)
    return samples


def cuda_clock() -> float:
    """Wall seconds once the GPU has finished the work queued so far."""
    torch.cuda.synchronize()
    return time.perf_counter()


def best_times(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best CPU seconds of each variant over ``repeats`` interleaved rounds."""
    return {name: min(times) for name, times in sample_times(variants, repeats).items()}


def _status(key: str) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def peak_memory(call: Callable[[], Any]) -> int:
    """Bytes by which the resident set grew at its highest during ``call()`` (module docstring)."""
    gc.collect()  # garbage freed during the call would hide part of its allocations
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    call()
    return _status("VmHWM") - before


def run_child(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh single-threaded process; it prints one JSON object
    on its last line of output, which is returned. Its other output is passed through."""
    env = {**os.environ, **CHILD_ENV}
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    sys.stdout.write("".join(line + "\n" for line in lines[:-1]))
    return json.loads(lines[-1])


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` to three significant figures, with an ``x``."""
    return f"{numerator / denominator:.3g}x"
