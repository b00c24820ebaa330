"""Label conversion: one lookup-table gather vs a per-class Python loop, timed side by side.

The loop is what many UDA code bases do (``for raw, train in mapping: out[label == raw] = train``),
one full pass over the label per mapped class; hqtd.data.labels.apply_lut does one gather.

    .venv/bin/python -m bench.label_conversion [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tabulate import tabulate

from bench.common import Row, finish, parser
from hqtd.data.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_LUT,
    IGNORE,
    SYNTHIA_ID_TO_TRAINID,
    SYNTHIA_LUT,
    apply_lut,
)

WIDTH, HEIGHT = 1914, 1052  # a GTA5 label


def per_class_loop(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """The baseline: one comparison pass over the label per mapped class."""
    out = np.full(label.shape, IGNORE, dtype=np.uint8)
    for raw, train in mapping.items():
        out[label == raw] = train
    return out


def best_time(convert: Callable[[np.ndarray], np.ndarray], labels: list[np.ndarray]) -> float:
    """Best wall time (s) per label over the labels: the least disturbed measurement."""
    times = []
    for label in labels:
        start = time.perf_counter()
        convert(label)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--repeats", type=int, default=5, help="random labels per format")
    parse.add_argument("--seed", type=int, default=0)
    args = parse.parse_args()
    rng = np.random.default_rng(args.seed)
    formats = [
        ("Cityscapes/GTA5 labelIds", np.uint8, 34, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_LUT),
        ("SYNTHIA ids (16-bit)", np.uint16, 23, SYNTHIA_ID_TO_TRAINID, SYNTHIA_LUT),
    ]
    rows, summary = [], []
    for name, dtype, num_ids, mapping, table in formats:
        labels = [
            rng.integers(0, num_ids, (HEIGHT, WIDTH)).astype(dtype) for _ in range(args.repeats)
        ]
        for label in labels:  # both give the same trainIds
            assert np.array_equal(apply_lut(table, label), per_class_loop(label, mapping))
        lut = best_time(lambda label, table=table: apply_lut(table, label), labels)
        loop = best_time(lambda label, mapping=mapping: per_class_loop(label, mapping), labels)
        rows.append([name, f"{loop * 1e3:.1f}", f"{lut * 1e3:.1f}", f"{loop / lut:.1f}x"])
        summary.append(Row(f"label conversion: {name}", "time per-class loop / lookup table",
                           f"{loop / lut:.1f}x"))  # fmt: skip
    print(f"label conversion, {WIDTH}x{HEIGHT} random labels, best of {args.repeats}")
    print(tabulate(rows, headers=["format", "per-class loop ms", "lookup table ms", "speed-up"]))
    finish(summary, args.summary)


if __name__ == "__main__":
    main()
