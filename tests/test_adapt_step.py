"""The adaptation iteration (METHOD.md §4 step 11 composition) and the supervised stages.

A tiny stand-in segmenter with the agreed ``SegOutput`` keeps these tests fast and its predictions
sharp enough that the confident mask M^t is neither empty nor full; one test runs every variant on
the real mini DeepLab-V2.
"""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hqtd.adapt.ema import ModelEMA
from hqtd.adapt.pseudo import confident_labels
from hqtd.adapt.step import (
    adaptation_step,
    cross_entropy,
    loss_weights,
    mixed_target_views,
    supervised_step,
    total_loss,
)
from hqtd.config import Augmentation, MethodConfig, PseudoLabelModel, load_config
from hqtd.models.deeplabv2 import SegOutput, build_model

IGNORE = 255
NUM_CLASSES = 8
CROP = 32
VARIANTS = ("baseline", "t2s", "pixel", "proto", "full", "full_edge", "official", "official_edge")
BASE_TERMS = {"src", "src_aux", "st", "st_aux", "total"}
EXPECTED_TERMS = {
    "source_only": {"src", "src_aux", "total"},
    "baseline": BASE_TERMS,
    "t2s": BASE_TERMS | {"mix"},
    "pixel": BASE_TERMS | {"pix"},
    "proto": BASE_TERMS | {"proto"},
    "full": BASE_TERMS | {"mix", "pix", "proto"},
    "full_edge": BASE_TERMS | {"mix", "pix", "proto", "st_edge", "st_aux_edge", "mix_edge"},
    "official": BASE_TERMS | {"mix", "pix", "proto"},
    "official_edge": BASE_TERMS
    | {"mix", "pix", "proto", "st_edge", "st_aux_edge", "mix_edge", "mix_aux"},
}


class TinySegmenter(nn.Module):
    """Conv + BN features pooled to stride 8, 1x1 heads; main logits scaled to be confident."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.main = nn.Conv2d(8, num_classes, 1)
        self.aux = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor, aux: bool = True) -> SegOutput:
        features = F.avg_pool2d(self.features(x), 8, ceil_mode=True)
        main_small, aux_small = 30.0 * self.main(features), self.aux(features)
        size = x.shape[-2:]
        main = F.interpolate(main_small, size=size, mode="bilinear", align_corners=False)
        if not aux:
            return SegOutput(main, None, main_small)
        aux_logits = F.interpolate(aux_small, size=size, mode="bilinear", align_corners=False)
        return SegOutput(main, aux_logits, main_small)


def _batches():
    gen = torch.Generator().manual_seed(123)
    # Source labels: vertical stripes 4 px wide cycling through classes ≤ 4 and > 4, so every crop
    # holds ClassMix candidates and classes the quirk can shift onto; a few ignored pixels.
    stripes = torch.tensor([0, 5, 2, 6, 1, 7, 3, 5, 4, 6])[(torch.arange(64) // 4) % 10]
    label = stripes.expand(2, 48, 64).clone()
    label[:, :4] = IGNORE
    label[1] = label[1].roll(9, dims=1)
    source = {"image": torch.rand(2, 3, 48, 64, generator=gen), "label": label}
    # Target images: 8x8 blocks of random colours, so the stride-8 features (and the confidence)
    # vary from block to block.
    blocks = torch.rand(2, 3, 5, 10, generator=gen)
    target = {"image": F.interpolate(blocks, size=(40, 80), mode="nearest")}
    return source, target


def step_settings(cfg) -> tuple[MethodConfig, int, float]:
    """What :func:`adaptation_step` takes of a config: the method, crop size and aux weight."""
    return cfg.method, cfg.benchmark.crop_size, cfg.train.aux_weight


def _config(variant: str, **method_changes):
    cfg = load_config([f"method={variant}", "run_dir=unused"])
    cfg.benchmark.crop_size = CROP
    cfg.method = replace(cfg.method, **method_changes)
    return cfg


def _run(cfg, seed=0, ema_shift=0.0):
    """One step from a fixed model state; returns the result and the student's gradients."""
    torch.manual_seed(0)
    student = TinySegmenter().train()
    ema = ModelEMA(student)
    with torch.no_grad():
        for param in ema.module.parameters():
            param.add_(ema_shift)
    source, target = _batches()
    generator = torch.Generator().manual_seed(seed)
    result = adaptation_step(student, ema, source, target, *step_settings(cfg), generator)
    result.loss.backward()
    return result, [param.grad.clone() for param in student.parameters()]


def test_fixture_has_partly_confident_target_predictions():
    # Without this the t2s and proto terms would be vacuous: M^t must be neither empty nor full.
    torch.manual_seed(0)
    student = TinySegmenter().train()
    source, target = _batches()
    views = mixed_target_views(
        student, source, target, MethodConfig(name="x"), CROP, torch.Generator().manual_seed(0)
    )
    assert views.source_mask.any() and not views.source_mask.all()
    mask, _ = confident_labels(student(views.weak).main.softmax(dim=1), 0.95)
    assert 0.05 < mask.float().mean().item() < 0.95


@pytest.mark.parametrize("variant", [*VARIANTS, "source_only"])
def test_every_variant_runs_is_finite_deterministic_and_has_its_terms(variant):
    cfg = _config(variant)
    first, grads_first = _run(cfg)
    second, grads_second = _run(cfg)
    assert set(first.terms) == EXPECTED_TERMS[variant]
    assert all(torch.isfinite(torch.tensor(v)) for v in first.terms.values())
    assert first.terms == second.terms
    for a, b in zip(grads_first, grads_second, strict=True):
        assert torch.equal(a, b)
    assert all(g.abs().sum() > 0 for g in grads_first)  # every parameter receives gradient


def test_total_is_the_weighted_sum_of_the_terms():
    result, _ = _run(_config("full_edge"))
    weights = loss_weights(_config("full_edge").method, aux_weight=0.1)
    expected = sum(weights[name] * value for name, value in result.terms.items() if name != "total")
    assert result.terms["total"] == pytest.approx(expected, rel=1e-6)
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    assert result.terms["st_edge"] > 0 and result.terms["mix_edge"] > 0  # the bands are not empty


def test_loss_weights_hand_computed():
    method = MethodConfig(name="x", lambda_st=0.1, lambda_aux=0.2, lambda_mix=0.3, lambda_cl=0.01)
    weights = loss_weights(method, aux_weight=0.5)
    expected = {
        "src": 1.0,
        "src_aux": 0.5,
        "st": 0.1,
        "st_aux": 0.1 * 0.2,
        "mix": 0.3,
        "pix": 0.01,
        "proto": 0.01,
        "st_edge": 0.1,
        "st_aux_edge": 0.1 * 0.2,
        "mix_edge": 0.3 * 0.3,
        "mix_aux": 0.1 * 0.2 * 0.3,
    }
    assert weights == pytest.approx(expected)
    terms = {"src": torch.tensor(2.0), "st": torch.tensor(10.0), "mix_edge": torch.tensor(100.0)}
    assert total_loss(terms, weights).item() == pytest.approx(2.0 + 1.0 + 9.0)


def test_switches_leave_the_other_terms_unchanged():
    # Same seed: the shared terms do not depend on which other terms are switched on.
    results = {
        variant: _run(_config(variant))[0].terms
        for variant in ("baseline", "t2s", "full", "full_edge")
    }
    for variant in ("t2s", "full", "full_edge"):
        for name in ("src", "src_aux", "st", "st_aux"):
            assert results[variant][name] == results["baseline"][name]
    assert results["full"]["mix"] == results["t2s"]["mix"]
    # §5 changes the t2s image (M^t of the unmixed crop, united with M^s).
    assert results["full_edge"]["mix"] != results["full"]["mix"]


@pytest.mark.parametrize(
    ("quirk", "changed"),
    [
        ("quirk_t2s_first_image", {"mix"}),
        ("quirk_proto_first_image", {"proto"}),
        ("quirk_classmix_offset", {"st", "st_aux", "mix", "pix", "proto"}),
    ],
)
def test_each_quirk_changes_exactly_its_terms(quirk, changed):
    plain = _run(_config("full"))[0].terms
    quirky = _run(_config("full", **{quirk: True}))[0].terms
    differing = {name for name in plain if name != "total" and plain[name] != quirky[name]}
    assert differing == changed


def test_pseudo_labels_from_the_ema_model():
    student_labels = _run(_config("baseline"))[0].terms
    ema_labels = _run(_config("baseline", pseudo_label_model=PseudoLabelModel.ema), ema_shift=0.05)[
        0
    ].terms
    assert ema_labels["src"] == student_labels["src"]
    assert ema_labels["st"] != student_labels["st"]  # ŷ^t came from the other model


def test_every_variant_runs_on_the_mini_deeplab():
    cfg = load_config(["method=full_edge", "run_dir=unused"])
    cfg.benchmark.crop_size = CROP
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_classes=NUM_CLASSES, mini_width=8)).train()
    ema = ModelEMA(model)
    source, target = _batches()
    for variant in VARIANTS:
        cfg.method = _config(variant).method
        result = adaptation_step(
            copy.deepcopy(model),
            ema,
            source,
            target,
            *step_settings(cfg),
            torch.Generator().manual_seed(0),
        )
        assert set(result.terms) == EXPECTED_TERMS[variant]
        assert torch.isfinite(result.loss)


def test_cross_entropy_ignores_255_and_is_zero_without_labels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=gen)
    target = torch.randint(0, 4, (2, 3, 3), generator=gen)
    target[0, 0] = IGNORE
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(cross_entropy(logits, target), expected)
    assert cross_entropy(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_supervised_step_is_main_plus_weighted_aux():
    torch.manual_seed(0)
    model = TinySegmenter()
    source, _ = _batches()
    result = supervised_step(model, source, aux_weight=0.1)
    out = model(source["image"])
    main = F.cross_entropy(out.main, source["label"], ignore_index=IGNORE)
    aux = F.cross_entropy(out.aux, source["label"], ignore_index=IGNORE)
    assert set(result.terms) == {"ce", "ce_aux", "total"}
    assert result.terms["ce"] == pytest.approx(main.item(), rel=1e-6)
    assert result.loss.item() == pytest.approx((main + 0.1 * aux).item(), rel=1e-6)


def test_full_edge_runs_under_bf16_autocast():
    torch.manual_seed(0)
    student = TinySegmenter().train()
    source, target = _batches()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        settings = step_settings(_config("full_edge"))
        result = adaptation_step(
            student, ModelEMA(student), source, target, *settings, torch.Generator()
        )
    result.loss.backward()
    assert result.loss.dtype == torch.float32
    assert set(result.terms) == EXPECTED_TERMS["full_edge"]
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())


def test_official_with_the_authors_augmentation_is_deterministic_and_changes_only_the_views():
    cfg = _config("official", augmentation=Augmentation.authors)
    first, grads_first = _run(cfg)
    second, grads_second = _run(cfg)
    assert set(first.terms) == EXPECTED_TERMS["official"]
    assert all(torch.isfinite(torch.tensor(v)) for v in first.terms.values())
    assert first.terms == second.terms
    for a, b in zip(grads_first, grads_second, strict=True):
        assert torch.equal(a, b)
    default, _ = _run(_config("official", augmentation=Augmentation.torchvision))
    assert first.terms["src"] == default.terms["src"]  # step 1 sees the full images, no views
    assert first.terms["st"] != default.terms["st"]
