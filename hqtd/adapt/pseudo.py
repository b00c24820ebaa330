"""Target pseudo-labels of METHOD.md §4: steps 3 (every pixel), 5 (confident) and 7 (aux head).

The class index comes from ``max(dim=1)``, never ``argmax(dim=1)``: on CPU the latter walks the
strided channels of an NCHW map one pixel at a time and is about 3× slower (bench/argmax.py).
Both return the first maximum on ties.
"""

from __future__ import annotations

from torch import Tensor

from hqtd.data.labels import IGNORE


def pseudo_labels(logits: Tensor) -> Tensor:
    """Step 3: ``ŷ^t = argmax softmax(z(x^t))``, no threshold, every pixel labelled.

    Args:
        logits: main-head logits (B, C, H, W) of the full target image, computed without gradient.

    Returns:
        (B, H, W) int64 class ids (softmax is monotonic, so the argmax of the logits is the same).
    """
    return logits.max(dim=1).indices


def confident_labels(probs: Tensor, t_max: float) -> tuple[Tensor, Tensor]:
    """Step 5: confident mask ``M^t = [max_c p^w > T_max]`` and ``y^w = argmax p^w`` on ``M^t``.

    Args:
        probs: weak-view class probabilities p^w (B, C, H, W), detached.
        t_max: confidence threshold (strictly greater counts as confident).

    Returns:
        ``(mask, labels)``: mask (B, H, W) bool; labels (B, H, W) int64, ``IGNORE`` off the mask.
    """
    confidence, labels = probs.max(dim=1)
    mask = confidence > t_max
    return mask, labels.masked_fill(~mask, IGNORE)


def aux_pseudo_labels(main_probs: Tensor, aux_logits: Tensor) -> Tensor:
    """Step 7: ``y^{w,aux} = argmax ½(softmax(z) + softmax(a))`` on the weak view, no threshold.

    Args:
        main_probs: ``softmax(z)`` (B, C, H, W) of the weak view, i.e. p^w of step 5 (computed
            once for both steps).
        aux_logits: aux-head logits (B, C, H, W) of the weak view.

    Returns:
        (B, H, W) int64 class ids.
    """
    # The ½ does not change the argmax; the sum of the two softmaxes is what decides.
    return (main_probs + aux_logits.softmax(dim=1)).max(dim=1).indices
