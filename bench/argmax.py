"""Class index per pixel of NCHW logits (pseudo-labels, METHOD.md §4 steps 3, 5, 7): torch's
``argmax(dim=1)`` vs ``max(dim=1)``, which hqtd.adapt.pseudo uses, timed side by side.

Inputs: the mini model's logits at the mini target size, and random logits of a 512² crop (the
paper's), batch 2, 19 classes, one thread.

    .venv/bin/python -m bench.argmax [--quick]
"""

from __future__ import annotations

import torch
from tabulate import tabulate

from bench.common import Row, best_times, finish, parser, ratio, setup_threads
from hqtd.config import load_config
from hqtd.models.deeplabv2 import build_model

NUM_CLASSES = 19


def cases(quick: bool) -> dict[str, torch.Tensor]:
    """Name -> (2, 19, H, W) logits."""
    cfg = load_config(["benchmark=mini_gta5", "run_dir=unused"])
    width, height = cfg.benchmark.target_size
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    with torch.no_grad():
        mini = model(torch.rand(2, 3, height, width)).main
    found = {f"mini model logits {width}x{height}": mini}
    if not quick:
        found["random logits 512x512"] = 3 * torch.randn(2, NUM_CLASSES, 512, 512)
    return found


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup_threads()
    rows, lines = [], []
    for name, logits in cases(args.quick).items():
        assert torch.equal(logits.max(dim=1).indices, logits.argmax(dim=1))
        times = best_times(
            {"argmax": lambda x=logits: x.argmax(dim=1), "max": lambda x=logits: x.max(dim=1)},
            repeats=10 if args.quick else 30,
        )
        lines.append([name, *(f"{s * 1e3:.2f}" for s in times.values())])
        rows.append(Row(f"class index: {name}", "time argmax / max",
                        ratio(times["argmax"], times["max"])))  # fmt: skip
    print("class index over dim 1 of (2, 19, H, W) logits, best CPU ms, one thread")
    print(tabulate(lines, headers=["case", "argmax", "max"]))
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
