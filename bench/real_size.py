"""The paper grid's commands end to end at the datasets' real sizes, each step's time and memory.

Writes a few raw samples in each real on-disk format at the real sizes (GTA5 1914×1052 and one
1914×1054 frame, palette labels; SYNTHIA 1280×760 RGB with 16-bit 3-channel labels; Cityscapes
2048×1024 leftImg8bit/gtFine), through the writers of ``hqtd synth`` and the bench fixtures, then
runs, each as an ``hqtd`` subprocess as the workflow does:

1. ``hqtd prepare`` of the three datasets, the sources with ``--resize 1280x720`` (README);
2. a random-initialised network saved as the source-only checkpoint adaptation starts from
   (the paper grid trains it with ``source_only_official``; the issue asks for random init);
3. ``hqtd train benchmark=gta5 method=official`` for a few iterations: DeepLab-V2 ResNet-101,
   batch 2+2, source 1280×720, target 1280×640, 512² crops, one thread on the CPU;
4. ``hqtd evaluate`` under the paper (labels 1280×640) and strict (2048×1024) protocols;
5. ``hqtd tables``.

Each step's wall time, CPU time and peak resident memory (``ru_maxrss`` of that child, from
``os.wait4``) are printed as a table and, with ``--markdown FILE``, written there. A step that
fails (e.g. out of memory under ``prlimit --as``) is recorded with its exit status; later steps
still run where they can (evaluation then scores the initial checkpoint).

``--scale F`` multiplies every size (files, training sizes, crop) by F, for machines on which the
paper size does not fit; ``--tiny`` is the code path on a mini network at ~1/20 of the sizes (the
test in tests/test_bench.py).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.real_size [--iterations 3] [--scale 0.5]
        [--override train.batch_size=1]
    .venv/bin/python -m bench.real_size --tiny
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.common import CHILD_ENV
from bench.fixtures import blocky_label, smooth_image
from hqtd.config import load_config, to_yaml
from hqtd.data.formats.png import encode_image
from hqtd.data.synth.domains import NUM_CODES
from hqtd.data.synth.write import label_file, sample_paths
from hqtd.io import write_bytes, write_text

#: Real on-disk sizes (W, H) and counts: dataset -> list of frame sizes (per split for Cityscapes).
GTA5_FRAMES = [(1914, 1052), (1914, 1052), (1914, 1054)]  # some GTA5 frames are 1914x1054
SYNTHIA_FRAMES = [(1280, 760)] * 2
CITYSCAPES_FRAMES = {"train": [(2048, 1024)] * 2, "val": [(2048, 1024)] * 2}
SOURCE_SIZE, TARGET_SIZE, CROP = (1280, 720), (1280, 640), 512
#: The tiny mode's network (the mini backbone at width 8) and its scale.
TINY_MODEL = [
    "model.backbone=mini",
    "model.input_style=torchvision",
    "model.caffe_stride=false",
    "model.mini_width=8",
]
TINY_SCALE = 1 / 20


def scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(8, round(size[0] * scale)), max(8, round(size[1] * scale))


def write_raw(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """Raw GTA5, SYNTHIA and Cityscapes folders under ``root`` in their real layouts (the label
    files from :func:`hqtd.data.synth.write.label_file`, as ``hqtd synth`` writes them); returns the
    number of files written per dataset."""
    rng = np.random.default_rng(seed)
    codes = np.arange(NUM_CODES, dtype=np.uint8)  # the synth's scene codes

    def sample(folder: Path, kind: str, paths: tuple[str, str], size: tuple[int, int]) -> None:
        size = scaled(size, scale)
        image = smooth_image(rng, size)  # RGB
        code = blocky_label(rng, size, codes)
        instance = rng.integers(0, 60000, code.shape, dtype=np.uint16)
        write_bytes(folder / paths[0], encode_image(image))
        write_bytes(folder / paths[1], label_file(kind, code, instance))

    for index, size in enumerate(GTA5_FRAMES):
        sample(root / "gta5", "mini_gta5", sample_paths("mini_gta5", "train", index), size)
    for index, size in enumerate(SYNTHIA_FRAMES):
        paths = sample_paths("mini_synthia", "train", index)
        sample(root / "synthia", "mini_synthia", paths, size)
    for split, frames in CITYSCAPES_FRAMES.items():
        for index, size in enumerate(frames):
            paths = sample_paths("cityscapes", split, index)
            sample(root / "cityscapes", "cityscapes", paths, size)
    counts = {"gta5": len(GTA5_FRAMES), "synthia": len(SYNTHIA_FRAMES)}
    return counts | {"cityscapes": sum(len(f) for f in CITYSCAPES_FRAMES.values())}


@dataclass
class Step:
    name: str
    wall_s: float
    cpu_s: float
    peak_mib: float
    status: int
    note: str = ""


def run_step(name: str, command: list[str], log: Path, note: str = "") -> Step:
    """Run ``command`` as a child (single-threaded environment), its output into ``log``; its own
    wall time, CPU time (user + system) and peak resident set (``ru_maxrss``, via ``os.wait4``)."""
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    shown = " ".join(part if len(part) < 200 else "<code>" for part in command)
    print(f"[{name}] {shown}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    step = Step(
        name,
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        process.returncode,
        note,
    )
    if step.status != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        step.note = (note + "; " if note else "") + f"failed: {' | '.join(tail)}"[:300]
    print(
        f"[{name}] {wall:.1f} s wall, {step.cpu_s:.1f} s CPU, {step.peak_mib:,.0f} MiB, "
        f"exit {step.status}",
        flush=True,
    )
    return step


INIT_CODE = """
import sys, math, torch
from hqtd.config import load_config
from hqtd.models.deeplabv2 import build_model
from hqtd.models.checkpoints import save_checkpoint
from pathlib import Path
cfg = load_config(sys.argv[2:])
torch.manual_seed(cfg.seed)
model = build_model(cfg.model)
state = model.state_dict()
save_checkpoint(Path(sys.argv[1]), {"model": state, "ema": state, "iteration": 0,
                                    "best_score": -math.inf})
print(sum(p.numel() for p in model.parameters()), "parameters")
"""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform's guess."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def pipeline(
    work: Path,
    scale: float = 1.0,
    iterations: int = 3,
    tiny: bool = False,
    device: str = "cpu",
    torchrun: bool = False,
    protocols: tuple[str, ...] = ("paper", "strict"),
    extra: tuple[str, ...] = (),
    train: bool = True,
) -> list[Step]:
    """Write the raw files under ``work`` and run the grid's commands on them (module docstring).

    Args:
        work: folder for raw/, prepared/, runs/, tables/ and logs/.
        scale: every size times this.
        iterations: adaptation iterations.
        tiny: the mini network instead of ResNet-101.
        device: ``train.device`` of training and evaluation.
        torchrun: launch training with ``torchrun --standalone --nproc_per_node 1``.
        protocols: evaluation protocols, in order.
        extra: more overrides for training (e.g. ``train.precision=bf16``).
        train: False skips training (where it does not fit): the run folder gets the run's
            ``config.yaml`` and evaluation scores the random initial checkpoint.

    Returns:
        One :class:`Step` per step, in order.
    """
    raw, prepared, logs = work / "raw", work / "prepared", work / "logs"
    runs = work / "runs"
    run_dir = runs / "gta5" / "official" / "seed0"
    logs.mkdir(parents=True, exist_ok=True)
    hqtd = [sys.executable, "-m", "hqtd.cli"]
    source, target = scaled(SOURCE_SIZE, scale), scaled(TARGET_SIZE, scale)
    crop = round(CROP * scale)
    size_text = "{}x{}".format

    steps = []
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    counts = write_raw(raw, scale)
    used = resource.getrusage(resource.RUSAGE_SELF)
    steps.append(
        Step(
            "write raw files (in process)",
            time.perf_counter() - start,
            used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime,
            used.ru_maxrss / 1024,
            0,
            f"{sum(counts.values())} samples",
        )
    )
    for dataset, resize in (("gta5", source), ("synthia", source), ("cityscapes", None)):
        command = [
            *hqtd,
            "prepare",
            dataset,
            "--root",
            str(raw / dataset),
            "--out",
            str(prepared / dataset),
            "--workers",
            "1",
        ]
        if resize is not None:
            command += ["--resize", size_text(*resize)]
        note = f"{counts[dataset]} images" + (f", --resize {size_text(*resize)}" if resize else "")
        steps.append(run_step(f"prepare {dataset}", command, logs / f"prepare_{dataset}.log", note))

    overrides = [
        "benchmark=gta5",
        "method=official",
        "model.init=scratch",  # random weights, on purpose (no ImageNet file here)
        "seed=0",
        f"run_dir={run_dir}",
        f"data_root={work}",
        f"train.device={device}",
        "train.threads=1",
        "train.num_workers=0",
        f"benchmark.source_size=[{source[0]},{source[1]}]",
        f"benchmark.target_size=[{target[0]},{target[1]}]",
        f"benchmark.crop_size={crop}",
        *(TINY_MODEL if tiny else []),
    ]
    init = work / "init.pt"
    init_cmd = [sys.executable, "-c", INIT_CODE, str(init), *overrides]
    steps.append(run_step("random init checkpoint", init_cmd, logs / "init.log"))
    train_overrides = [
        *overrides,
        f"train.init_checkpoint={init}",
        f"train.iterations={iterations}",
        "train.log_every=1",
        f"train.checkpoint_every={iterations}",
        # Two target images make the authors' epoch one iteration long: validate at the end only.
        "train.eval_per_epoch=false",
        f"train.eval_every={iterations}",
        *extra,
    ]
    launcher = hqtd
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            "-m",
            "hqtd.cli",
        ]
    batch = load_config(train_overrides).train.batch_size
    note = (
        f"{iterations} it, batch {batch}+{batch}, {size_text(*source)} / {size_text(*target)}, "
        f"crop {crop}, + validation on {len(CITYSCAPES_FRAMES['val'])} val images"
        + (", torchrun" if torchrun else "")
    )
    if train:
        command = [*launcher, "train", *train_overrides]
        trained = run_step("train official", command, logs / "train.log", note)
    else:
        trained = Step("train official", 0.0, 0.0, 0.0, -1, "skipped (--skip-train)")
        write_text(run_dir / "config.yaml", to_yaml(load_config(train_overrides)))
    steps.append(trained)
    for protocol in protocols:
        command = [
            *hqtd,
            "evaluate",
            f"run_dir={run_dir}",
            f"protocol={protocol}",
            "train.num_workers=0",
            "train.threads=1",
            f"train.device={device}",
        ]
        if trained.status != 0:
            command.append(f"checkpoint={init}")  # score the initial weights instead
        labels = size_text(*target) if protocol == "paper" else "full size"
        steps.append(
            run_step(
                f"evaluate {protocol}",
                command,
                logs / f"eval_{protocol}.log",
                f"{len(CITYSCAPES_FRAMES['val'])} val images, labels {labels}",
            )
        )
    # The paper grid narrowed to this run's settings, as `--config seeds=0 overrides=...` would:
    # tables read only runs whose saved config is the grid's.
    where = ("benchmark=", "method=", "seed=", "run_dir=", "data_root=", "train.init_checkpoint=")
    settings = [o for o in train_overrides if not o.startswith(where)]
    tables = [
        *hqtd,
        "tables",
        "--grid",
        "paper",
        "--seeds",
        "0",
        "--overrides",
        shlex.join(settings),
        "--runs",
        str(runs),
        "--out",
        str(work / "tables"),
    ]
    steps.append(run_step("tables", tables, logs / "tables.log"))
    return steps


def steps_table(steps: list[Step], tablefmt: str = "simple") -> str:
    rows = [
        [s.name, f"{s.wall_s:.1f}", f"{s.cpu_s:.1f}", f"{s.peak_mib:,.0f}", s.status, s.note]
        for s in steps
    ]
    headers = ["step", "wall s", "CPU s", "peak RSS MiB", "exit", "note"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt)


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--work", type=Path, default=None, help="folder (default: a temporary one)")
    parse.add_argument("--iterations", type=int, default=3, help="adaptation iterations")
    parse.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parse.add_argument("--tiny", action="store_true", help="mini network at 1/20 of the sizes")
    parse.add_argument("--skip-train", action="store_true", help="evaluate the random init")
    parse.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parse.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra training override, repeatable (e.g. train.batch_size=1 where 2+2 does not fit)",
    )
    args = parse.parse_args()
    scale = TINY_SCALE if args.tiny else args.scale
    work = args.work or Path(tempfile.mkdtemp(prefix="hqtd-real-size-"))
    steps = pipeline(
        work,
        scale,
        args.iterations,
        args.tiny,
        extra=tuple(args.override),
        train=not args.skip_train,
    )
    header = (
        f"real-size run, scale {scale:g}{' (tiny: mini network)' if args.tiny else ''}, "
        f"{cpu_model()}, {os.cpu_count()} cores, one thread per step; work folder {work}"
    )
    print(header)
    print(steps_table(steps))
    if args.markdown is not None:
        args.markdown.write_text(header + "\n\n" + steps_table(steps, "github") + "\n")
    if args.tiny and any(s.status > 0 for s in steps):
        sys.exit(1)  # the code path must run through at the tiny size


if __name__ == "__main__":
    main()
