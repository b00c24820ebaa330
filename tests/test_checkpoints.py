"""Weight loading (METHOD.md §2 compatibility facts): every file kind, all-or-nothing, 19->16 rows.

The authors' layout is rebuilt here from METHOD.md with the test's own key mapping, independent of
``hqtd.models.checkpoints``.
"""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import Tensor, nn

from hqtd.config import Backbone, InputStyle, ModelConfig, Weights
from hqtd.data.labels import TRAINIDS_16
from hqtd.errors import HqtdError
from hqtd.models import build_model, load_weights, to_authors_layout

UNUSED = {"proto_classifier.weight": (19, 19), "para": (1,), "fuse_weight_1": (1,)}


def _mini(seed: int, num_classes: int = 19, branches: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        backbone=Backbone.mini,
        mini_width=8,
        num_classes=num_classes,
        aspp_branches=branches,
        caffe_stride=False,
        input_style=InputStyle.torchvision,
    )
    model = build_model(cfg)
    _randomise_bn(model, seed)
    return model.eval()


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-default BN statistics and affine values, so eval-mode logits depend on all of them."""
    generator = torch.Generator().manual_seed(seed + 100)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator))
            module.num_batches_tracked.fill_(7)


def _authors_key(key: str) -> str:
    """hqtd key -> the authors' key per METHOD.md §2 (layer5 = aux ASPP, layer6 = main ASPP)."""
    head = {"head_aux": "layer5", "head_main": "layer6"}
    first, rest = key.split(".", 1)
    if first in head:
        return head[first] + "." + rest.replace("branches.", "conv2d_list.", 1)
    assert first == "backbone"
    return rest


def _authors_state(model: nn.Module, num_classes: int = 19) -> dict[str, Tensor]:
    """The model's weights as the authors store them: all four ASPP branches, 3 unused params."""
    state = {_authors_key(k): v.clone() for k, v in model.state_dict().items()}
    for layer, channels in (("layer5", model.head_aux.branches[0].in_channels),
                            ("layer6", model.head_main.branches[0].in_channels)):  # fmt: skip
        for branch in range(len(model.head_main.branches), 4):
            state[f"{layer}.conv2d_list.{branch}.weight"] = torch.randn(num_classes, channels, 3, 3)
            state[f"{layer}.conv2d_list.{branch}.bias"] = torch.randn(num_classes)
    state.update({name: torch.randn(shape) for name, shape in UNUSED.items()})
    return state


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).main


X = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))


def _equal_states(a: nn.Module, b: nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


@pytest.mark.parametrize("branches", [4, 2])
def test_authors_checkpoint_module_prefix_in_state_dict(tmp_path, branches):
    reference = _mini(seed=0, branches=branches)
    state = {"module." + k: v for k, v in _authors_state(reference).items()}
    path = tmp_path / "authors.pth"
    torch.save({"state_dict": state, "iteration": 5}, path)
    model = _mini(seed=1, branches=branches)
    assert not torch.equal(_logits(model, X), _logits(reference, X))
    load_weights(model, path)
    assert torch.equal(_logits(model, X), _logits(reference, X))
    assert _equal_states(model, reference)


def test_authors_checkpoint_r101(tmp_path):
    torch.manual_seed(0)
    reference = build_model(ModelConfig(aspp_branches=2)).eval()
    path = tmp_path / "authors_r101.pth"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in _authors_state(reference).items()}}, path
    )
    torch.manual_seed(1)
    model = build_model(ModelConfig(aspp_branches=2)).eval()
    load_weights(model, path)
    x = torch.rand(1, 3, 33, 41)
    assert torch.equal(_logits(model, x), _logits(reference, x))


def test_shadow_wrapper(tmp_path):
    reference = _mini(seed=0)
    path = tmp_path / "ema.pth"
    torch.save({"shadow": _authors_state(reference)}, path)
    model = _mini(seed=1)
    load_weights(model, path)
    assert torch.equal(_logits(model, X), _logits(reference, X))


def test_scale_init_file_loads_backbone_keeps_heads(tmp_path):
    reference = _mini(seed=0)
    state = {
        "Scale." + k: v
        for k, v in _authors_state(reference, num_classes=21).items()
        if not k.endswith("num_batches_tracked")  # the caffe-converted file predates them
        and k not in UNUSED
        and not k.startswith(("layer5", "layer6"))
    }
    for branch in range(4):  # its head has the wrong class count (21)
        state[f"Scale.layer5.conv2d_list.{branch}.weight"] = torch.randn(21, 32, 3, 3)
        state[f"Scale.layer5.conv2d_list.{branch}.bias"] = torch.randn(21)
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save(state, path)
    model = _mini(seed=1)
    fresh = _mini(seed=1)
    load_weights(model, path)
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    expected = reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in backbone.items() if "num_batches" not in k)
    assert _equal_states(model, fresh, prefix="head_")


def test_torchvision_imagenet_resnet101(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path / "resnet101-imagenet.pth"
    torch.save(imagenet, path)
    torch.manual_seed(1)
    model = build_model(ModelConfig(input_style=InputStyle.torchvision, caffe_stride=False))
    heads = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head_")}
    load_weights(model, path)
    state = model.state_dict()
    assert all(
        torch.equal(state["backbone." + k], v) for k, v in imagenet.items() if "fc." not in k
    )
    assert all(torch.equal(state[k], v) for k, v in heads.items())


def _hqtd_checkpoint(path: Path, model_weights: nn.Module, ema_weights: nn.Module) -> None:
    torch.save(
        {
            "format": "hqtd-train-v1",
            "model": model_weights.state_dict(),
            "ema": ema_weights.state_dict(),
            "iteration": 10,
            "best_score": 1.5,
        },
        path,
    )


def test_hqtd_checkpoint_ema_by_default_model_on_request(tmp_path):
    student, ema = _mini(seed=0), _mini(seed=1)
    path = tmp_path / "last.pt"
    _hqtd_checkpoint(path, student, ema)
    model = _mini(seed=2)
    load_weights(model, path)
    assert _equal_states(model, ema)
    load_weights(model, path, weights=Weights.student)
    assert _equal_states(model, student)


def test_19_class_checkpoint_into_16_class_model(tmp_path):
    source = _mini(seed=0, num_classes=19)
    path = tmp_path / "source_only.pt"
    _hqtd_checkpoint(path, source, source)
    model = _mini(seed=1, num_classes=16)
    load_weights(model, path)
    state, full = model.state_dict(), source.state_dict()
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]
    assert list(TRAINIDS_16) == rows
    for key, value in state.items():
        expected = full[key][rows] if key.startswith("head_") else full[key]
        assert torch.equal(value, expected), key
    # the kept rows' logits are the 19-class model's logits of those classes
    torch.testing.assert_close(_logits(model, X), _logits(source, X)[:, rows])


def test_authors_19_class_checkpoint_into_16_class_model(tmp_path):
    source = _mini(seed=0, num_classes=19)
    path = tmp_path / "gta5_authors.pth"
    torch.save(_authors_state(source), path)
    model = _mini(seed=1, num_classes=16)
    load_weights(model, path)
    torch.testing.assert_close(_logits(model, X), _logits(source, X)[:, list(TRAINIDS_16)])


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    state = _authors_state(_mini(seed=0))
    del state["layer2.0.bn2.running_var"]
    state["layer7.conv2d_list.0.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    model = _mini(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(HqtdError) as error:
        load_weights(model, path)
    message = str(error.value)
    assert "unexpected keys: backbone.layer7.conv2d_list.0.weight" in message
    assert "missing keys: backbone.layer2.0.bn2.running_var" in message
    assert str(path) in message and "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_only_the_three_named_unused_parameters_are_dropped(tmp_path):
    state = _authors_state(_mini(seed=0))
    state["para2"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(HqtdError, match="unexpected keys: backbone.para2$"):
        load_weights(_mini(seed=1), path)


def test_missing_head_of_authors_checkpoint_is_an_error(tmp_path):
    state = {k: v for k, v in _authors_state(_mini(seed=0)).items() if not k.startswith("layer6")}
    path = tmp_path / "headless.pth"
    torch.save(state, path)
    with pytest.raises(HqtdError, match="missing keys: head_main.branches.0.bias"):
        load_weights(_mini(seed=1), path)
    # ... unless the heads are explicitly not wanted
    model = _mini(seed=1)
    load_weights(model, path, strict_heads=False)
    assert _equal_states(model, _mini(seed=0), prefix="backbone.")
    assert _equal_states(model, _mini(seed=1), prefix="head_")


def test_four_branch_hqtd_checkpoint_initialises_two_branch_model(tmp_path):
    """`official` (2 branches) starts from source_only's 4-branch checkpoint: branches 0 and 1."""
    path = tmp_path / "four.pt"
    four = _mini(seed=0, branches=4)
    _hqtd_checkpoint(path, _mini(seed=2, branches=4), four)
    model = _mini(seed=1, branches=2)
    load_weights(model, path)
    four_state = four.state_dict()
    assert all(torch.equal(v, four_state[k]) for k, v in model.state_dict().items())


def test_two_branch_hqtd_checkpoint_into_four_branch_model_is_an_error(tmp_path):
    path = tmp_path / "two.pt"
    _hqtd_checkpoint(path, _mini(seed=0, branches=2), _mini(seed=0, branches=2))
    with pytest.raises(HqtdError, match="missing keys: head_aux.branches.2.bias"):
        load_weights(_mini(seed=1, branches=4), path)


def test_wrong_class_count_is_a_shape_error(tmp_path):
    path = tmp_path / "c21.pt"
    _hqtd_checkpoint(path, _mini(seed=0, num_classes=21), _mini(seed=0, num_classes=21))
    with pytest.raises(HqtdError, match="shape mismatch.*head_aux.branches.0.bias \\(21,\\) vs"):
        load_weights(_mini(seed=1, num_classes=19), path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(HqtdError, match=f"^checkpoint not found: {path}$"):
        load_weights(_mini(seed=0), path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("hello")
    with pytest.raises(HqtdError, match="text.pth"):
        load_weights(_mini(seed=0), path)


def test_unknown_format(tmp_path):
    path = tmp_path / "v9.pt"
    torch.save({"format": "hqtd-train-v9", "ema": {}}, path)
    with pytest.raises(HqtdError, match="unsupported checkpoint format 'hqtd-train-v9'"):
        load_weights(_mini(seed=0), path)


def test_to_authors_layout_matches_method_and_round_trips(tmp_path):
    reference = _mini(seed=0)
    exported = to_authors_layout(reference.state_dict())
    assert set(exported) == {_authors_key(k) for k in reference.state_dict()}
    path = tmp_path / "export.pth"
    torch.save(exported, path)
    model = _mini(seed=1)
    load_weights(model, path)
    assert _equal_states(model, reference)


def test_build_model_loads_init(tmp_path):
    reference = _mini(seed=0)
    path = tmp_path / "init.pth"
    torch.save(reference.state_dict(), path)  # a bare hqtd state dict
    torch.manual_seed(5)
    cfg = ModelConfig(
        backbone=Backbone.mini,
        mini_width=8,
        caffe_stride=False,
        input_style=InputStyle.torchvision,
        init=str(path),
    )
    assert _equal_states(build_model(cfg), reference)
