"""DeepLab-V2 (METHOD.md §2): a dilated ResNet at output stride 8 with two ASPP-V2 heads.

The ResNet-101 backbone is torchvision's, adjusted after construction where DeepLab-V2 differs:
every block of layer3/layer4 is dilated (torchvision leaves the first block of a dilated stage at
the previous dilation) and, with ``caffe_stride``, the caffe ResNet v1 layout of the authors'
weights. The ``mini`` backbone is a four-block dilated ResNet of torchvision ``BasicBlock``
modules for the embedded benchmark, trained from scratch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from hqtd.config import Backbone, InputStyle, ModelConfig, init_file
from hqtd.errors import HqtdError
from hqtd.models.checkpoints import load_weights

#: The caffe ResNet's input mean, BGR order, 0-255 scale (the authors' init and checkpoints).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPP_DILATIONS = (6, 12, 18, 24)


class SegOutput(NamedTuple):
    """What :meth:`DeepLabV2.forward` returns (METHOD.md notation ``z``, ``a``, ``ẑ``)."""

    main: Tensor  # (B, C, H, W) main-head logits upsampled to the input size
    aux: Tensor | None  # (B, C, H, W) aux-head logits upsampled to the input size (None: skipped)
    main_small: Tensor  # (B, C, h, w) main-head logits at stride 8


class ASPPV2(nn.Module):
    """ASPP-V2 classifier (METHOD.md §2): the sum of parallel dilated 3x3 convolutions with bias.

    ``branches`` holds one convolution per dilation used; the authors' network uses only the first
    two (dilation 6 and 12), see ``ModelConfig.aspp_branches``.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor) -> Tensor:
        """(B, in_channels, h, w) features -> (B, num_classes, h, w) logits."""
        return torch.stack([conv(features) for conv in self.branches]).sum(dim=0)


class DeepLabV2(nn.Module):
    """Segmentation network of METHOD.md §2: backbone, main head on the last stage, aux head on the
    stage before it.

    Args:
        backbone: a network with children ``conv1, bn1, relu, maxpool, layer1..layer4`` run in
            that order, output stride 8.
        channels: (layer3, layer4) output channels.
        num_classes: logits per pixel.
        aspp_branches: how many ASPP dilations (from 6, 12, 18, 24) each head sums.
        input_style: the input normalisation the weights expect.
        align_corners: the convention of the bilinear upsampling of both heads' logits to the
            input size (``ModelConfig.align_corners``, METHOD.md §8.1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: tuple[int, int],
        num_classes: int,
        aspp_branches: int,
        input_style: InputStyle,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.backbone = IntermediateLayerGetter(backbone, {"layer3": "aux", "layer4": "main"})
        dilations = ASPP_DILATIONS[:aspp_branches]
        self.head_aux = ASPPV2(channels[0], num_classes, dilations)
        self.head_main = ASPPV2(channels[1], num_classes, dilations)
        # The stem BN's affine parameters stay at their initial/loaded values (METHOD.md §2); it
        # still normalises with batch statistics in train mode like every other BN.
        self.backbone.bn1.requires_grad_(False)
        channel_order, mean, std = _input_normalisation(input_style)
        # Not persistent: the normalisation follows the config, never a checkpoint.
        self.register_buffer("channel_order", torch.tensor(channel_order), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the network's input convention (see ``input_style``)."""
        return (x[:, self.channel_order] - self.pixel_mean) / self.pixel_std

    def forward(self, x: Tensor, aux: bool = True) -> SegOutput:
        """(B, 3, H, W) RGB in [0, 1] -> :class:`SegOutput`, both heads upsampled by
        :meth:`upsample`.

        ``aux=False`` skips the aux head and its upsampling (``SegOutput.aux`` is None) for callers
        that use only the main head; ``main`` and its gradient are the same either way.
        """
        features = self.backbone(self.normalise(x))
        main_small = self.head_main(features["main"])  # (B, C, h, w), stride 8
        size = (x.shape[-2], x.shape[-1])
        main = self.upsample(main_small, size)
        if not aux:
            return SegOutput(main, None, main_small)
        return SegOutput(main, self.upsample(self.head_aux(features["aux"]), size), main_small)

    def upsample(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, C, h, w) stride-8 logits -> (B, C, H, W) at ``size`` = (H, W), bilinear.

        ``align_corners=False`` (hqtd's default) is the half-pixel convention: output pixel
        centre ``(i + 0.5)·h/H − 0.5`` on the input grid, as every other resize in hqtd. The
        authors' network uses ``True``: ``i·(h − 1)/(H − 1)``, the corner pixels coincide
        (METHOD.md §8.1).
        """
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """SGD parameter groups: trainable backbone parameters at ``lr``, both heads at
        ``lr * head_lr_mult`` (METHOD.md §2). Frozen parameters are left out."""
        heads = [*self.head_main.parameters(), *self.head_aux.parameters()]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            {"name": "backbone", "params": backbone, "lr": lr},
            {"name": "heads", "params": heads, "lr": lr * head_lr_mult},
        ]


def _input_normalisation(
    style: InputStyle,
) -> tuple[list[int], list[float], list[float]]:
    """Channel order, mean and std on the [0, 1] scale, so that ``(x[:, order] - mean) / std`` is
    caffe's ``BGR * 255 - mean`` or torchvision's ImageNet standardisation."""
    if style == InputStyle.caffe:
        return [2, 1, 0], [m / 255.0 for m in CAFFE_MEAN_BGR], [1.0 / 255.0] * 3
    return [0, 1, 2], list(IMAGENET_MEAN), list(IMAGENET_STD)


def _dilate(stage: nn.Sequential, dilation: int) -> None:
    """Give every 3x3 convolution of ``stage`` the dilation (and same-size padding) ``dilation``.

    DeepLab-V2 dilates all blocks of a stage; torchvision keeps the first block of a dilated stage
    at the previous dilation, and its ``BasicBlock`` refuses dilation at construction.
    """
    for module in stage.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.dilation = (dilation, dilation)
            module.padding = (dilation, dilation)


def _caffe_layout(backbone: nn.Module) -> None:
    """Caffe ResNet v1 (the authors' weights): a downsampling bottleneck strides in its first 1x1
    convolution instead of the 3x3, and the stem max-pool rounds up (``ceil_mode``)."""
    backbone.maxpool.ceil_mode = True
    for block in backbone.modules():
        if isinstance(block, Bottleneck) and block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def resnet101_backbone(caffe_stride: bool) -> tuple[nn.Module, tuple[int, int]]:
    """torchvision ResNet-101 at output stride 8 (layer3 dilation 2, layer4 dilation 4).

    Returns:
        The network (its ``avgpool``/``fc`` are never run) and the (layer3, layer4) channels.
    """
    net = torchvision.models.resnet101(
        weights=None, replace_stride_with_dilation=[False, True, True]
    )
    _dilate(net.layer3, 2)
    _dilate(net.layer4, 4)
    if caffe_stride:
        _caffe_layout(net)
    return net, (1024, 2048)


def _basic_stage(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    """One torchvision ``BasicBlock`` with a 1x1 projection shortcut where the shape changes."""
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))
    return nn.Sequential(BasicBlock(in_channels, channels, stride, downsample))


def mini_backbone(width: int, caffe_stride: bool) -> tuple[nn.Module, tuple[int, int]]:
    """Small dilated ResNet for the mini benchmark: ResNet stem, one ``BasicBlock`` per stage,
    widths (w, 2w, 4w, 4w), output stride 8 (layer3 dilation 2, layer4 dilation 4).

    ``caffe_stride`` only sets the ceil-mode max-pool: a ``BasicBlock`` has no 1x1 convolution to
    move its stride to.

    Returns:
        The network and the (layer3, layer4) channels.
    """
    widths = (width, 2 * width, 4 * width, 4 * width)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            bn1=nn.BatchNorm2d(width),
            relu=nn.ReLU(inplace=True),
            maxpool=nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=caffe_stride),
            layer1=_basic_stage(width, widths[0], stride=1),
            layer2=_basic_stage(widths[0], widths[1], stride=2),
            layer3=_basic_stage(widths[1], widths[2], stride=1),
            layer4=_basic_stage(widths[2], widths[3], stride=1),
        )
    )
    _dilate(net.layer3, 2)
    _dilate(net.layer4, 4)
    return net, (widths[2], widths[3])


def build_model(cfg: ModelConfig) -> DeepLabV2:
    """The network ``cfg`` describes, with ``cfg.init`` loaded when set (backbone-only files keep
    the freshly initialised heads).

    Raises:
        HqtdError: a bad ``num_classes``/``aspp_branches``/``mini_width``, or an ``init`` file that
            does not fit.
    """
    if cfg.num_classes < 1:
        raise HqtdError(f"model.num_classes must be positive, got {cfg.num_classes}")
    if cfg.aspp_branches not in (2, 4):
        raise HqtdError(f"model.aspp_branches must be 4 or 2 (authors'), got {cfg.aspp_branches}")
    if cfg.backbone == Backbone.mini:
        if cfg.mini_width < 1:
            raise HqtdError(f"model.mini_width must be positive, got {cfg.mini_width}")
        backbone, channels = mini_backbone(cfg.mini_width, cfg.caffe_stride)
    else:
        backbone, channels = resnet101_backbone(cfg.caffe_stride)
    model = DeepLabV2(
        backbone,
        channels,
        cfg.num_classes,
        cfg.aspp_branches,
        cfg.input_style,
        align_corners=cfg.align_corners,
    )
    init = init_file(cfg)
    if init is not None:
        load_weights(model, init, for_training=True)
    return model
