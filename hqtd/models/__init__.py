"""DeepLab-V2 segmentation networks (METHOD.md §2) and loading of every supported weights file."""

from hqtd.models.checkpoints import load_weights, to_authors_layout
from hqtd.models.deeplabv2 import DeepLabV2, SegOutput, build_model

__all__ = ["DeepLabV2", "SegOutput", "build_model", "load_weights", "to_authors_layout"]
