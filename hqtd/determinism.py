"""CPU kernel pinning: ``train.determinism`` (README, determinism).

torch picks its CPU kernels at run time from the machine: ATen's vectorised kernels by instruction
set (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions by instruction set and cache sizes, MKL's GEMM
by instruction set *and vendor*. The same run therefore gives different floats on an Intel and an
AMD CPU, or on an AVX512 and an AVX2 one. ``portable`` pins all three:

- ATen runs its AVX2 kernels on every CPU (an AVX512 machine would pick AVX512 ones);
- convolutions leave oneDNN (whose results are promised run-to-run on one machine only) for ATen's
  im2col + GEMM; ``ONEDNN_MAX_CPU_ISA`` still caps whatever else might reach oneDNN;
- MKL runs its ``COMPATIBLE`` code branch, the one it runs alike on Intel and non-Intel CPUs
  (``MKL_CBWR``: conditional numerical reproducibility, which also needs a fixed thread count).

The variables are read when torch loads its libraries, so they must be in the environment before
``import torch``: the ``hqtd`` command sets them (:func:`pin_cpu_kernels`) after composing the
configuration and before importing anything that imports torch. A process that loaded torch
without them is refused (:func:`cpu_kernels`) rather than left to compute unpinned.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hqtd.config import Determinism, from_yaml
from hqtd.errors import HqtdError

#: Environment of the portable mode, set before torch loads.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}
#: What torch.backends.cpu.get_cpu_capability() must report under the portable mode.
PORTABLE_CAPABILITY = "AVX2"


def kernel_env(mode: Determinism) -> dict[str, str]:
    """The environment variables ``mode`` needs before torch loads (none for ``default``)."""
    return dict(PORTABLE_ENV) if mode is Determinism.portable else {}


def unpinned(mode: Determinism) -> list[str]:
    """``NAME=VALUE`` of each variable of ``mode`` that the environment lacks or holds otherwise."""
    return [f"{k}={v}" for k, v in kernel_env(mode).items() if os.environ.get(k) != v]


def pin_cpu_kernels(mode: Determinism) -> None:
    """Put ``mode``'s variables into the environment, before torch is imported.

    Raises:
        HqtdError: torch is already loaded and the environment does not hold them.
    """
    if "torch" in sys.modules:
        _check_environment(mode)
        return
    os.environ.update(kernel_env(mode))


def _check_environment(mode: Determinism) -> None:
    missing = unpinned(mode)
    if missing:
        raise HqtdError(
            f"train.determinism={mode.value}: torch was loaded before its CPU kernels were pinned; "
            f"run the hqtd command, or set {' '.join(missing)} before importing torch "
            "(or use train.determinism=default)"
        )


def strictest_mode(runs: Path) -> Determinism:
    """``portable`` if any run under ``runs`` (its ``config.yaml``) asks for it, else ``default``:
    pinned kernels serve both kinds of run, unpinned ones only the default."""
    for saved in sorted(Path(runs).glob("**/config.yaml")):
        if from_yaml(saved).train.determinism is Determinism.portable:
            return Determinism.portable
    return Determinism.default


@contextlib.contextmanager
def cpu_kernels(mode: Determinism, threads: int) -> Iterator[None]:
    """Compute as ``mode`` requires inside the block (training, evaluation).

    ``portable`` checks that the process was pinned before torch loaded, that torch runs its AVX2
    kernels, and that the thread count is fixed, and turns oneDNN off for the block (restored
    after: the caller's process is left as it was).

    Raises:
        HqtdError: the portable mode cannot hold in this process or on this CPU.
    """
    if mode is Determinism.default:
        yield
        return
    _check_environment(mode)
    if threads <= 0:
        raise HqtdError(
            f"train.determinism={mode.value} needs a fixed train.threads (> 0): CPU reductions "
            "split their work by thread count"
        )
    import torch

    # torch takes ATEN_CPU_CAPABILITY on trust (on a CPU without AVX2 its kernels would crash).
    capability = torch.backends.cpu.get_cpu_capability()
    if not torch.cpu._is_avx2_supported() or capability != PORTABLE_CAPABILITY:
        raise HqtdError(
            f"train.determinism={mode.value} needs an x86-64 CPU with AVX2 (torch runs "
            f"{capability} kernels here); use train.determinism=default"
        )
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn


def kernel_settings(mode: Determinism) -> dict[str, Any]:
    """The mode and the CPU kernel settings in effect now, for a run's provenance record.

    Keys: ``determinism`` (the mode), ``env`` (each pinning variable's value, None when unset),
    ``cpu_capability`` (ATen's kernels, e.g. ``AVX2``), ``mkldnn`` (whether oneDNN is on),
    ``threads`` (torch's intra-op threads). Call it inside :func:`cpu_kernels` to see the
    block's settings.
    """
    import torch

    return {
        "determinism": mode.value,
        "env": {name: os.environ.get(name) for name in PORTABLE_ENV},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "threads": torch.get_num_threads(),
    }


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a training checkpoint's numbers: the names, dtypes, shapes and bytes of every
    tensor of its ``model`` and ``ema`` state, in name order (unlike the file's bytes, it does not
    depend on torch's container format or on the RNG states saved beside them)."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for part in ("model", "ema"):
        for name, tensor in sorted(checkpoint[part].items()):
            digest.update(f"{part}.{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()
