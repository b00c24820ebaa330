"""Portable CPU kernels (``train.determinism=portable``): their cost, and which knobs change bits.

Cost: the same short mini training (method=full on mini_gta5 at its configured sizes, from a
source-only checkpoint made first) runs in fresh processes, ``default`` and ``portable`` in turn
round after round; each child reports the CPU seconds of its ``hqtd.train.train`` call (imports
and start-up excluded). The figure is the median of the per-round ratios portable / default.

``--hashes``: a 20-iteration adaptation run on a tiny mini benchmark under each setting of the
knobs that pick torch's CPU kernels (environment variables read when torch loads; oneDNN on or
off), printing the SHA-256 of its train log and of its checkpoint's tensors. Equal hashes: the
knob does not change the bits on this machine. Run it on two machines and compare the portable
rows to check that they agree across CPUs.

    .venv/bin/python -m bench.determinism [--quick] [--hashes]
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import hqtd.determinism
from hqtd.config import load_config

# Not at the top: bench.common imports torch, which a child must pin first (see child()).

#: The tiny benchmark of ``--hashes`` (hqtd synth at a few images, prepared at its stored size).
TINY = [
    "benchmark.source_size=[64,36]",
    "benchmark.target_size=[64,32]",
    "benchmark.crop_size=32",
    "model.mini_width=8",
    "train.threads=1",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
]
#: Variants of ``--hashes``: (name, mode, extra environment, portable environment changed,
#: oneDNN switched off by hand).
VARIANTS = [
    ("default", "default", {}, {}, False),
    ("ATEN_CPU_CAPABILITY=default", "default", {"ATEN_CPU_CAPABILITY": "default"}, {}, False),
    ("ATEN_CPU_CAPABILITY=avx2", "default", {"ATEN_CPU_CAPABILITY": "avx2"}, {}, False),
    ("ONEDNN_MAX_CPU_ISA=SSE41", "default", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, {}, False),
    ("ONEDNN_MAX_CPU_ISA=AVX2", "default", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}, False),
    ("MKL_CBWR=COMPATIBLE", "default", {"MKL_CBWR": "COMPATIBLE"}, {}, False),
    ("MKL_CBWR=AVX2", "default", {"MKL_CBWR": "AVX2"}, {}, False),
    (
        "MKL_ENABLE_INSTRUCTIONS=SSE4_2",
        "default",
        {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
        {},
        False,
    ),
    ("oneDNN off", "default", {}, {}, True),
    ("portable", "portable", {}, {}, False),
    (
        "portable, ONEDNN_MAX_CPU_ISA=SSE41",
        "portable",
        {},
        {"ONEDNN_MAX_CPU_ISA": "SSE41"},
        False,
    ),
    (
        "portable, MKL_ENABLE_INSTRUCTIONS=SSE4_2",
        "portable",
        {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
        {},
        False,
    ),
    (
        "portable, MKL_ENABLE_INSTRUCTIONS=AVX",
        "portable",
        {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
        {},
        False,
    ),
    (
        "portable, OMP_NUM_THREADS=2 MKL_NUM_THREADS=2",
        "portable",
        {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        {},
        False,
    ),
    ("portable, MKL_CBWR=AVX2", "portable", {}, {"MKL_CBWR": "AVX2"}, False),
    (
        "portable, ATEN_CPU_CAPABILITY=default",
        "portable",
        {},
        {"ATEN_CPU_CAPABILITY": "default"},
        False,
    ),
]


def child(spec: dict) -> None:
    """One training run in this fresh process, which has not loaded torch yet; prints its hashes
    and CPU seconds as JSON. ``spec["portable_env"]`` changes what the portable mode sets."""
    config = load_config(spec["overrides"])
    hqtd.determinism.PORTABLE_ENV.update(spec["portable_env"])
    if "ATEN_CPU_CAPABILITY" in spec["portable_env"]:
        hqtd.determinism.PORTABLE_CAPABILITY = spec["portable_env"]["ATEN_CPU_CAPABILITY"].upper()
    hqtd.determinism.pin_cpu_kernels(config.train.determinism)
    import torch

    from hqtd.train import train

    torch.backends.mkldnn.enabled = not spec["mkldnn_off"]
    start = time.process_time()
    train(config)
    seconds = time.process_time() - start
    run_dir = Path(config.run_dir)
    log = (run_dir / "train_log.jsonl").read_bytes()
    print(json.dumps({
        "seconds": seconds,
        "log": hashlib.sha256(log).hexdigest(),
        "tensors": hqtd.determinism.checkpoint_digest(run_dir / "checkpoints" / "last.pt"),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "last_log": json.loads(log.splitlines()[-1]),
    }))  # fmt: skip


def train_in_child(
    overrides: list[str], env: dict[str, str], portable_env=None, mkldnn_off=False
) -> dict:
    """Run :func:`child` in a fresh single-threaded process whose environment adds ``env``."""
    from bench.common import CHILD_ENV

    spec = {"overrides": overrides, "portable_env": portable_env or {}, "mkldnn_off": mkldnn_off}
    command = [sys.executable, "-m", "bench.determinism", "--child", json.dumps(spec)]
    done = subprocess.run(command, env={**os.environ, **CHILD_ENV, **env}, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_benchmark() -> Path:
    """A prepared tiny mini benchmark (4 source, 4 target, 2 val images) under the bench cache."""
    from bench.fixtures import CACHE
    from hqtd.data.prepare import prepare
    from hqtd.data.synth.write import Counts, generate

    root = CACHE / "tiny_mini"
    if not (root / "prepared" / "mini_cityscapes" / "manifest.json").exists():
        generate(root / "raw", seed=0, counts=Counts(4, 4, 4, 2), workers=1)
        for raw, kind in (("mini_gta5", "gta5"), ("mini_cityscapes", "cityscapes")):
            prepare(kind, root / "raw" / raw, root / "prepared" / raw, workers=1)
    return root


def source_checkpoint(overrides: list[str], run_dir: Path, iterations: int) -> Path:
    """The last checkpoint of a source-only run (made once, in the default mode)."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        args = [*overrides, "method=source_only", f"train.source_only_iterations={iterations}",
                "train.determinism=default", f"run_dir={run_dir}"]  # fmt: skip
        train_in_child(args, {})
    return last


def hashes(work: Path) -> list:
    """The ``--hashes`` table: which knobs change the bits here."""
    from tabulate import tabulate

    from bench.common import Row

    root = tiny_benchmark()
    common = [f"data_root={root}", *TINY]
    init = source_checkpoint(common, work / "source", 10)
    lines, rows = [], []
    for index, (name, mode, env, portable_env, mkldnn_off) in enumerate(VARIANTS):
        args = [*common, "method=full", f"train.init_checkpoint={init}", "train.iterations=20",
                f"train.determinism={mode}", f"run_dir={work / f'variant{index}'}"]  # fmt: skip
        result = train_in_child(args, env, portable_env, mkldnn_off)
        lines.append([name, result["capability"], result["log"][:12], result["tensors"][:12],
                      f"{result['last_log']['total']:.9g}"])  # fmt: skip
        rows.append(Row(f"determinism knobs: {name}", "train log / tensors SHA-256",
                        f"{result['log'][:12]} / {result['tensors'][:12]}"))  # fmt: skip
    print(tabulate(lines, headers=["setting", "ATen", "log sha256", "tensors sha256",
                                   "total loss, it. 20"]))  # fmt: skip
    return rows


def cost(work: Path, rounds: int, iterations: int) -> list:
    """The cost of the portable mode: median over ``rounds`` of CPU s portable / default."""
    from bench.common import Row, ratio
    from bench.fixtures import CACHE, prepared_gta5

    source = prepared_gta5("mini_gta5_192x108", 8, (256, 144), resize=(192, 108))
    prepared_gta5("mini_cityscapes", 8, (256, 128))
    common = ["benchmark=mini_gta5", f"data_root={CACHE}", f"benchmark.source.root={source}",
              "benchmark.target_val.split=train",  # the fixture has no val split
              "train.log_every=1", "train.checkpoint_every=1000",
              "train.eval_every=1000"]  # fmt: skip
    init = source_checkpoint(common, work / "source", 2)
    times: dict[str, list[float]] = {"default": [], "portable": []}
    for round_ in range(rounds):
        for mode in times:
            run_dir = work / f"{mode}{round_}"
            args = [*common, "method=full", f"train.init_checkpoint={init}",
                    f"train.iterations={iterations}", f"train.determinism={mode}",
                    f"run_dir={run_dir}"]  # fmt: skip
            times[mode].append(train_in_child(args, {})["seconds"])
    ratios = [p / d for p, d in zip(times["portable"], times["default"], strict=True)]
    median = statistics.median(ratios)
    print(f"method=full, mini_gta5, {iterations} iterations + final validation, one thread, "
          f"{rounds} rounds; CPU s default {statistics.median(times['default']):.2f}, "
          f"portable {statistics.median(times['portable']):.2f}; per-round ratios "
          f"{', '.join(f'{r:.3f}' for r in ratios)}")  # fmt: skip
    print(f"portable / default: median {median:.3f}")
    measure = f"CPU s portable / default, {iterations} its (median of {rounds} rounds)"
    return [Row("determinism: method=full, mini_gta5", measure, ratio(median, 1.0))]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(json.loads(sys.argv[2]))
        return
    from bench.common import finish, parser
    from bench.fixtures import CACHE

    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--hashes", action="store_true", help="which knobs change the bits")
    args = parse.parse_args()
    work = CACHE / f"determinism-{os.getpid()}"
    if args.hashes:
        rows = hashes(work)
    else:
        rows = cost(work, 3 if args.quick else 7, 10 if args.quick else 20)
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
