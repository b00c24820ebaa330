"""Step 2's views (METHOD.md §4, §8.6): one ``make_views`` call in the authors' mode (uint8
OpenCV-exact ops) vs hqtd's default torchvision mode, timed side by side.

Inputs: a batch of 2 images with int64 labels, (2, 3, 96, 96) cropped to 96 (the mini benchmark's
crop) and (2, 3, 640, 1280) cropped to 512 (the paper's target batch); one thread on CPU, or
``--device cuda``.

    .venv/bin/python -m bench.augment [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

from functools import partial

import torch
from tabulate import tabulate

from bench.common import Row, cuda_clock, finish, parser, ratio, sample_times, setup_threads
from hqtd.adapt.views import make_views
from hqtd.config import Augmentation

CASES = {"(2, 3, 96, 96) -> 96": (96, 96, 96), "(2, 3, 640, 1280) -> 512": (640, 1280, 512)}


def inputs(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as hqtd feeds them (dataset levels / 255) and labels, batch 2."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, height, width), generator=gen).float().div(255)
    labels = torch.randint(0, 19, (2, height, width), generator=gen)
    return images.to(device), labels.to(device)


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parse.parse_args()
    setup_threads()
    device = torch.device(args.device)
    clock = cuda_clock if device.type == "cuda" else None
    rows, lines = [], []
    for name, (height, width, size) in CASES.items():
        images, labels = inputs(height, width, device)
        generator = torch.Generator(device).manual_seed(0)
        variants = {
            mode.value: partial(make_views, images, labels, size, generator, mode)
            for mode in (Augmentation.authors, Augmentation.torchvision)
        }
        variants["authors"]()  # warm-up (CUDA context, kernels)
        extra = {"clock": clock} if clock else {}
        samples = sample_times(variants, repeats=3 if args.quick else 10, **extra)
        best = {mode: min(times) for mode, times in samples.items()}
        lines.append([name, *(f"{seconds * 1e3:.1f}" for seconds in best.values())])
        rows.append(Row(f"views {device.type}: {name}", "time authors / torchvision",
                        ratio(best["authors"], best["torchvision"])))  # fmt: skip
    print(f"make_views, batch 2, best {device.type} ms" + (", one thread" if clock is None else ""))
    print(tabulate(lines, headers=["case", "authors", "torchvision"]))
    finish(rows, args.summary)


if __name__ == "__main__":
    main()
