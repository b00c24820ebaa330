"""Make PyPI's CUDA-built torchvision importable next to a CPU-only torch.

torchvision registers fake kernels for ``torchvision::nms`` / ``qnms`` at import time. When its
compiled ``_C`` extension cannot load (CUDA build, CPU torch) those operators were never defined
and ``import torchvision`` fails with ``operator torchvision::nms does not exist``. Defining the two
schemas ourselves lets the pure-Python parts (models, ``transforms.v2``, ``tv_tensors``) import;
the C++ ops and ``torchvision.io`` stay unavailable. Where ``_C`` loads, this module does nothing.

Importing :mod:`hqtd` arranges for this module to run just before torchvision is first imported
(torchmetrics imports torchvision too); tests import :mod:`hqtd` before either.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


def _compiled_ops_load() -> bool:
    """True when torchvision's ``_C`` extension loads into this torch (or torchvision is absent)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True
    libraries = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(
        Path(spec.origin).parent.glob("_C*.pyd")
    )
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, RuntimeError):
        return False
    return True


def _define_missing_schemas() -> torch.library.Library | None:
    if _compiled_ops_load():
        return None
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    return library


# Held at module level: the definitions disappear when the Library object is garbage collected.
_LIBRARY = _define_missing_schemas()
