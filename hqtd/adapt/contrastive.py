"""Contrastive losses of METHOD.md §4: pixel level (step 9) and prototype level (step 10).

Both are the same InfoNCE over two views: stack ``Z = [A; B]`` (2N×C), ``S = Z Zᵀ``, exclude the
diagonal; the positive of row k is the same position in the other view, ``π(k) = (k + N) mod 2N``:

    L = (1/2N) Σ_k [ −S_{k,π(k)}/τ + lse_k ],   lse_k = log Σ_{l≠k} exp(S_{kl}/τ).

For the pixel loss 2N is up to 25,600, so S is never materialised: :class:`_PairedInfoNCE`
streams row blocks (block × 2N entries at a time, linear in N). Its gradient: with P the row
softmax of S/τ over l ≠ k (zero diagonal) and E the positive-pair indicator (symmetric),
dL/dS = (P − E)/(2Nτ), and since S = Z Zᵀ,

    dL/dZ = (dL/dS + dL/dSᵀ) Z = [ (P + Pᵀ) Z − 2 Z_π ] / (2Nτ),

where Z_π is Z with its two halves swapped. Row block R of P is known as soon as its row sums are,
so the forward pass computes the gradient on the fly (``P_R Z`` for the rows of R, ``P_Rᵀ Z_R`` for
every row) and the backward pass only scales it: each entry of S is exponentiated once.

Per block the work is three thin matrix products and one in-place ``exp2``:

* ``W_R = exp(S_R/τ − m_R)`` comes out of one product ``[Z_R·log2(e)/τ, −m_R·log2(e)] [Z, 1]ᵀ``
  followed by ``exp2_`` (half the cost of ``exp`` on CPU), with the diagonal zeroed afterwards;
* ``W_R [Z, 1]`` gives ``W_R Z`` and the row sums s_R together (``P_R = W_R / s_R``);
* ``(Z_R / s_R)ᵀ W_R`` accumulates ``(P_Rᵀ Z_R)ᵀ`` into a (C, 2N) buffer.

The shift m_k must keep every ``exp`` finite and normal. By Cauchy–Schwarz
``|S_kl| ≤ ‖z_k‖·max_l ‖z_l‖``, so ``m_k = ‖z_k‖·max_l ‖z_l‖/τ`` bounds row k from above, and from
below by −m_k (by 0 for non-negative vectors such as the probabilities both losses use). When that
range fits the exponent range of the dtype (τ_pix = 0.05 on probabilities spans 20 of fp32's 87)
no max over the row is needed; otherwise the row's true maximum is taken, one more pass per block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hqtd.data.labels import IGNORE

#: Entries of S computed at once on CPU: a block of 4 MiB (fp32) stays in the last-level cache
#: between the products and the ``exp2`` that read it.
CPU_BLOCK_ENTRIES = 2**20
#: On accelerators bigger blocks amortise kernel launches (256 MiB in fp32).
DEVICE_BLOCK_ENTRIES = 2**26
_LOG2E = math.log2(math.e)


def default_block_rows(rows: int, device: torch.device) -> int:
    """Rows of S per block: a fixed number of entries per block, so memory stays linear in N."""
    entries = CPU_BLOCK_ENTRIES if device.type == "cpu" else DEVICE_BLOCK_ENTRIES
    return max(1, entries // rows)


def _row_shifts(z: Tensor, tau: float) -> Tensor | None:
    """The Cauchy–Schwarz upper bounds m_k of the rows of S/τ, or None when ``exp(S/τ − m)`` could
    leave the normal range of ``z.dtype`` (module docstring)."""
    norms = torch.linalg.vector_norm(z, dim=1)
    shifts = norms * norms.max() / tau
    span = shifts.max() * torch.where((z >= 0).all(), 1.0, 2.0)  # one host sync below
    return shifts if float(span) < -math.log(torch.finfo(z.dtype).tiny) else None


def _blockwise_info_nce(
    z: Tensor, tau: float, block_rows: int, with_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row log-sum-exp of S/τ over l ≠ k, and ``(P + Pᵀ) Z`` when ``with_grad``.

    Args:
        z: (2N, C) stacked views, float32 or float64.

    Returns:
        ``(lse, pz)``: (2N,) and (2N, C) (None without ``with_grad``).
    """
    rows = z.shape[0]
    shifts = _row_shifts(z, tau)
    bounded = shifts is not None
    if shifts is None:  # no shift in the product; the row maxima replace these block by block
        shifts = z.new_zeros(rows)
    left = torch.cat([z * (_LOG2E / tau), -_LOG2E * shifts[:, None]], 1)
    right = torch.cat([z, z.new_ones(rows, 1)], 1)  # [Z, 1]
    lse = z.new_empty(rows)
    rows_part = z.new_empty(z.shape) if with_grad else None  # P Z
    cols_part = z.new_zeros(z.shape[1], rows) if with_grad else None  # (Pᵀ Z)ᵀ
    for start in range(0, rows, block_rows):
        stop = min(start + block_rows, rows)
        weights = left[start:stop] @ right.T  # (S/τ − m)·log2(e), (block, 2N)
        if not bounded:
            weights.diagonal(start).fill_(float("-inf"))
            row_max = weights.amax(dim=1, keepdim=True)
            weights -= row_max
            shifts[start:stop] = row_max[:, 0] / _LOG2E
        weights.exp2_()
        weights.diagonal(start).zero_()  # l ≠ k
        if with_grad:
            product = weights @ right  # [W_R Z, s_R]
            sums = product[:, -1:]
            rows_part[start:stop] = product[:, :-1] / sums
            cols_part.addmm_((z[start:stop] / sums).T, weights)
        else:
            sums = weights.sum(dim=1, keepdim=True)
        lse[start:stop] = sums[:, 0].log() + shifts[start:stop]
    pz = rows_part + cols_part.T if with_grad else None
    return lse, pz


class _PairedInfoNCE(torch.autograd.Function):
    """InfoNCE over ``Z = [A; B]`` in row blocks; the gradient is computed in the forward pass."""

    @staticmethod
    def forward(ctx, z: Tensor, tau: float, block_rows: int) -> Tensor:
        rows, half = z.shape[0], z.shape[0] // 2
        with_grad = ctx.needs_input_grad[0]
        z = z.detach()  # the gradient is computed here by hand
        with torch.autocast(device_type=z.device.type, enabled=False):
            lse, pz = _blockwise_info_nce(z, tau, block_rows, with_grad)
            # S_{k,π(k)} is the same for k and π(k): each positive pair counts twice.
            positive = (z[:half] * z[half:]).sum() / tau
            loss = (lse.sum() - 2 * positive) / rows
            if with_grad:
                swapped = torch.cat([z[half:], z[:half]])  # Z_π
                ctx.save_for_backward((pz - 2 * swapped) / (rows * tau))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def paired_info_nce(
    view_a: Tensor, view_b: Tensor, tau: float, block_rows: int | None = None
) -> Tensor:
    """InfoNCE between two aligned views without materialising the 2N×2N similarity matrix.

    Row k of ``view_a`` and row k of ``view_b`` are a positive pair; every other row of either view
    is a negative. Gradients flow into both views. N = 1 gives 0 (the positive is the only term).

    Args:
        view_a: (N, C) vectors of the first view (e.g. strong-view probabilities q^s).
        view_b: (N, C) vectors of the second view (e.g. q^w).
        tau: temperature τ.
        block_rows: rows of S computed at once (memory about block_rows × 2N floats); None
            picks :func:`default_block_rows`.

    Returns:
        Scalar loss, the mean over the 2N rows. Computed in float32 (or float64 if given).
    """
    if view_a.shape != view_b.shape or view_a.dim() != 2 or view_a.shape[0] == 0:
        raise ValueError(
            f"views must be two non-empty (N, C) tensors, got {view_a.shape}, {view_b.shape}"
        )
    z = torch.cat([view_a, view_b])
    if z.dtype != torch.float64:
        z = z.float()  # bf16 log-sum-exp over 25,600 terms would lose the loss entirely
    return _PairedInfoNCE.apply(z, tau, block_rows or default_block_rows(len(z), z.device))


def _pixel_vectors(logits: Tensor) -> Tensor:
    """(B, C, h, w) stride-8 logits -> (B, h·w, C) per-position class probabilities."""
    return logits.flatten(2).transpose(1, 2).softmax(dim=-1)


def pixel_contrastive_loss(
    strong_logits: Tensor, weak_logits: Tensor, tau: float, block_rows: int | None = None
) -> Tensor:
    """Step 9: pixel-level InfoNCE between the strong and weak target views, averaged over images.

    ``q^v_i = softmax(ẑ(x̃^{t,v}))_i`` over all N = h·w grid positions, no confidence mask.

    Args:
        strong_logits: ẑ of the mixed strong target view (B, C, h, w).
        weak_logits: ẑ of the mixed weak target view (B, C, h, w).
        tau: τ_pix.
        block_rows: see :func:`paired_info_nce`.

    Returns:
        Scalar, the mean over the B images of each image's loss.
    """
    strong, weak = _pixel_vectors(strong_logits), _pixel_vectors(weak_logits)
    losses = [paired_info_nce(s, w, tau, block_rows) for s, w in zip(strong, weak, strict=True)]
    return torch.stack(losses).mean()


def class_mean_logits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean logit vector of each class present in ``labels`` (ignore excluded), no class loop.

    Args:
        logits: (N, C') per-position logits (several views may be concatenated along C').
        labels: (N,) int64 class ids, ``IGNORE`` excluded.

    Returns:
        ``(classes, means)``: (K,) sorted class ids present and (K, C') their mean logits.
    """
    # One bin per class id up to the largest present, plus a last bin collecting the ignored
    # positions: no boolean selection of the (N, C') logits, no sort.
    valid = labels != IGNORE
    bins = int(torch.where(valid, labels, -1).max()) + 2
    index = torch.where(valid, labels, bins - 1)
    # Contiguous rows: index_add on the transposed view is several times slower on CPU.
    sums = logits.new_zeros(bins, logits.shape[1]).index_add(0, index, logits.contiguous())
    counts = torch.bincount(index, minlength=bins)
    classes = counts[:-1].nonzero()[:, 0]  # sorted ids present
    return classes, sums[classes] / counts[classes, None].to(logits.dtype)


def prototype_contrastive_loss(
    strong_logits: Tensor,
    weak_logits: Tensor,
    labels: Tensor,
    tau: float,
    first_image_only: bool = False,
) -> Tensor:
    """Step 10: prototype-level InfoNCE between the strong and weak target views.

    Per image, for each class c present in y^c: ``P^v_c = softmax(mean of ẑ(x̃^{t,v}) over c)``;
    InfoNCE over ``[P^s; P^w]`` with ``P^w_c`` the positive of ``P^s_c`` and vice versa.
    An image with one class (K = 1) has two rows whose only non-diagonal entry is the positive: its
    loss is exactly 0 (and its gradient too). An image with no labelled pixel (K = 0) has no loss.
    Both still count in the divisor B, as in the authors' code (it divides each image's term by B).

    Args:
        strong_logits: ẑ of the mixed strong target view (B, C, h, w).
        weak_logits: ẑ of the mixed weak target view (B, C, h, w).
        labels: contrastive labels y^c (B, h, w), ``IGNORE`` excluded.
        tau: τ_proto.
        first_image_only: the authors' quirk: only image 0 contributes (still divided by B).

    Returns:
        Scalar: (1/B) Σ_b L_b over the contributing images.
    """
    num_classes = strong_logits.shape[1]
    both = torch.cat([strong_logits, weak_logits], dim=1).flatten(2).transpose(1, 2)  # (B, N, 2C)
    both = both.to(torch.promote_types(both.dtype, torch.float32))  # class sums in bf16 lose digits
    images = range(1 if first_image_only else both.shape[0])
    total = strong_logits.new_zeros(())
    for image in images:
        classes, means = class_mean_logits(both[image], labels[image].flatten())
        if classes.numel() > 0:
            prototypes_s = means[:, :num_classes].softmax(dim=1)
            prototypes_w = means[:, num_classes:].softmax(dim=1)
            total = total + paired_info_nce(prototypes_s, prototypes_w, tau)
    return total / both.shape[0]
