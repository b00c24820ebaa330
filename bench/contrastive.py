"""Pixel-level InfoNCE (METHOD.md §4 step 9): hqtd's blockwise loss vs the dense formula.

The dense formula is the authors' way: build the full 2N×2N matrix ``S = Z Zᵀ``, push its diagonal
to −1e5 with an identity mask, and take the cross-entropy of ``S/τ`` against the positive partner.
Both variants run forward and backward from the same stride-8 logits (1, 19, h, w) of one target
image, each in a fresh single-threaded process: N = 65² = 4,225 (a 512 crop) and N = 80·160 =
12,800 (a full 1280×640 target). Reported: the loss and its gradient agree (rtol 1e-5), peak
memory (resident set, see bench.common) and CPU time of each, and their ratios.

    .venv/bin/python -m bench.contrastive [--quick] [--sizes 65x65 80x160]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.common import (
    MIB,
    Row,
    finish,
    parser,
    peak_memory,
    ratio,
    run_child,
    sample_times,
    setup_threads,
)
from hqtd.adapt.contrastive import default_block_rows, pixel_contrastive_loss

NUM_CLASSES = 19
TAU = 0.05  # τ_pix
RTOL = 1e-5
MEMORY_TARGET = 0.05  # blockwise peak <= 5% of dense
TIME_TARGET = 1.0  # blockwise time <= dense
DENSE_RUN_ONCE_ABOVE = 10_000  # N beyond which the dense variant runs only once


def dense_pixel_loss(strong_logits: torch.Tensor, weak_logits: torch.Tensor, tau: float):
    """Step 9 as the authors compute it, per image: the full 2N×2N matrix and a cross-entropy."""
    losses = []
    for strong, weak in zip(strong_logits, weak_logits, strict=True):
        z = torch.cat([strong.flatten(1).T.softmax(dim=1), weak.flatten(1).T.softmax(dim=1)])
        rows, half = z.shape[0], z.shape[0] // 2
        eye = torch.eye(rows, dtype=z.dtype)
        similarity = z @ z.T
        similarity = similarity * (1 - eye) + (-100000.0) * eye  # the diagonal never wins
        partner = torch.cat([torch.arange(half, rows), torch.arange(half)])
        losses.append(F.cross_entropy(similarity / tau, partner))
    return torch.stack(losses).mean()


def logits(size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Strong and weak stride-8 logits (1, 19, h, w): correlated views with confident pixels."""
    gen = torch.Generator().manual_seed(seed)
    base = 4 * torch.randn(1, NUM_CLASSES, *size, generator=gen)
    strong = base + torch.randn(base.shape, generator=gen)
    weak = base + torch.randn(base.shape, generator=gen)
    return strong.requires_grad_(), weak.requires_grad_()


def child(variant: str, size: tuple[int, int], repeats: int, block_rows: int | None, out: Path):
    """Measure one variant in this (fresh) process; save its loss and gradients to ``out``."""
    setup_threads()
    strong, weak = logits(size)

    def forward_backward() -> torch.Tensor:
        strong.grad = weak.grad = None
        if variant == "dense":
            loss = dense_pixel_loss(strong, weak, TAU)
        else:
            loss = pixel_contrastive_loss(strong, weak, TAU, block_rows)
        loss.backward()
        return loss.detach()

    small = logits((4, 4))  # load the kernels (MKL, autograd) before measuring
    (dense_pixel_loss if variant == "dense" else pixel_contrastive_loss)(*small, TAU).backward()
    # The first run is measured for memory and timed too (CPU seconds); then ``repeats`` more.
    result = {}
    start = time.process_time()
    peak = peak_memory(lambda: result.setdefault("loss", forward_backward()))
    first = time.process_time() - start
    seconds = min([first, *sample_times({variant: forward_backward}, repeats)[variant]])
    torch.save({"loss": result["loss"], "strong": strong.grad, "weak": weak.grad}, out)
    print(json.dumps({"peak": peak, "seconds": seconds}))


def measure(variant: str, size, repeats: int, block_rows: int | None, out: Path) -> dict:
    grid = f"{size[0]}x{size[1]}"
    args = ["--child", variant, grid, str(repeats), str(block_rows or 0), str(out)]
    return run_child("bench.contrastive", args)


def float64_reference(size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Loss and gradients of the same inputs in float64 (blockwise: the dense float64 matrix
    would not fit at N = 12,800; tests/test_adapt_contrastive.py checks the two agree in float64
    to 1e-10), to show how far each float32 variant is from the exact value."""
    strong, weak = (t.detach().double().requires_grad_() for t in logits(size))
    loss = pixel_contrastive_loss(strong, weak, TAU)
    loss.backward()
    return {"loss": loss.detach(), "strong": strong.grad, "weak": weak.grad}


def difference(got: dict, expected: dict) -> tuple[float, float, bool]:
    """Relative loss difference, largest gradient difference relative to the largest gradient,
    and whether they agree: loss to ``RTOL`` and every gradient entry to ``RTOL`` relative to
    itself, plus ``RTOL`` of the largest entry (entries near zero carry rounding from the sum)."""
    loss_diff = abs(got["loss"].item() / expected["loss"].item() - 1)
    grads = torch.cat([got["strong"].flatten(), got["weak"].flatten()]).double()
    reference = torch.cat([expected["strong"].flatten(), expected["weak"].flatten()]).double()
    scale = reference.abs().max().item()
    grad_diff = (grads - reference).abs().max().item() / scale
    close = torch.allclose(grads, reference, rtol=RTOL, atol=RTOL * scale)
    return loss_diff, grad_diff, loss_diff <= RTOL and close


def compare(size: tuple[int, int], repeats: int, tmp: Path) -> tuple[list[Row], list[list]]:
    """Both variants at one size: summary rows and detail lines."""
    n = size[0] * size[1]
    runs = {}
    for variant in ("blockwise", "dense"):
        # The dense variant at N = 12,800 takes minutes and ~15 GiB: one run, timed and measured.
        times = 0 if variant == "dense" and n > DENSE_RUN_ONCE_ABOVE else repeats
        runs[variant] = measure(variant, size, times, None, tmp / f"{variant}.pt")
        runs[variant]["out"] = torch.load(tmp / f"{variant}.pt")
    block, dense = runs["blockwise"], runs["dense"]
    loss_diff, grad_diff, agree = difference(block["out"], dense["out"])
    exact = float64_reference(size)
    memory = block["peak"] / dense["peak"]
    case = f"pixel InfoNCE N={n:,}"
    rows = [
        Row(case, "loss and gradients equal", f"loss {loss_diff:.1e}, grad {grad_diff:.1e}",
            f"rtol {RTOL:g}", agree),
        Row(case, "peak memory blockwise / dense", f"{memory:.2%}",
            f"<= {MEMORY_TARGET:.0%}", memory <= MEMORY_TARGET),
        Row(case, "time blockwise / dense", ratio(block["seconds"], dense["seconds"]),
            f"<= {TIME_TARGET:g}x", block["seconds"] <= TIME_TARGET * dense["seconds"]),
    ]  # fmt: skip
    details = []
    for name, run in runs.items():
        loss_error, grad_error, _ = difference(run["out"], exact)
        details.append([f"{n:,}", name, f"{run['peak'] / MIB:,.0f}", f"{run['seconds']:.2f}",
                        f"{loss_error:.1e}", f"{grad_error:.1e}"])  # fmt: skip
    return rows, details


def block_sizes(size: tuple[int, int], repeats: int, tmp: Path) -> list[list]:
    """Blockwise time at a quarter, one and four times the default block (the default's choice)."""
    default = default_block_rows(2 * size[0] * size[1], torch.device("cpu"))
    lines = []
    for block_rows in (max(1, default // 4), default, 4 * default):
        run = measure("blockwise", size, repeats, block_rows, tmp / "blocks.pt")
        lines.append([f"{size[0] * size[1]:,}", block_rows, f"{run['peak'] / MIB:,.0f}",
                      f"{run['seconds']:.2f}"])  # fmt: skip
    return lines


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--sizes", nargs="+", default=None, help="stride-8 grids HxW")
    parse.add_argument("--repeats", type=int, default=2, help="timed runs per variant")
    parse.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parse.parse_args()
    if args.child:
        variant, size, repeats, block_rows, out = args.child
        child(variant, _size(size), int(repeats), int(block_rows) or None, Path(out))
        return
    sizes = [_size(s) for s in args.sizes or (["65x65"] if args.quick else ["65x65", "80x160"])]
    rows, details, blocks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            size_rows, size_details = compare(size, args.repeats, Path(tmp))
            rows += size_rows
            details += size_details
            blocks += block_sizes(size, args.repeats, Path(tmp))
    print(f"pixel InfoNCE forward+backward, C={NUM_CLASSES}, tau={TAU}, one thread (CPU s)")
    print(tabulate(details, headers=["N", "variant", "peak MiB", "CPU s", "loss error vs fp64",
                                     "grad error vs fp64 (of max)"]))  # fmt: skip
    print(tabulate(blocks, headers=["N", "block rows", "peak MiB", "CPU s"]))
    finish(rows, args.summary)


def _size(text: str) -> tuple[int, int]:
    height, width = text.split("x")
    return int(height), int(width)


if __name__ == "__main__":
    main()
