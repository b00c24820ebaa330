"""Prototype-level InfoNCE (METHOD.md §4 step 10): hqtd's class means in one scatter vs a per-class
Python loop, forward and backward, timed side by side.

The loop is the authors' way: for every class present, multiply the logits by the class mask and
average, then a dense InfoNCE over the stacked prototypes. hqtd sums all classes at once with
``index_add``. Inputs are the stride-8 logits of 2 target images with every class present.

    .venv/bin/python -m bench.prototype [--quick]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.common import Row, best_times, finish, parser, ratio, setup_threads
from hqtd.adapt.contrastive import prototype_contrastive_loss
from hqtd.data.labels import IGNORE

NUM_CLASSES = 19
TAU = 1.0 / 7.0  # τ_proto
BATCH = 2


def loop_prototype_loss(strong: torch.Tensor, weak: torch.Tensor, labels: torch.Tensor, tau: float):
    """The per-class loop: one masked mean per class and view, then a dense InfoNCE per image."""
    total = strong.new_zeros(())
    for image in range(strong.shape[0]):
        means_s, means_w = [], []
        for cls in labels[image].unique().tolist():
            if cls == IGNORE:
                continue
            mask = (labels[image] == cls).float()
            means_s.append((strong[image] * mask).sum(dim=(1, 2)) / mask.sum())
            means_w.append((weak[image] * mask).sum(dim=(1, 2)) / mask.sum())
        z = torch.cat([torch.stack(means_s).softmax(1), torch.stack(means_w).softmax(1)])
        rows, half = z.shape[0], z.shape[0] // 2
        eye = torch.eye(rows, dtype=z.dtype)
        similarity = z @ z.T * (1 - eye) + (-100000.0) * eye
        partner = torch.cat([torch.arange(half, rows), torch.arange(half)])
        total = total + F.cross_entropy(similarity / tau, partner)
    return total / strong.shape[0]


def inputs(size: tuple[int, int], seed: int = 0):
    """Strong/weak logits (2, 19, h, w) and contrastive labels with every class and some ignore."""
    gen = torch.Generator().manual_seed(seed)
    strong = torch.randn(BATCH, NUM_CLASSES, *size, generator=gen, requires_grad=True)
    weak = torch.randn(BATCH, NUM_CLASSES, *size, generator=gen, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (BATCH, *size), generator=gen)
    labels[torch.rand(BATCH, *size, generator=gen) < 0.3] = IGNORE
    return strong, weak, labels


def compare(size: tuple[int, int], repeats: int) -> tuple[Row, list]:
    strong, weak, labels = inputs(size)

    def run(loss_fn):
        def forward_backward():
            strong.grad = weak.grad = None
            loss_fn(strong, weak, labels, TAU).backward()

        return forward_backward

    expected = loop_prototype_loss(strong, weak, labels, TAU)
    got = prototype_contrastive_loss(strong, weak, labels, TAU)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    times = best_times(
        {"loop": run(loop_prototype_loss), "vectorised": run(prototype_contrastive_loss)}, repeats
    )
    case = f"prototype InfoNCE {size[0]}x{size[1]}"
    row = Row(case, "time per-class loop / vectorised", ratio(times["loop"], times["vectorised"]))
    detail = [case, f"{times['loop'] * 1e3:.2f}", f"{times['vectorised'] * 1e3:.2f}"]
    return row, detail


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup_threads()
    sizes = [(65, 65)] if args.quick else [(65, 65), (80, 160)]
    results = [compare(size, repeats=10 if args.quick else 30) for size in sizes]
    print(f"prototype InfoNCE forward+backward, batch {BATCH}, C={NUM_CLASSES}, one thread")
    print(tabulate([detail for _, detail in results], headers=["case", "loop ms", "vectorised ms"]))
    finish([row for row, _ in results], args.summary)


if __name__ == "__main__":
    main()
