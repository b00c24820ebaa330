"""hqtd: EHTDI (Li et al., ACM MM 2022) for UDA semantic segmentation, and its benchmark harness."""

from hqtd import _torchvision_guard  # noqa: F401  (must run before any torchvision import)

__version__ = "0.1.0"
