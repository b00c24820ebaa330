"""DeepLab-V2 (METHOD.md §2): shapes, stride-8 grid, dilations, caffe layout, ASPP, input, BN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hqtd.config import Backbone, InputStyle, ModelConfig
from hqtd.errors import HqtdError
from hqtd.models import SegOutput, build_model


def _model(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    settings = {
        "backbone": Backbone.mini,
        "mini_width": 8,
        "caffe_stride": False,
        "input_style": InputStyle.torchvision,
    }
    return build_model(ModelConfig(**{**settings, **overrides}))


@pytest.fixture(scope="module")
def r101_caffe() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig()).eval()


# Stride-8 grid sizes by hand. torchvision layout: conv1 (7x7/2, pad 3) n -> floor((n-1)/2)+1,
# max-pool (3x3/2, pad 1) -> floor((n-1)/2)+1, layer2 (3x3/2, pad 1) -> floor((n-1)/2)+1.
# Caffe layout: the max-pool rounds up, ceil((n-1)/2)+1, layer2 strides in a 1x1 conv, ceil(n/2).
#   65: 33 -> 17 -> 9 (both);  321: 161 -> 81 -> 41 (both);
#   96: 48 -> 24 -> 12 (torchvision), 48 -> 25 -> 13 (caffe);  128: 64 -> 32 -> 16 / 64 -> 33 -> 17.
@pytest.mark.parametrize("num_classes", [19, 16])
@pytest.mark.parametrize(
    ("size", "small"), [((65, 65), (9, 9)), ((96, 128), (12, 16)), ((321, 321), (41, 41))]
)
def test_mini_output_shapes(num_classes, size, small):
    model = _model(num_classes=num_classes)
    out = model(torch.rand(2, 3, *size))
    assert isinstance(out, SegOutput)
    assert out.main.shape == (2, num_classes, *size)
    assert out.aux.shape == (2, num_classes, *size)
    assert out.main_small.shape == (2, num_classes, *small)


@pytest.mark.parametrize(("size", "small"), [((65, 65), (9, 9)), ((96, 128), (13, 17))])
def test_r101_caffe_output_shapes(r101_caffe, size, small):
    with torch.no_grad():
        out = r101_caffe(torch.rand(1, 3, *size))
    assert out.main.shape == out.aux.shape == (1, 19, *size)
    assert out.main_small.shape == (1, 19, *small)


def test_r101_torchvision_layout_and_16_classes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=16, caffe_stride=False)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 128))
    assert out.main.shape == (1, 16, 96, 128)
    assert out.main_small.shape == (1, 16, 12, 16)
    assert not model.backbone.maxpool.ceil_mode
    assert model.backbone.layer2[0].conv2.stride == (2, 2)


def test_r101_dilations_and_caffe_strides(r101_caffe):
    backbone = r101_caffe.backbone
    for stage, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
        for block in stage:  # every block, the first included (DeepLab-V2, unlike torchvision)
            assert block.conv2.dilation == block.conv2.padding == (dilation, dilation)
            assert block.conv1.stride == block.conv2.stride == (1, 1)
    first = backbone.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert first.downsample[0].stride == (2, 2)
    assert backbone.maxpool.ceil_mode
    assert r101_caffe.head_main.branches[0].in_channels == 2048
    assert r101_caffe.head_aux.branches[0].in_channels == 1024


def _features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return model.backbone(model.normalise(x))


@pytest.mark.parametrize("branches", [2, 4])
def test_aspp_is_the_sum_of_the_first_branches(branches):
    model = _model(aspp_branches=branches).eval()
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        out = model(x)
        features = _features(model, x)
        dilations = (6, 12, 18, 24)[:branches]
        for head, name in ((model.head_main, "main"), (model.head_aux, "aux")):
            assert len(head.branches) == branches
            expected = sum(
                F.conv2d(features[name], conv.weight, conv.bias, padding=d, dilation=d)
                for conv, d in zip(head.branches, dilations, strict=True)
            )
            got = out.main_small if name == "main" else head(features["aux"])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        up = F.interpolate(out.main_small, size=(64, 80), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out.main, up)


def test_aspp_init():
    model = _model(mini_width=32)
    weights = torch.cat([c.weight.flatten() for c in model.head_main.branches])
    assert abs(weights.std().item() - 0.01) < 0.001 and abs(weights.mean().item()) < 0.001
    assert all(torch.count_nonzero(c.bias) == 0 for c in model.head_aux.branches)


def test_caffe_input_by_hand():
    model = _model(input_style=InputStyle.caffe)
    x = torch.tensor([[1.0, 0.0], [0.5, 0.2], [0.0, 1.0]]).view(1, 3, 1, 2)  # RGB, two pixels
    # BGR * 255 - (104.00698793, 116.66876762, 122.67891434)
    expected = torch.tensor(
        [
            [0.0 - 104.00698793, 255.0 - 104.00698793],
            [127.5 - 116.66876762, 51.0 - 116.66876762],
            [255.0 - 122.67891434, 0.0 - 122.67891434],
        ]
    ).view(1, 3, 1, 2)
    torch.testing.assert_close(model.normalise(x), expected, rtol=0, atol=1e-4)


def test_torchvision_input_by_hand():
    model = _model(input_style=InputStyle.torchvision)
    x = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    expected = torch.tensor(
        [(1.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalise(x), expected)


def test_normalisation_is_not_in_the_state_dict():
    assert not any("pixel" in k or "channel_order" in k for k in _model().state_dict())


def test_stem_bn_frozen_affine_but_batch_statistics():
    model = _model().train()
    stem = model.backbone.bn1
    other = model.backbone.layer1[0].bn1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = model.param_groups(lr=0.1, head_lr_mult=10.0)
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    out = model(torch.rand(2, 3, 48, 48))
    labels = torch.randint(0, 19, (2, 48, 48))
    (F.cross_entropy(out.main, labels) + 0.1 * F.cross_entropy(out.aux, labels)).backward()
    optimizer.step()
    assert not stem.weight.requires_grad and not stem.bias.requires_grad
    assert stem.weight.grad is None
    assert torch.equal(stem.weight, before["backbone.bn1.weight"])
    assert torch.equal(stem.bias, before["backbone.bn1.bias"])
    # train mode: the stem BN normalises with batch statistics and updates its running mean
    assert not torch.equal(stem.running_mean, before["backbone.bn1.running_mean"])
    assert not torch.equal(other.weight, before["backbone.layer1.0.bn1.weight"])


def test_param_groups():
    model = _model()
    backbone, heads = model.param_groups(lr=2.5e-4, head_lr_mult=10.0)
    assert backbone["lr"] == 2.5e-4 and heads["lr"] == pytest.approx(2.5e-3)
    grouped = [id(p) for g in (backbone, heads) for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)
    head_ids = {id(p) for m in (model.head_main, model.head_aux) for p in m.parameters()}
    assert {id(p) for p in heads["params"]} == head_ids


@pytest.mark.parametrize(
    "overrides",
    [{"aspp_branches": 3}, {"num_classes": 0}, {"mini_width": 0}],
)
def test_bad_model_config(overrides):
    with pytest.raises(HqtdError, match="model\\."):
        _model(**overrides)


def test_deterministic_construction():
    a, b = _model(seed=3).state_dict(), _model(seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_skipping_aux_keeps_main_and_its_gradient():
    # Same weights, same input, train mode (batch statistics): with aux=False the aux head is not
    # run, and main, main_small and every parameter's gradient from a loss on main are unchanged.
    image = torch.rand(2, 3, 48, 64)
    grads = []
    for aux in (True, False):
        model = _model(seed=3).train()
        out = model(image, aux=aux)
        assert (out.aux is None) is not aux
        (out.main.square().mean() + out.main_small.mean()).backward()
        grad = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        grads.append((out.main.detach(), out.main_small.detach(), grad))
    (main, small, with_aux), (main_skip, small_skip, without_aux) = grads
    assert torch.equal(main, main_skip) and torch.equal(small, small_skip)
    assert with_aux.keys() == without_aux.keys()
    assert not any(name.startswith("head_aux") for name in without_aux)
    assert all(torch.equal(with_aux[name], without_aux[name]) for name in with_aux)
