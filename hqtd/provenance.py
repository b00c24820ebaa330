"""Where a result was made: the code, data, software and machine behind a run or an evaluation.

Two uses share these functions:

- :func:`run_identity` names the computation of a training run (its code fingerprint, the content
  hashes of the prepared manifests it reads and of the checkpoints it starts from). ``hqtd train``
  records it in ``<run_dir>/provenance.json`` and resumes a run only under the same identity.
- :func:`environment` describes the process that made a result (git revision and dirty flag,
  library versions, device, threads, CPU kernel pinning). ``hqtd evaluate`` stores it with the
  data hash under ``provenance`` in ``metrics.json``; ``hqtd tables`` copies those values into
  every row of ``runs.csv`` (:data:`KEYS`), and ``hqtd compare`` warns where they differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hqtd import __version__
from hqtd.codedeps import code_fingerprint
from hqtd.config import Config, params_dir
from hqtd.determinism import PORTABLE_ENV
from hqtd.io import file_sha256

if TYPE_CHECKING:
    import torch

#: Environment variables that pin CPU kernels (hqtd.determinism), recorded as found.
PINNING_VARIABLES = tuple(PORTABLE_ENV)
#: The flat provenance keys of ``metrics.json`` and the provenance columns of ``runs.csv``.
KEYS = (
    "git_revision", "git_dirty", "hqtd_version", "torch_version", "cuda_version",
    "cudnn_version", "device", "cpu_capability", "threads", "data", "determinism",
    *PINNING_VARIABLES,
)  # fmt: skip
UNKNOWN = "unknown"


def manifest_paths(config: Config) -> list[Path]:
    """The ``manifest.json`` of every prepared dataset of the benchmark (source, target and target
    val, each once): the data a run trains on and is validated and evaluated on."""
    bench = config.benchmark
    roots = dict.fromkeys(spec.root for spec in (bench.source, bench.target, bench.target_val))
    return [Path(root) / "manifest.json" for root in roots]


def manifest_hashes(config: Config) -> dict[str, str]:
    """``{manifest path: SHA-256 of its bytes}`` (``missing`` for an absent file)."""
    return {
        str(path): file_sha256(path) if path.is_file() else "missing"
        for path in manifest_paths(config)
    }


def combined_hash(hashes: dict[str, str]) -> str:
    """One SHA-256 over a ``{name: hash}`` mapping (for a single column)."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def run_identity(config: Config) -> dict[str, Any]:
    """What makes two trainings the same computation, besides the config: the code that
    ``hqtd.train`` imports, the prepared manifests, and the content of the files the run starts
    from (``train.init_checkpoint``, ``model.init``), which keep their paths when rewritten."""
    starts = {
        "train.init_checkpoint": config.train.init_checkpoint,
        "model.init": config.model.init,
    }
    return {
        "code": code_fingerprint("hqtd.train"),
        "data": manifest_hashes(config),
        "init": {
            key: file_sha256(path) if Path(path).is_file() else "missing"
            for key, path in starts.items()
            if path is not None
        },
    }


def _git(*args: str) -> str | None:
    """Output of a git command run in the package's folder; None outside a checkout."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout


def _code_paths() -> tuple[str, str]:
    """The package and ``params/``: the code and configuration a result depends on."""
    return str(Path(__file__).resolve().parent), str(params_dir())


def git_revision() -> str:
    """The last commit that changed the package or ``params/`` (``unknown`` outside a git
    checkout or without git). Not HEAD: committing the results themselves (or the README) must
    not change what a rerun of the same code records, so that a rerun reproduces them byte for
    byte."""
    output = _git("log", "-1", "--format=%H", "--", *_code_paths())
    return UNKNOWN if not output else output.strip()


def git_dirty() -> bool | str:
    """True when the package or ``params/`` differ from the commit (modified or new files);
    ``unknown`` without git. Only these count: the results a workflow writes are tracked files
    too, and must not mark the code that made them dirty."""
    output = _git("status", "--porcelain", "--", *_code_paths())
    return UNKNOWN if output is None else bool(output.strip())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def environment(device: torch.device, determinism: str) -> dict[str, Any]:
    """The flat provenance of the calling process (the :data:`KEYS` except ``data``).

    Args:
        device: the ``torch.device`` the computation ran on (the GPU's name is recorded for CUDA,
            the CPU model otherwise).
        determinism: ``config.train.determinism``.
    """
    import torch  # here: the rest of this module serves commands that never load torch

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = cpu_model()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "hqtd_version": __version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        "cudnn_version": "none" if cudnn is None else str(cudnn),
        "device": device_name,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "determinism": str(determinism),
        **{name: os.environ.get(name, "") for name in PINNING_VARIABLES},
    }


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two :func:`run_identity` records, in words (``code``, ``data
    PATH``, ``train.init_checkpoint content``)."""
    found = ["code"] if saved.get("code") != now["code"] else []
    for group, label in (("data", "data {}"), ("init", "{} content")):
        old, new = saved.get(group, {}), now[group]
        found += [
            label.format(key) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)
        ]
    return found
