"""One GPU check of the paper configuration, in a single call of at most ~8 minutes.

Parts, each with its own time cap (seconds, ``--budget`` scales them), in this order:

1. ``pytest -m gpu``: CUDA against the CPU (tests/test_gpu.py);
2. a 100-iteration real-size run on generated data through ``hqtd train`` (launched with
   ``torchrun --standalone --nproc_per_node 1``), ``hqtd evaluate`` (strict, 2048×1024 labels) and
   ``hqtd tables`` on CUDA (bench.real_size's pipeline);
3. the paper-size adaptation step (bench.gpu_step: DeepLab-V2 R101, batch 2+2, 1280×720 / 1280×640,
   512² crops, synthetic batches) of ``official`` and ``full`` in fp32 (TF32 off), TF32, bf16
   autocast + channels_last, and the latter with the network's forward under ``torch.compile``:
   iterations/s, peak memory, ratio to the model passes; the supervised step and evaluation
   forward rates for the projection;
4. loss curves: ``full`` for up to 100 iterations twice in fp32 and once in bf16 + channels_last
   from the same start (is bf16's deviation within fp32's own run-to-run spread?);
5. the largest batch per domain that fits (fp32 and bf16 + channels_last, ``full``);
6. the projected GPU-hours of the paper grid in each precision.

It prints one Markdown report and writes it to ``$OUT/gpu_check.md`` (or ``--out``).
``--dry-run``: every code path on the CPU at tiny sizes and a few iterations (tests/test_bench.py).

    python -m bench.gpu_check                 # on a CUDA machine, ~8 min
    python -m bench.gpu_check --dry-run       # CPU, a few minutes of one core
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate

from bench import gpu_step, real_size
from bench.common import MIB
from hqtd.adapt.step import supervised_step
from hqtd.config import Config
from hqtd.runtime import autocast

ROOT = Path(__file__).resolve().parent.parent
#: Time caps in seconds of the parts (full mode), in running order; their sum stays under 8 min.
CAPS = {"tests": 45, "real run": 120, "steps": 150, "curves": 75, "largest batch": 45}
#: Config overrides and CUDA TF32 switches (cuDNN convolutions, matmuls) of each precision case.
PRECISIONS = {
    "fp32": (["train.precision=fp32", "train.channels_last=false"], False),
    "tf32": (["train.precision=fp32", "train.channels_last=false"], True),
    "bf16+cl": (["train.precision=bf16", "train.channels_last=true"], True),
}
#: The paper grid (params/grid.yaml ``paper``): 2 benchmarks x 3 seeds, 8 adapted variants each
#: (measured as official-like or full-like), two supervised runs each (source_only and
#: source_only_official, 120k iterations), validation of 500 val images every 2,000 iterations
#: (official/official_edge: every epoch of 1,487) and the two final evaluations.
RUNS_PER_VARIANT = 6
ADAPTED = {"official": 2, "full": 6}  # variants costed like official / like full
ADAPT_ITERATIONS, SUPERVISED_ITERATIONS, SUPERVISED_RUNS = 250_000, 120_000, 12
VAL_IMAGES, EVAL_EVERY, EPOCH = 500, 2_000, 1_487


@dataclass
class Part:
    """A part's title, its report lines, and how long it took."""

    title: str
    lines: list[str]
    seconds: float = 0.0


def set_tf32(enabled: bool) -> None:
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def sync_clock(device: torch.device) -> Callable[[], float]:
    return gpu_step.clock(device)


def part_tests(dry: bool, cap: float) -> list[str]:
    """``pytest -m gpu`` (the whole suite's GPU tests; the dry run collects tests/test_gpu.py)."""
    target = "tests/test_gpu.py" if dry else "tests"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        target,
    ]
    try:
        timeout = None if math.isinf(cap) else cap
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [f"`{' '.join(command[2:])}`: stopped at the {cap:.0f} s cap"]
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    lines = [f"`pytest -m gpu {target}`: exit {done.returncode}, {last}"]
    if done.returncode not in (0, 5):  # 5: nothing collected
        lines += ["", "```", *done.stdout.strip().splitlines()[-25:], "```"]
    return lines


def part_real_run(dry: bool, device: str, work: Path) -> list[str]:
    """bench.real_size's pipeline: 100 iterations (dry: 2, tiny) under torchrun, strict eval."""
    steps = real_size.pipeline(
        work / "real_size",
        scale=real_size.TINY_SCALE if dry else 1.0,
        iterations=2 if dry else 100,
        tiny=dry,
        device=device,
        torchrun=True,
        protocols=("strict",),
    )
    lines = [real_size.steps_table(steps, "github")]
    log = work / "real_size" / "runs" / "gta5" / "official" / "seed0" / "train_log.jsonl"
    if log.exists():
        lines.append(f"\ntrain log: {len(log.read_text().splitlines())} records ({log})")
    lines.append(
        "\nNote: with one process `hqtd train` sees WORLD_SIZE=1 and runs without a process "
        "group (hqtd.runtime.setup_runtime), so NCCL, DDP and SyncBatchNorm need >= 2 GPUs to run."
    )
    return lines


def compile_forward(trainer) -> None:
    """The network's forward under torch.compile (the module itself stays: EMA, optimiser). On
    the CPU (the dry run) the ``aot_eager`` backend: the same tracing, without inductor's C++
    compilation of every kernel, which takes minutes of a loaded CPU."""
    net = trainer.student.model
    cpu = trainer.runtime.device.type == "cpu"
    net.forward = torch.compile(net.forward, backend="aot_eager" if cpu else "inductor")


def supervised_seconds(cfg: Config, rounds: int) -> float:
    """Median seconds of a source-only iteration (forward, backward, SGD) at the same sizes."""
    trainer = gpu_step.build(cfg)
    device, net = trainer.runtime.device, trainer.student.model
    tick = sync_clock(device)

    def iteration() -> None:
        from hqtd.training.streams import to_device

        batch = to_device(next(trainer.source), device, cfg.train.channels_last)
        with autocast(device, cfg.train.precision):
            loss = supervised_step(net, batch, cfg.train.aux_weight).loss
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    iteration()  # warm up
    times = []
    for _ in range(rounds):
        start = tick()
        iteration()
        times.append(tick() - start)
    return statistics.median(times)


@torch.no_grad()
def eval_seconds(cfg: Config, rounds: int) -> float:
    """Median seconds of one validation image's forward (main head) at the target size."""
    trainer = gpu_step.build(cfg)
    device, net = trainer.runtime.device, trainer.ema.module.eval()
    width, height = cfg.benchmark.target_size
    image = torch.rand(1, 3, height, width, device=device)
    if cfg.train.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    tick = sync_clock(device)
    times = []
    for _ in range(rounds + 1):
        start = tick()
        with autocast(device, cfg.train.precision):
            net(image, aux=False).main.argmax(1)
        times.append(tick() - start)
    return statistics.median(times[1:])


def part_steps(dry: bool, device: str, cap: float) -> tuple[list[str], dict]:
    """Iteration rate, peak memory and pass ratio per method and precision (bench.gpu_step)."""
    rounds = 1 if dry else 10
    deadline = time.perf_counter() + cap
    cases = [(m, p, False) for p in PRECISIONS for m in ("official", "full")]
    cases.append(("full", "bf16+cl", True))  # torch.compile, last: the slowest to set up
    table, rates = [], {}
    for method, precision, compiled in cases:
        name = precision + (" + compile" if compiled else "")
        if time.perf_counter() > deadline:
            table.append([method, name, "skipped (time cap)", "", "", "", ""])
            continue
        overrides, tf32 = PRECISIONS[precision]
        set_tf32(tf32)
        cfg = gpu_step.config(overrides, 2, device, dry, method)
        try:
            result = gpu_step.measure(cfg, rounds, compile_forward if compiled else None)
            extra = {}
            if method == "full" and not compiled:  # the projection's other rates
                extra = {
                    "supervised": supervised_seconds(cfg, rounds),
                    "eval": eval_seconds(cfg, rounds),
                }
        except Exception as error:  # noqa: BLE001  (a failed case is a finding, not the end)
            table.append([method, name, f"failed: {type(error).__name__}: {error}"[:120]])
            continue
        finally:
            gpu_step.release_memory()
        rates[method, name] = result | extra
        table.append(
            [
                method,
                name,
                f"{1 / result['seconds']:.3g}",
                f"{result['seconds'] * 1e3:.0f}",
                f"{result['passes'] * 1e3:.0f}",
                f"{result['ratio']:.3f}",
                f"{result['peak'] / MIB:,.0f}",
            ]
        )
    set_tf32(False)
    headers = [
        "method",
        "precision",
        "it/s",
        "ms / it",
        "model passes ms",
        "it / passes",
        "peak MiB",
    ]
    lines = [tabulate(table, headers=headers, tablefmt="github")]
    for (_method, name), r in rates.items():
        if "supervised" in r:
            lines.append(
                f"- {name}: source-only iteration {r['supervised'] * 1e3:.0f} ms, "
                f"evaluation forward {r['eval'] * 1e3:.0f} ms per image"
            )
    return lines, rates


def curve(cfg: Config, iterations: int, deadline: float) -> list[float]:
    """Total loss per iteration of ``full`` from the seeded start (stops at ``deadline``)."""
    trainer = gpu_step.build(cfg)
    losses = []
    while len(losses) < iterations and time.perf_counter() < deadline:
        losses.append(float(trainer.step().loss.detach()))
    return losses


def part_curves(dry: bool, device: str, cap: float) -> list[str]:
    """fp32 twice, bf16 + channels_last once, same seed and data: max |difference| of the curves."""
    iterations = 3 if dry else 100
    deadline = time.perf_counter() + cap
    runs = {}
    for name, precision in (("fp32 a", "tf32"), ("fp32 b", "tf32"), ("bf16+cl", "bf16+cl")):
        overrides, tf32 = PRECISIONS[precision]
        set_tf32(tf32)
        # Each run gets an equal share of what is left of the cap.
        share = time.perf_counter() + (deadline - time.perf_counter()) / (3 - len(runs))
        runs[name] = curve(gpu_step.config(overrides, 2, device, dry, "full"), iterations, share)
        gpu_step.release_memory()
    set_tf32(False)
    n = min(len(c) for c in runs.values())
    if n == 0:
        return ["no iteration finished within the cap"]

    def gap(a: str, b: str) -> float:
        return max(abs(x - y) for x, y in zip(runs[a][:n], runs[b][:n], strict=False))

    spread, bf16 = gap("fp32 a", "fp32 b"), max(gap("bf16+cl", "fp32 a"), gap("bf16+cl", "fp32 b"))
    verdict = "within" if bf16 <= spread else "outside"
    return [
        f"{n} iterations each (fp32 = hqtd's default on CUDA, cuDNN TF32 on; synthetic batches)",
        f"- max |loss difference| fp32 vs fp32 (run-to-run spread): {spread:.4g}",
        f"- max |loss difference| bf16+channels_last vs fp32: {bf16:.4g} ({verdict} the spread)",
        "- final losses: " + ", ".join(f"{k} {v[n - 1]:.4f}" for k, v in runs.items()),
    ]


def part_largest(dry: bool, device: str, cap: float) -> list[str]:
    deadline = time.perf_counter() + cap
    lines = []
    for precision in ("tf32", "bf16+cl"):
        overrides, tf32 = PRECISIONS[precision]
        set_tf32(tf32)
        fits = gpu_step.largest_batch(overrides, device, dry, "full", deadline)
        lines.append(
            f"- full, {precision}: largest batch per domain that ran: {fits} "
            f"(tried {', '.join(map(str, gpu_step.BATCHES))} in order until a failure "
            f"or the cap)"
        )
    set_tf32(False)
    return lines


def projection(rates: dict) -> list[str]:
    """GPU-hours of the paper grid per precision from the measured rates (module docstring)."""
    rows = []
    for name in (*PRECISIONS, "bf16+cl + compile"):
        full = rates.get(("full", name))
        official = rates.get(("official", name)) or full
        base = rates.get(("full", name.removesuffix(" + compile")))
        if full is None or base is None:
            rows.append([name, "not measured"])
            continue
        adapt = sum(
            count * RUNS_PER_VARIANT * ADAPT_ITERATIONS * r["seconds"]
            for count, r in ((ADAPTED["official"], official), (ADAPTED["full"], full))
        )
        supervised = SUPERVISED_RUNS * SUPERVISED_ITERATIONS * base["supervised"]
        validations = (
            ADAPTED["full"] * RUNS_PER_VARIANT * ADAPT_ITERATIONS / EVAL_EVERY
            + ADAPTED["official"] * RUNS_PER_VARIANT * ADAPT_ITERATIONS / EPOCH
            + SUPERVISED_RUNS * SUPERVISED_ITERATIONS / EVAL_EVERY
            + 2 * (sum(ADAPTED.values()) * RUNS_PER_VARIANT + SUPERVISED_RUNS)  # final evals
        )
        evaluation = validations * VAL_IMAGES * base["eval"]
        total = adapt + supervised + evaluation
        rows.append(
            [
                name,
                f"{adapt / 3600:,.0f}",
                f"{supervised / 3600:,.0f}",
                f"{evaluation / 3600:,.0f}",
                f"{total / 3600:,.0f}",
            ]
        )
    headers = ["precision", "adaptation GPU-h", "source-only GPU-h", "evaluation GPU-h", "total"]
    return [
        tabulate(rows, headers=headers, tablefmt="github"),
        "",
        f"48 adaptations x {ADAPT_ITERATIONS:,} it (official, official_edge at official's rate; "
        f"the 6 others at full's), {SUPERVISED_RUNS} source-only runs x {SUPERVISED_ITERATIONS:,} "
        f"it, validation of {VAL_IMAGES} images every {EVAL_EVERY:,} it (official: every "
        f"{EPOCH:,}) and 2 final evaluations per run; strict evaluation costed as a paper one.",
    ]


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, every code path")
    parse.add_argument("--out", type=Path, default=None, help="report file (default $OUT/...)")
    parse.add_argument("--budget", type=float, default=1.0, help="scale every part's time cap")
    parse.add_argument("--skip", nargs="*", default=[], choices=[*CAPS, "projection"])
    args = parse.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --dry-run for the CPU code path")
        sys.exit(2)
    device = "cpu" if dry else "cuda"
    if dry:
        torch.set_num_threads(1)
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.md"
    work = Path(tempfile.mkdtemp(prefix="hqtd-gpu-check-"))
    # The dry run checks code paths, not speed: no caps (a loaded CPU must not skip a case).
    caps = {name: math.inf if dry else cap * args.budget for name, cap in CAPS.items()}
    start = time.perf_counter()
    parts: list[Part] = []
    rates: dict = {}

    def run_part(title: str, name: str, body: Callable[[], list[str]]) -> None:
        if name in args.skip:
            return
        began = time.perf_counter()
        try:
            lines = body()
        except Exception as error:  # noqa: BLE001  (report it, go on with the other parts)
            lines = [f"failed: {type(error).__name__}: {error}"]
        parts.append(Part(title, lines, time.perf_counter() - began))
        print(f"[{time.perf_counter() - start:6.0f} s] {title}: done", flush=True)

    def steps() -> list[str]:
        lines, measured = part_steps(dry, device, caps["steps"])
        rates.update(measured)
        return lines

    run_part("GPU tests", "tests", lambda: part_tests(dry, caps["tests"]))
    run_part(
        "Real-size run (train, strict evaluate, tables)",
        "real run",
        lambda: part_real_run(dry, device, work),
    )
    run_part("Adaptation step at paper size, batch 2+2", "steps", steps)
    run_part(
        "Loss curves, bf16 vs fp32", "curves", lambda: part_curves(dry, device, caps["curves"])
    )
    run_part(
        "Largest batch at 512 crops",
        "largest batch",
        lambda: part_largest(dry, device, caps["largest batch"]),
    )
    run_part("Projected GPU-hours of the paper grid", "projection", lambda: projection(rates))

    name = "CPU (dry run: tiny sizes, mini network)" if dry else torch.cuda.get_device_name()
    header = [
        f"# GPU check: {name}",
        "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - start:.0f} s in all",
    ]
    body = [f"\n## {p.title} ({p.seconds:.0f} s)\n\n" + "\n".join(p.lines) for p in parts]
    report = "\n".join(header + body) + "\n"
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
