"""Golden regression test: a short fixed run of each training stage through the ``hqtd train``
command must reproduce the hashes committed in ``tests/golden/adaptation.json``.

The runs go through the command in fresh processes, without the pinning variables in their
environment, so the command's own ``train.determinism=portable`` pinning (the mini benchmarks'
setting) is what is meant to make the numbers the same on any x86-64 CPU with AVX2 (README,
determinism; bench/RESULTS.md says what was verified). A tiny source-only run makes the
checkpoint that the ``full`` and ``official`` adaptation runs start from.

What is compared, per run: the SHA-256 of ``train_log.jsonl`` and ``val_log.jsonl`` (the loss
terms, lr and EMA scores, written with every digit), and of the last checkpoint's model and EMA
tensors (:func:`hqtd.determinism.checkpoint_digest`; the file's bytes would also depend on torch's
container format and on whether the machine has CUDA RNG state to save).

Any change to the computation of a stage changes these values. When it is intended, regenerate
them with one command and say in the commit message why the numbers changed:

    HQTD_UPDATE_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import data_root  # noqa: F401  (the tiny prepared mini benchmark fixture)

from hqtd.determinism import PORTABLE_ENV, checkpoint_digest
from hqtd.io import write_json

GOLDEN = Path(__file__).parent / "golden" / "adaptation.json"
UPDATE = os.environ.get("HQTD_UPDATE_GOLDEN") == "1"
REGENERATE = "HQTD_UPDATE_GOLDEN=1 pytest tests/test_golden.py"
#: The fixed runs: tiny sizes and network, every iteration logged, mini_gta5's portable kernels.
COMMON = [
    "benchmark=mini_gta5",
    "seed=0",
    "benchmark.source_size=[64,36]",
    "benchmark.target_size=[64,32]",
    "benchmark.crop_size=32",
    "model.mini_width=8",
    "train.threads=1",
    "train.num_workers=0",
    "train.log_every=1",
    "train.checkpoint_every=12",
    "train.eval_every=12",
]
SOURCE_ITERATIONS = 12
ADAPT_ITERATIONS = 24


def hqtd_train(data: Path, run_dir: Path, *overrides: str) -> None:
    """``hqtd train`` in a fresh process whose environment lacks the pinning variables."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    command = [sys.executable, "-m", "hqtd.cli", "train", f"data_root={data}",
               f"run_dir={run_dir}", *COMMON, *overrides]  # fmt: skip
    done = subprocess.run(command, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def run_digests(run_dir: Path) -> dict[str, str]:
    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return {
        "train_log": sha256(run_dir / "train_log.jsonl"),
        "val_log": sha256(run_dir / "val_log.jsonl"),
        "checkpoint_tensors": checkpoint_digest(run_dir / "checkpoints" / "last.pt"),
    }


def test_short_runs_reproduce_the_golden_hashes(data_root: Path, tmp_path: Path):  # noqa: F811
    source = tmp_path / "source_only"
    hqtd_train(data_root, source, "method=source_only",
               f"train.source_only_iterations={SOURCE_ITERATIONS}")  # fmt: skip
    init = source / "checkpoints" / "last.pt"
    for method in ("full", "official"):
        adapt = [f"train.init_checkpoint={init}", f"train.iterations={ADAPT_ITERATIONS}"]
        hqtd_train(data_root, tmp_path / method, f"method={method}", *adapt)
    measured = {run: run_digests(tmp_path / run) for run in ("source_only", "full", "official")}
    if UPDATE:
        write_json(GOLDEN, {"regenerate": REGENERATE, "runs": measured})
    golden = json.loads(GOLDEN.read_text())["runs"]
    changed = [
        f"{run} {key}"
        for run, digests in measured.items()
        for key, value in digests.items()
        if golden.get(run, {}).get(key) != value
    ]
    if changed:
        pytest.fail(
            f"the short runs no longer match {GOLDEN.name} ({', '.join(changed)}). If the change "
            f"of the numbers is intended, regenerate with `{REGENERATE}` and say in the commit "
            "message why they changed."
        )
