"""hqtd: EHTDI (Li et al., ACM MM 2022) for UDA semantic segmentation, and its benchmark harness."""

import importlib.abc
import sys

__version__ = "0.1.0"


class _GuardBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :mod:`hqtd._torchvision_guard` the first time anything imports torchvision.

    The guard needs torch (about 2 s of CPU to import); installing it lazily keeps ``import hqtd``
    cheap for the commands and the Snakemake workflow that never touch torch or torchvision.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            from hqtd import _torchvision_guard  # noqa: F401

        # None: the regular finders go on to locate torchvision itself.


if "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _GuardBeforeTorchvision())
