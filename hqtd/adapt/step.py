"""One training iteration: the supervised stages (METHOD.md §3) and the adaptation step (§4, §5).

:func:`adaptation_step` composes the per-step functions of this package in the authors' order:

    1  L_src on the full source images                       forward: source (grad)
    2  weak/strong 512² views of source and target (:mod:`hqtd.adapt.views`)
    3  ŷ^t on the full target images, cropped like W          forward: target (no grad)
    4  ClassMix: paste source classes into both target views
    7  L_st, L_st,aux on the mixed strong view                forward: x̃^{t,s} (grad)
    5  p^w on the mixed weak view → M^t, y^w, y^{w,aux}       forward: x̃^{t,w} (grad if 9/10 on)
    §5 M^t of the unmixed weak crop                          forward: x^{t,w} (no grad, edge only)
    6  L_mix on the target→source image                       forward: x^{ts} (grad)
    8-10 y^c, L_pix, L_proto from the stride-8 logits ẑ of the two mixed views
    11 the weighted total (:func:`loss_weights`)

``method.quirk_edge_code`` (with ``method.edge``) reproduces the authors' edge code
(``main_edge_enhance.py``, METHOD.md §8.4): y^c takes the unmixed crop's labels in place of y^w (a),
an aux-head CE on x^{ts} is added (b), and a band term is dropped for the whole batch when one
image's band is empty (c).

Each forward pass is its own call, as in the authors' code: BatchNorm trains with batch statistics,
so concatenating e.g. x̃^{t,s} and x^{ts} into one call would normalise each with the statistics of
both and change the method. The weak view's ẑ is computed once and serves steps 5, 7, 9 and 10; it
only carries a graph when a contrastive loss needs it (the CE targets derived from it are detached).
The no-grad pseudo-label passes (step 3 and §5) use the EMA copy when
``method.pseudo_label_model`` is ``ema``; p^w (step 5) always comes from the student, whose gradient
the contrastive losses need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqtd.adapt.contrastive import pixel_contrastive_loss, prototype_contrastive_loss
from hqtd.adapt.edges import boundary_band
from hqtd.adapt.ema import ModelEMA
from hqtd.adapt.mixing import classmix_masks, contrastive_labels, mix, target_to_source
from hqtd.adapt.pseudo import aux_pseudo_labels, confident_labels, pseudo_labels
from hqtd.adapt.views import Views, make_views
from hqtd.config import MethodConfig, PseudoLabelModel
from hqtd.data.labels import IGNORE

if TYPE_CHECKING:
    from hqtd.models.deeplabv2 import SegOutput


class StepResult(NamedTuple):
    """What a training step returns.

    Attributes:
        loss: the total loss, a scalar tensor with gradient (the caller runs backward).
        terms: unweighted values of every loss term computed, plus ``"total"``.
    """

    loss: Tensor
    terms: dict[str, float]


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean pixel CE over the non-ignored pixels; 0 when every pixel is ignored (e.g. empty band).

    Args:
        logits: (B, C, H, W).
        target: (B, H, W) int64 with ``IGNORE`` = 255.
    """
    total = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def _result(loss: Tensor, terms: dict[str, Tensor]) -> StepResult:
    """Pack the loss and its terms; one device sync for all the floats (float64 holds fp32 and
    bf16 values exactly and keeps a float64 step's terms whole)."""
    names = [*terms, "total"]
    values = torch.stack([value.detach().double() for value in (*terms.values(), loss)]).tolist()
    return StepResult(loss, dict(zip(names, values, strict=True)))


def supervised_terms(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Step 1 (and the supervised stages, METHOD.md §3.1): CE of the main and of the aux head on a
    labelled batch, ``(CE(z(x), y), CE(a(x), y))`` (L_src and L_src,aux in the adaptation step).

    Args:
        model: returns ``SegOutput(main, aux, main_small)`` for (B, 3, H, W) images in [0, 1].
        batch: ``image`` (B, 3, H, W) float, ``label`` (B, H, W) int64 (255 = ignore).
    """
    out = model(batch["image"])
    return cross_entropy(out.main, batch["label"]), cross_entropy(out.aux, batch["label"])


def supervised_step(model: nn.Module, batch: dict[str, Tensor], aux_weight: float) -> StepResult:
    """Source-only / oracle stages (METHOD.md §3.1): ``CE(z(x), y) + aux_weight·CE(a(x), y)``.

    Args:
        model, batch: as :func:`supervised_terms`.
        aux_weight: weight of the aux head (0.1).

    Returns:
        The loss and the terms ``ce``, ``ce_aux``, ``total``.
    """
    ce, ce_aux = supervised_terms(model, batch)
    return _result(ce + aux_weight * ce_aux, {"ce": ce, "ce_aux": ce_aux})


def loss_weights(method: MethodConfig, aux_weight: float) -> dict[str, float]:
    """Step 11 (and §5): the weight of every loss term in the total.

    ``L = L_src + a·L_src,aux + λ_st(L_st + λ_aux L_st,aux) + λ_mix L_mix + λ_cl(L_pix + L_proto)``
    where a = ``train.aux_weight``; edge enhancement adds
    ``λ_st(L_st,edge + λ_aux L_st,aux,edge) + λ_mix·λ_mix L_mix,edge``, and the authors' edge code
    (§8.4b) ``λ_st·λ_aux·λ_mix L_mix,aux``.
    """
    return {
        "src": 1.0,
        "src_aux": aux_weight,
        "st": method.lambda_st,
        "st_aux": method.lambda_st * method.lambda_aux,
        "mix": method.lambda_mix,
        "pix": method.lambda_cl,
        "proto": method.lambda_cl,
        "st_edge": method.lambda_st,
        "st_aux_edge": method.lambda_st * method.lambda_aux,
        "mix_edge": method.lambda_mix * method.lambda_mix,
        "mix_aux": method.lambda_st * method.lambda_aux * method.lambda_mix,
    }


def total_loss(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Step 11: the weighted sum of the terms that were computed."""
    return sum(weights[name] * value for name, value in terms.items())


class MixedTarget(NamedTuple):
    """Steps 2-4: the source views, the ClassMix mask and the mixed target views."""

    source: Views  # x^{s,w}, x^{s,s}, y^s
    target_weak: Tensor  # x^{t,w} before pasting (B, 3, S, S)
    source_mask: Tensor  # M^s (B, S, S) bool
    weak: Tensor  # x̃^{t,w}
    strong: Tensor  # x̃^{t,s}
    label: Tensor  # ỹ^t (B, S, S)


def mixed_target_views(
    teacher: nn.Module,
    source: dict[str, Tensor],
    target: dict[str, Tensor],
    method: MethodConfig,
    crop_size: int,
    generator: torch.Generator,
) -> MixedTarget:
    """Steps 2-4: crop both batches, pseudo-label the full target images, ClassMix source→target.

    ``x̃^{t,v} = M^s·x^{s,w} + (1−M^s)·x^{t,v}`` for v ∈ {w, s}, ``ỹ^t = M^s·y^s + (1−M^s)·ŷ^t``.
    Without self-training M^s is empty and the target views are left as they are.
    """
    mode = method.augmentation
    src = make_views(source["image"], source["label"], crop_size, generator, mode)
    with torch.no_grad():
        target_logits = teacher(target["image"], aux=False).main  # (B, C, H', W')
    tgt = make_views(target["image"], target_logits, crop_size, generator, mode)
    # Step 3 on the crop: nearest sampling takes one source pixel for all channels, so the argmax
    # of the cropped logits is the crop of the full ŷ^t, computed on S² pixels instead of H'·W'.
    target_label = pseudo_labels(tgt.label)
    if method.self_training:
        source_mask = classmix_masks(src.label, generator, method.quirk_classmix_offset)
    else:
        source_mask = torch.zeros_like(src.label, dtype=torch.bool)
    return MixedTarget(
        source=src,
        target_weak=tgt.weak,
        source_mask=source_mask,
        weak=mix(source_mask, src.weak, tgt.weak),
        strong=mix(source_mask, src.weak, tgt.strong),
        label=mix(source_mask, src.label, target_label),
    )


def loss_band(band: Tensor, authors_skip: bool) -> Tensor:
    """The §5 band a CE is restricted to; with ``authors_skip`` (§8.4c) emptied for the whole batch
    as soon as one image's band is empty, as the authors' edge code skips the band term then.

    Args:
        band: (B, H, W) bool.

    Returns:
        (B, H, W) bool (a CE restricted to an empty band is 0, see :func:`cross_entropy`).
    """
    if authors_skip and not band.flatten(1).any(dim=1).all():
        return torch.zeros_like(band)
    return band


def self_training_terms(
    out_strong: SegOutput, aux_label: Tensor, views: MixedTarget, method: MethodConfig
) -> dict[str, Tensor]:
    """Step 7 (and the §5 band of M^s): CE on the mixed strong view.

    ``L_st = CE(z(x̃^{t,s}), ỹ^t)``, ``L_st,aux = CE(a(x̃^{t,s}), y^{w,aux})``; with ``method.edge``
    the same two losses restricted to the band of the pasted source mask. ``aux_label`` is
    y^{w,aux} (B, S, S) of the weak view (step 7).
    """
    terms = {
        "st": cross_entropy(out_strong.main, views.label),
        "st_aux": cross_entropy(out_strong.aux, aux_label),
    }
    if method.edge:
        off_band = ~loss_band(boundary_band(views.source_mask), method.quirk_edge_code)
        terms["st_edge"] = cross_entropy(out_strong.main, views.label.masked_fill(off_band, IGNORE))
        terms["st_aux_edge"] = cross_entropy(
            out_strong.aux, aux_label.masked_fill(off_band, IGNORE)
        )
    return terms


def unmixed_confident_labels(
    teacher: nn.Module, views: MixedTarget, t_max: float
) -> tuple[Tensor, Tensor]:
    """§5: M^t and its labels predicted without gradient on the unmixed weak crop x^{t,w}.

    Returns:
        ``(mask, labels)``: (B, S, S) bool and (B, S, S) int64, ``IGNORE`` off the mask.
    """
    with torch.no_grad():
        probs = teacher(views.target_weak, aux=False).main.softmax(dim=1)
    return confident_labels(probs, t_max)


def target_to_source_terms(
    student: nn.Module,
    views: MixedTarget,
    weak: tuple[Tensor, Tensor],
    crop: tuple[Tensor, Tensor] | None,
    aux_label: Tensor | None,
    method: MethodConfig,
) -> dict[str, Tensor]:
    """Step 6 (and §5): ``L_mix = CE(z(x^{ts}), y^{ts})`` on the target→source image.

    ``weak`` is (M^t, y^w) of the mixed weak view. With ``method.edge`` the pasted mask is
    ``M^t ∪ M^s`` where M^t is ``crop`` (:func:`unmixed_confident_labels`), y^s labels M^s, and
    ``L_mix,edge`` is the CE on the band of that M^t outside M^s. With the authors' edge code
    (§8.4b) ``L_mix,aux`` is the aux-head CE on x^{ts} against the same paste with y^{w,aux}
    (``aux_label``) in place of the crop's labels. ``quirk_t2s_first_image`` keeps image 0 only, for
    every term (all images are forwarded).
    """
    src, source_mask = views.source, views.source_mask
    paste_mask, paste_label = weak
    if method.edge:
        crop_mask, crop_label = crop
        paste_mask = crop_mask | source_mask
        paste_label = mix(source_mask, src.label, crop_label)
    x_ts, y_ts = target_to_source(paste_mask, views.strong, paste_label, src.strong, src.label)
    out = student(x_ts, aux=aux_label is not None)
    kept = 1 if method.quirk_t2s_first_image else len(y_ts)
    terms = {"mix": cross_entropy(out.main[:kept], y_ts[:kept])}
    if method.edge:
        band = loss_band(boundary_band(crop_mask) & ~source_mask, method.quirk_edge_code)
        band_label = y_ts.masked_fill(~band, IGNORE)
        terms["mix_edge"] = cross_entropy(out.main[:kept], band_label[:kept])
    if aux_label is not None:
        aux_target = mix(paste_mask, mix(source_mask, src.label, aux_label), src.label)
        terms["mix_aux"] = cross_entropy(out.aux[:kept], aux_target[:kept])
    return terms


def contrastive_terms(
    out_strong: SegOutput,
    out_weak: SegOutput,
    views: MixedTarget,
    target_label: Tensor,
    method: MethodConfig,
) -> dict[str, Tensor]:
    """Steps 8-10: pixel and prototype InfoNCE on the stride-8 logits ẑ of the two mixed views.

    ``target_label`` fills y^c outside M^s: y^w, or the unmixed crop's labels with the authors'
    edge code (§8.4a).
    """
    terms = {}
    if method.pixel:
        terms["pix"] = pixel_contrastive_loss(
            out_strong.main_small, out_weak.main_small, method.tau_pix
        )
    if method.proto:
        size = out_strong.main_small.shape[-2:]
        labels = contrastive_labels(views.source_mask, views.source.label, target_label, size)
        terms["proto"] = prototype_contrastive_loss(
            out_strong.main_small,
            out_weak.main_small,
            labels,
            method.tau_proto,
            method.quirk_proto_first_image,
        )
    return terms


def pseudo_label_model(student: nn.Module, ema: ModelEMA, method: MethodConfig) -> nn.Module:
    """The network of the no-grad pseudo-label passes (step 3, §5): the EMA copy when
    ``method.pseudo_label_model`` is ``ema``, else ``student`` (p^w, step 5, is always the
    student's)."""
    return ema.module if method.pseudo_label_model is PseudoLabelModel.ema else student


def adaptation_step(
    student: nn.Module,
    ema: ModelEMA,
    source: dict[str, Tensor],
    target: dict[str, Tensor],
    method: MethodConfig,
    crop_size: int,
    aux_weight: float,
    generator: torch.Generator,
) -> StepResult:
    """METHOD.md §4 steps 1-11 (and §5 when ``method.edge``), as switched by ``method``.

    Args:
        student: the model being trained (train mode); returns ``SegOutput``.
        ema: the EMA copy; used only when ``method.pseudo_label_model`` is ``ema``.
        source: ``image`` (B, 3, H, W) float in [0, 1], ``label`` (B, H, W) int64.
        target: ``image`` (B, 3, H', W') float in [0, 1] (no label needed).
        method: the switches and weights of the variant.
        crop_size: side S of the step-2 crops (``benchmark.crop_size``).
        aux_weight: weight a of L_src,aux (``train.aux_weight``).
        generator: every random draw of the step (crops, augmentation, ClassMix).

    Returns:
        The total loss (with gradient) and the unweighted terms that were computed: ``src`` and
        ``src_aux`` always; ``st``, ``st_aux`` (self-training); ``mix`` (t2s); ``pix``; ``proto``;
        ``st_edge``, ``st_aux_edge`` (edge with self-training), ``mix_edge`` (edge with t2s),
        ``mix_aux`` (the authors' edge code with t2s).
    """
    weights = loss_weights(method, aux_weight)
    src, src_aux = supervised_terms(student, source)  # step 1
    terms = {"src": src, "src_aux": src_aux}
    contrastive = method.pixel or method.proto
    if not (method.self_training or method.t2s or contrastive):
        return _result(total_loss(terms, weights), terms)

    teacher = pseudo_label_model(student, ema, method)
    views = mixed_target_views(teacher, source, target, method, crop_size, generator)
    # Forward order as the authors': strong view, then weak view (steps 7 and 5), then the §5
    # crop, then x^{ts}. The aux head is only used by self-training (L_st,aux and its pseudo-labels
    # y^{w,aux}) and by the authors' edge code (L_mix,aux, §8.4b).
    edge_code = method.edge and method.quirk_edge_code
    mix_aux = method.t2s and edge_code
    out_strong = (
        student(views.strong, aux=method.self_training)
        if method.self_training or contrastive
        else None
    )
    with torch.set_grad_enabled(contrastive and torch.is_grad_enabled()):
        out_weak = student(views.weak, aux=method.self_training or mix_aux)
    weak_probs = out_weak.main.detach().softmax(dim=1)
    weak = confident_labels(weak_probs, method.t_max)  # (M^t, y^w)
    aux_label = None
    if method.self_training or mix_aux:
        aux_label = aux_pseudo_labels(weak_probs, out_weak.aux.detach())
    crop = None
    if method.edge and (method.t2s or (edge_code and method.proto)):
        crop = unmixed_confident_labels(teacher, views, method.t_max)
    if method.self_training:
        terms |= self_training_terms(out_strong, aux_label, views, method)
    if method.t2s:
        terms |= target_to_source_terms(
            student, views, weak, crop, aux_label if mix_aux else None, method
        )
    if contrastive:
        target_label = crop[1] if edge_code else weak[1]
        terms |= contrastive_terms(out_strong, out_weak, views, target_label, method)
    return _result(total_loss(terms, weights), terms)
