"""GPU: the adaptation step at the paper's resolution, fp32 vs bf16 autocast + channels_last.

method=full on gta5 (DeepLab-V2 ResNet-101, caffe layout, random init), batch 2 source at
1280×720 + 2 target at 1280×640, 512² crops: the iteration of hqtd.train's loop body
(bench.adapt_step.Trainer) timed on the GPU (wall time after synchronising), its peak memory
(``torch.cuda.max_memory_allocated``), the ratio to its model passes alone (as bench.adapt_step),
and the largest batch per domain that fits in memory. Data are fixed synthetic batches already in
the loader's format (uint8 images, blocky labels): loading is bench.data_path's subject.
Without a CUDA device it prints why and skips.

    .venv/bin/python -m bench.gpu_step [--quick]
    .venv/bin/python -m bench.gpu_step --smoke --device cpu   # the code path, tiny, on CPU
"""

from __future__ import annotations

import gc
import itertools
import math
import statistics
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.adapt_step import build_trainer, model_passes, record_calls
from bench.common import MIB, Row, cuda_clock, finish, parser, ratio, sample_times
from hqtd.config import Config, load_config

#: Config overrides of the two precisions compared.
PRECISIONS = {
    "fp32": ["train.precision=fp32", "train.channels_last=false"],
    "bf16 autocast + channels_last": ["train.precision=bf16", "train.channels_last=true"],
}
#: Batch sizes tried (per domain) when looking for the largest that fits.
BATCHES = (2, 4, 6, 8, 12, 16, 24, 32)


def synthetic_batches(
    batch: int, size: tuple[int, int], num_classes: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The same loader-format batch forever: smooth uint8 (B, 3, H, W) images and labels made of
    32-pixel blocks of classes (so ClassMix finds classes to paste), on the CPU like a loader's."""
    width, height = size
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 16, width // 16, generator=gen)
    image = (F.interpolate(coarse, size=(height, width), mode="bilinear") * 255).to(torch.uint8)
    blocks = torch.randint(0, num_classes, (batch, 1, height // 32, width // 32), generator=gen)
    label = F.interpolate(blocks.float(), size=(height, width), mode="nearest")[:, 0].long()
    return itertools.repeat({"image": image, "label": label})


def config(
    precision: list[str], batch: int, device: str, smoke: bool, method: str = "full"
) -> Config:
    benchmark = ["benchmark=mini_gta5"] if smoke else ["benchmark=gta5"]
    return load_config([*benchmark, f"method={method}", "run_dir=unused", f"train.device={device}",
                        f"train.batch_size={batch}", *precision])  # fmt: skip


def build(cfg: Config):
    bench = cfg.benchmark
    source = synthetic_batches(cfg.train.batch_size, bench.source_size, bench.num_classes, 0)
    target = synthetic_batches(cfg.train.batch_size, bench.target_size, bench.num_classes, 1)
    return build_trainer(cfg, (source, target))


def release_memory() -> None:
    """Give the GPU memory of dropped trainers back before the next case."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clock(device: torch.device):
    return cuda_clock if device.type == "cuda" else time.perf_counter


def measure(cfg: Config, rounds: int, setup=None) -> dict[str, float]:
    """Median iteration seconds, peak memory (CUDA) and median ratio to the model passes;
    ``setup(trainer)`` adjusts the trainer first (e.g. compiles its network)."""
    trainer = build(cfg)
    if setup is not None:
        setup(trainer)
    device = trainer.runtime.device
    for _ in range(2):  # warm up (cuDNN algorithm choice, allocator)
        trainer.step()
    calls = record_calls(trainer)
    passes = model_passes(trainer.student.model, calls, device, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = sample_times({"iteration": trainer.step, "passes": passes}, rounds, clock(device))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    ratios = [a / b for a, b in zip(times["iteration"], times["passes"], strict=True)]
    return {
        "seconds": statistics.median(times["iteration"]),
        "passes": statistics.median(times["passes"]),
        "ratio": statistics.median(ratios),
        "peak": peak,
    }


def largest_batch(
    precision: list[str], device: str, smoke: bool, method: str = "full", deadline: float = math.inf
) -> int:
    """The largest of :data:`BATCHES` for which one iteration runs without running out of memory
    (tried in increasing order until one fails or ``time.perf_counter()`` passes ``deadline``)."""
    fits = 0
    for batch in BATCHES[:2] if smoke else BATCHES:
        if time.perf_counter() > deadline:
            break
        try:
            build(config(precision, batch, device, smoke, method)).step()  # dropped here
            fits = batch
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            release_memory()
    return fits


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--device", default="cuda", help="cuda (default), or cpu with --smoke")
    parse.add_argument("--smoke", action="store_true", help="mini sizes: check the code path")
    args = parse.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_step: skipped, no CUDA device (torch.cuda.is_available() is False)")
        finish([Row("GPU step, paper resolution", "iteration, memory", "not run (no CUDA)")],
               args.summary)  # fmt: skip
        return
    rounds = 2 if args.smoke else 5 if args.quick else 20
    results, lines = {}, []
    for name, precision in PRECISIONS.items():
        results[name] = measure(config(precision, 2, args.device, args.smoke), rounds)
        release_memory()
        results[name]["largest"] = largest_batch(precision, args.device, args.smoke)
        r = results[name]
        lines.append([name, f"{r['seconds'] * 1e3:.0f}", f"{r['passes'] * 1e3:.0f}",
                      f"{r['ratio']:.3f}", f"{r['peak'] / MIB:,.0f}", r["largest"]])  # fmt: skip
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"adaptation step (method=full), batch 2+2, {device}, median of {rounds} rounds")
    print(tabulate(lines, headers=["precision", "iteration ms", "model passes ms",
                                   "iteration / passes", "peak MiB", "largest batch"]))  # fmt: skip
    fp32, bf16 = results["fp32"], results["bf16 autocast + channels_last"]
    case = "GPU step, paper resolution"
    rows = [
        Row(case, "iteration time fp32 / bf16+channels_last",
            ratio(fp32["seconds"], bf16["seconds"])),
        Row(case, "peak memory bf16+channels_last / fp32", ratio(bf16["peak"], fp32["peak"])),
        Row(case, "iteration / model passes (fp32, bf16)",
            f"{fp32['ratio']:.3g}x, {bf16['ratio']:.3g}x"),
        Row(case, "largest batch per domain (fp32, bf16)", f"{fp32['largest']}, {bf16['largest']}"),
    ]  # fmt: skip
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
