"""Steps 9-10: blockwise InfoNCE vs the literal dense formula, prototypes vs a class loop."""

import math

import pytest
import torch
from autograd_checks import assert_same_value_and_grads

from hqtd.adapt.contrastive import (
    class_mean_logits,
    paired_info_nce,
    pixel_contrastive_loss,
    prototype_contrastive_loss,
)

IGNORE = 255


def dense_info_nce(view_a, view_b, tau):
    """METHOD.md step 9 literally: mean_k −log(exp(S_kπ(k)/τ) / Σ_{l≠k} exp(S_kl/τ)), S = Z Zᵀ."""
    z = torch.cat([view_a, view_b])
    rows, half = z.shape[0], view_a.shape[0]
    similarity = z @ z.T
    partner = torch.cat([torch.arange(half, rows), torch.arange(half)])
    off_diagonal = ~torch.eye(rows, dtype=torch.bool)
    numerator = torch.exp(similarity[torch.arange(rows), partner] / tau)
    denominator = (torch.exp(similarity / tau) * off_diagonal).sum(dim=1)
    return (-torch.log(numerator / denominator)).mean()


def _probability_views(n, c, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n, c, generator=gen, dtype=torch.float64) * 3
    probs = logits.softmax(dim=-1)
    return probs[0].clone().requires_grad_(), probs[1].clone().requires_grad_()


def test_hand_computed_one_hot_views():
    # Z = [e1, e2, e1, e2]: row 0 sees S = (·, 0, 1, 0); the positive (row 2) scores 1/τ and the
    # two negatives 0, so every row's loss is −1/τ + log(e^{1/τ} + 2) = log(1 + 2e^{−1/τ}).
    eye = torch.eye(2, dtype=torch.float64)
    assert paired_info_nce(eye, eye, tau=1.0).item() == pytest.approx(
        0.5514447139320511
    )  # log(1+2/e)
    assert paired_info_nce(eye, eye, tau=0.5).item() == pytest.approx(
        0.23954476622188453
    )  # log(1+2/e²)


def test_single_position_has_zero_loss():
    # N = 1: each row's only non-diagonal entry is its positive, so −S/τ + log e^{S/τ} = 0.
    a = torch.tensor([[0.2, 0.8]], dtype=torch.float64)
    b = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    assert paired_info_nce(a, b, tau=0.05).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [7, 100, 1000])
@pytest.mark.parametrize("c", [2, 19])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1 / 7])
def test_blockwise_matches_dense_value_and_gradients(n, c, tau):
    a, b = _probability_views(n, c, seed=n * 100 + c)
    expected = dense_info_nce(a, b, tau)
    grads_expected = torch.autograd.grad(expected, (a, b))
    for block_rows in (5, 64, 4 * n):  # several blocks with a remainder, and one block
        got = paired_info_nce(a, b, tau, block_rows=block_rows)
        grads = torch.autograd.grad(got, (a, b))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
        for grad, grad_expected in zip(grads, grads_expected, strict=True):
            torch.testing.assert_close(grad, grad_expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("scale", "tau"), [(3.0, 0.05), (1.0, 0.01)])
def test_vectors_beyond_the_shift_bound_take_the_row_maximum(dtype, scale, tau):
    # Signed vectors of norm ~13 at τ = 0.05 (and unit vectors at τ = 0.01) span more than the
    # exponent range: exp(S/τ) overflows, so compare with a log-sum-exp form of the dense formula.
    gen = torch.Generator().manual_seed(11)
    a = (scale * torch.randn(150, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    b = (scale * torch.randn(150, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    z = torch.cat([a, b])
    logits = (z @ z.T / tau).masked_fill(torch.eye(300, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(150, 300), torch.arange(150)])
    expected = (torch.logsumexp(logits, 1) - logits[torch.arange(300), partner]).mean()
    grads_expected = torch.autograd.grad(expected, (a, b))
    a_, b_ = a.detach().to(dtype).requires_grad_(), b.detach().to(dtype).requires_grad_()
    got = paired_info_nce(a_, b_, tau, block_rows=64)
    grads = torch.autograd.grad(got, (a_, b_))
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=0)
    for grad, grad_expected in zip(grads, grads_expected, strict=True):
        scale_ = grad_expected.abs().max().item()
        torch.testing.assert_close(grad.double(), grad_expected, rtol=rtol, atol=rtol * scale_)


def test_gradcheck_against_finite_differences():
    a, b = _probability_views(6, 3, seed=3)
    assert torch.autograd.gradcheck(lambda x, y: paired_info_nce(x, y, 0.3, block_rows=4), (a, b))


def test_upstream_gradient_is_scaled():
    a, b = _probability_views(9, 4, seed=4)
    (grad_a,) = torch.autograd.grad(2.5 * paired_info_nce(a, b, 0.2, block_rows=4), (a,))
    (ref_a,) = torch.autograd.grad(2.5 * dense_info_nce(a, b, 0.2), (a,))
    torch.testing.assert_close(grad_a, ref_a, rtol=1e-5, atol=1e-12)


def test_float32_input_is_close_to_float64_reference():
    a, b = _probability_views(300, 19, seed=5)
    got = paired_info_nce(a.detach().float(), b.detach().float(), 0.05, block_rows=128)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(dense_info_nce(a, b, 0.05).item(), rel=1e-5)


def test_mismatched_views_are_rejected():
    with pytest.raises(ValueError, match="views"):
        paired_info_nce(torch.zeros(3, 2), torch.zeros(4, 2), 0.1)


def test_pixel_loss_is_the_mean_over_images_of_softmax_vectors():
    gen = torch.Generator().manual_seed(0)
    strong = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weak = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    got = pixel_contrastive_loss(strong, weak, tau=0.05, block_rows=7)
    per_image = [
        dense_info_nce(
            strong[i].reshape(5, 12).T.softmax(dim=1), weak[i].reshape(5, 12).T.softmax(dim=1), 0.05
        )
        for i in range(2)
    ]
    expected = (per_image[0] + per_image[1]) / 2
    assert_same_value_and_grads(got, expected, (strong, weak))


def test_class_mean_logits_hand_computed():
    # Positions: labels (1, 255, 1, 3); logits rows (1,2), (9,9), (3,4), (5,0).
    # Class 1 averages rows 0 and 2 -> (2, 3); class 3 is row 3 -> (5, 0); ignore is dropped.
    logits = torch.tensor([[1.0, 2.0], [9.0, 9.0], [3.0, 4.0], [5.0, 0.0]])
    classes, means = class_mean_logits(logits, torch.tensor([1, IGNORE, 1, 3]))
    assert classes.tolist() == [1, 3]
    assert means.tolist() == [[2.0, 3.0], [5.0, 0.0]]


def loop_prototype_loss(strong, weak, labels, tau, first_image_only=False):
    """Reference for step 10: a Python loop over images and over the classes present."""
    batch = strong.shape[0]
    total = 0.0
    for i in range(1 if first_image_only else batch):
        protos_s, protos_w = [], []
        for cls in labels[i].unique().tolist():
            if cls == IGNORE:
                continue
            where = labels[i] == cls
            protos_s.append(strong[i][:, where].mean(dim=1).softmax(dim=0))
            protos_w.append(weak[i][:, where].mean(dim=1).softmax(dim=0))
        if protos_s:
            total = total + dense_info_nce(torch.stack(protos_s), torch.stack(protos_w), tau)
    return total / batch


def _proto_inputs(seed, batch=3, classes=5, size=(6, 7)):
    gen = torch.Generator().manual_seed(seed)
    strong = torch.randn(
        batch, classes, *size, generator=gen, dtype=torch.float64, requires_grad=True
    )
    weak = torch.randn(
        batch, classes, *size, generator=gen, dtype=torch.float64, requires_grad=True
    )
    labels = torch.randint(0, classes, (batch, *size), generator=gen)
    labels[torch.rand(batch, *size, generator=gen) < 0.3] = IGNORE
    return strong, weak, labels


@pytest.mark.parametrize("first_image_only", [False, True])
@pytest.mark.parametrize("tau", [1 / 7, 0.5])
def test_prototype_loss_matches_class_loop(first_image_only, tau):
    strong, weak, labels = _proto_inputs(seed=int(tau * 100))
    labels[1, :3] = 4  # a class present in one image only
    got = prototype_contrastive_loss(strong, weak, labels, tau, first_image_only)
    expected = loop_prototype_loss(strong, weak, labels, tau, first_image_only)
    assert_same_value_and_grads(got, expected, (strong, weak))


def test_prototype_single_class_and_empty_images():
    # Image 0: one class (K = 1) -> loss exactly 0. Image 1: all ignored (K = 0) -> no term.
    # Image 2: two classes. The total is (0 + L_2) / 3.
    strong, weak, labels = _proto_inputs(seed=7)
    labels[0] = 2
    labels[1] = IGNORE
    labels[2] = torch.where(labels[2] == IGNORE, 0, labels[2] % 2)
    got = prototype_contrastive_loss(strong, weak, labels, 1 / 7)
    third = loop_prototype_loss(strong[2:], weak[2:], labels[2:], 1 / 7)  # L_2 / 1
    assert got.item() == pytest.approx(third.item() / 3, rel=1e-12)
    assert third.item() > 0
    only_single = prototype_contrastive_loss(strong[:2], weak[:2], labels[:2], 1 / 7)
    assert only_single.item() == pytest.approx(0.0, abs=1e-12)


def test_prototype_two_classes_hand_computed():
    # One image, 2 classes, C = 2, τ = 1. Class 0 has strong and weak logits (0, 0) -> P = (½, ½);
    # class 1 has logits (L, 0) with L = log 3 -> P = (¾, ¼) in both views.
    # Z = [p, q, p, q] with p·p = ½, p·q = ½, q·q = 10/16. Row of p: positive p·p = ½ and both
    # negatives p·q = ½, so −½ + log(3e^{½}) = log 3. Row of q: positive q·q = 5/8, negatives
    # q·p = ½ twice: −5/8 + log(e^{5/8} + 2e^{½}). Mean of the four rows.
    log3 = math.log(3.0)
    strong = torch.tensor([[[0.0, log3]], [[0.0, 0.0]]], dtype=torch.float64)[None]  # (1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    got = prototype_contrastive_loss(strong, strong.clone(), labels, tau=1.0)
    row_q = -5 / 8 + math.log(math.exp(5 / 8) + 2 * math.exp(0.5))
    assert got.item() == pytest.approx((2 * log3 + 2 * row_q) / 4, rel=1e-12)
