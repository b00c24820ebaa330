"""Contrastive losses of METHOD.md §4: pixel level (step 9) and prototype level (step 10).

Both are the same InfoNCE over two views: stack ``Z = [A; B]`` (2N×C), ``S = Z Zᵀ``, exclude the
diagonal; the positive of row k is the same position in the other view, ``π(k) = (k + N) mod 2N``:

    L = (1/2N) Σ_k [ −S_{k,π(k)}/τ + log Σ_{l≠k} exp(S_{kl}/τ) ].

For the pixel loss 2N is up to 25,600, so S is never materialised: :class:`_PairedInfoNCE`
streams row blocks (block × 2N entries at a time, linear in N) and recomputes each block in the
backward pass.
Its gradient: with P the row softmax of S/τ over l ≠ k (zero diagonal) and E the positive-pair
indicator (symmetric), dL/dS = (P − E)/(2Nτ), and since S = Z Zᵀ,

    dL/dZ = (dL/dS + dL/dSᵀ) Z = [ (P + Pᵀ) Z − 2 Z_π ] / (2Nτ),

where Z_π is Z with its two halves swapped. Row block R contributes ``P_R Z`` to the rows of R and
``P_Rᵀ Z_R`` to every row; the per-row log-sum-exp saved by the forward pass gives ``P_R`` back
without a second reduction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hqtd.data.labels import IGNORE

#: Rows of S processed at once: peak extra memory is about 2 × block × 2N floats.
DEFAULT_BLOCK_ROWS = 1024


def _block_logits(z: Tensor, start: int, stop: int, tau: float) -> Tensor:
    """Rows ``start:stop`` of S/τ (block × 2N) with the diagonal set to −inf (excluded)."""
    logits = z[start:stop] @ z.T / tau
    rows = torch.arange(stop - start, device=z.device)
    logits[rows, rows + start] = float("-inf")
    return logits


class _PairedInfoNCE(torch.autograd.Function):
    """InfoNCE over ``Z = [A; B]`` computed in row blocks (module docstring for the gradient)."""

    @staticmethod
    def forward(ctx, z: Tensor, tau: float, block_rows: int) -> Tensor:
        rows, half = z.shape[0], z.shape[0] // 2
        with torch.autocast(device_type=z.device.type, enabled=False):
            lse = torch.cat(
                [
                    torch.logsumexp(_block_logits(z, start, min(start + block_rows, rows), tau), 1)
                    for start in range(0, rows, block_rows)
                ]
            )
            # S_{k,π(k)} is the same for k and π(k): each positive pair counts twice.
            positive = (z[:half] * z[half:]).sum() / tau
            loss = (lse.sum() - 2 * positive) / rows
        ctx.save_for_backward(z, lse)
        ctx.tau, ctx.block_rows = tau, block_rows
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        z, lse = ctx.saved_tensors
        tau, block_rows = ctx.tau, ctx.block_rows
        rows = z.shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            grad = torch.zeros_like(z)
            for start in range(0, rows, block_rows):
                stop = min(start + block_rows, rows)
                probs = torch.exp(_block_logits(z, start, stop, tau) - lse[start:stop, None])
                grad[start:stop] += probs @ z  # P Z, rows of this block
                grad += probs.T @ z[start:stop]  # Pᵀ Z, this block's columns of P
            swapped = torch.cat([z[rows // 2 :], z[: rows // 2]])  # Z_π
            grad = (grad - 2 * swapped) * (grad_output / (rows * tau))
        return grad, None, None


def paired_info_nce(
    view_a: Tensor, view_b: Tensor, tau: float, block_rows: int = DEFAULT_BLOCK_ROWS
) -> Tensor:
    """InfoNCE between two aligned views without materialising the 2N×2N similarity matrix.

    Row k of ``view_a`` and row k of ``view_b`` are a positive pair; every other row of either view
    is a negative. Gradients flow into both views. N = 1 gives 0 (the positive is the only term).

    Args:
        view_a: (N, C) vectors of the first view (e.g. strong-view probabilities q^s).
        view_b: (N, C) vectors of the second view (e.g. q^w).
        tau: temperature τ.
        block_rows: rows of S computed at once (memory about 2 × block_rows × 2N floats).

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
    return _PairedInfoNCE.apply(z, tau, block_rows)


def _pixel_vectors(logits: Tensor) -> Tensor:
    """(B, C, h, w) stride-8 logits -> (B, h·w, C) per-position class probabilities."""
    return logits.flatten(2).transpose(1, 2).softmax(dim=-1)


def pixel_contrastive_loss(
    strong_logits: Tensor, weak_logits: Tensor, tau: float, block_rows: int = DEFAULT_BLOCK_ROWS
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
    valid = labels != IGNORE
    classes, inverse = torch.unique(labels[valid], return_inverse=True)
    sums = logits.new_zeros(classes.numel(), logits.shape[1]).index_add(0, inverse, logits[valid])
    counts = torch.bincount(inverse, minlength=classes.numel()).to(logits.dtype)
    return classes, sums / counts[:, None]


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
