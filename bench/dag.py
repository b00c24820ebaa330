"""DAG overhead: what ``snakemake`` and ``dvc repro`` cost when the demo grid is already complete.

Only meaningful after the demo DAG has run once (``make demo`` or ``dvc repro``): each engine is
first asked whether anything is out of date (``snakemake -n``, ``dvc status``); if something is,
that engine's figure is "not run" (this script never starts the experiments). Otherwise the
no-op command runs a few times and its best wall time and CPU time (of the child processes) are
reported, per job of the DAG, and as a multiple of the start of one ``hqtd --help`` (the least
any job of the DAG costs).

    .venv/bin/python -m bench.dag [--quick] [--root CHECKOUT]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from bench.common import Row, finish, parser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SNAKEMAKE_UP_TO_DATE = "Nothing to be done"
DVC_UP_TO_DATE = "Data and pipelines are up to date"


def _run(command: list[str], root: Path) -> tuple[int, str, float, float]:
    """Exit status, output, wall seconds and CPU seconds (user + system) of ``command`` in
    ``root``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.returncode, done.stdout + done.stderr, wall, cpu


def _jobs(dry_run_output: str) -> int:
    """Jobs of the whole DAG from ``snakemake -n --forceall`` output (its job-stats table)."""
    for line in dry_run_output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "total" and words[1].isdigit():
            return int(words[1])
    return 0


def engines() -> dict[str, tuple[list[str], list[str], str]]:
    """Engine -> (up-to-date check, no-op command, what the check prints when up to date)."""
    snakemake, dvc = str(BIN / "snakemake"), str(BIN / "dvc")
    return {
        "snakemake": ([snakemake, "-n", "--nolock"], [snakemake, "--cores", "1"],
                      SNAKEMAKE_UP_TO_DATE),
        "dvc repro": ([dvc, "status"], [dvc, "repro"], DVC_UP_TO_DATE),
    }  # fmt: skip


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--root", type=Path, default=ROOT, help="checkout where the DAG ran")
    args = parse.parse_args()
    root, repeats = args.root, 2 if args.quick else 3
    status, listing, _, _ = _run([str(BIN / "snakemake"), "-n", "--forceall", "--nolock"], root)
    jobs = _jobs(listing) if status == 0 else 0
    start = min(_run([str(BIN / "hqtd"), "--help"], root)[2] for _ in range(repeats))
    rows, lines = [], []
    for name, (check, no_op, up_to_date) in engines().items():
        status, output, _, _ = _run(check, root)
        if status != 0 or up_to_date not in output:
            reason = "out of date" if status == 0 else f"check failed: {output.strip()[-80:]}"
            lines.append([name, "not run", "", "", "", reason])
            rows.append(Row(f"DAG no-op: {name}", "wall s", "not run"))
            continue
        runs = [_run(no_op, root) for _ in range(repeats)]
        failed = [output for status, output, _, _ in runs if status != 0]
        if failed:
            lines.append([name, "not run", "", "", "", f"failed: {failed[0].strip()[-80:]}"])
            rows.append(Row(f"DAG no-op: {name}", "wall s", "not run"))
            continue
        wall = min(run[2] for run in runs)
        cpu = min(run[3] for run in runs)
        per_job = f"{wall / jobs * 1e3:.0f}" if jobs else ""
        lines.append([name, f"{wall:.2f}", f"{cpu:.2f}", per_job, f"{wall / start:.1f}", ""])
        rows.append(Row(f"DAG no-op: {name}", f"wall s (ms per job of {jobs}; x hqtd start)",
                        f"{wall:.2f} ({per_job}; {wall / start:.1f}x)"))  # fmt: skip
    print(f"no-op runs of the default grid's DAG in {root}, {jobs} jobs, best of {repeats}; "
          f"hqtd --help starts in {start:.2f} s")  # fmt: skip
    headers = ["engine", "wall s", "CPU s", "wall ms / job", "x hqtd start", "note"]
    print(tabulate(lines, headers=headers))
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
