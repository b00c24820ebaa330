"""Pseudo-label diagnostics (issue 14): every fraction of a hand-made 4x4 case computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hqtd.adapt.diagnostics import (
    diagnostic_counts,
    diagnostic_summary,
    near_paste_boundary,
    pseudo_label_diagnostics,
)

X = 255  # ignore
#: M^t (T_max 0.9), the argmax ŷ = y^w of every pixel, and the true labels, 3 classes.
MASK = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
ARGMAX = [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 2, 2], [2, 2, 2, 2]]
TRUTH = [[0, 0, 1, X], [0, 0, 1, 1], [0, X, 2, 1], [2, 2, 1, 2]]


def probabilities() -> torch.Tensor:
    """(1, 3, 4, 4): 0.95 on the argmax where MASK is set, 0.6 elsewhere (rest split evenly)."""
    argmax = torch.tensor(ARGMAX)
    top = torch.where(torch.tensor(MASK, dtype=torch.bool), 0.95, 0.6)
    probs = ((1 - top) / 2)[None].repeat(3, 1, 1)
    probs.scatter_(0, argmax[None], top[None])
    return probs[None]


class Fixed(nn.Module):
    """A 'network' whose main logits are log(probs) whatever the image (softmax: probs again)."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)  # a module whose flag the diagnostics must restore
        self.logits = probs.log()

    def forward(self, image: torch.Tensor, aux: bool = True) -> SimpleNamespace:
        assert not self.training and not aux
        return SimpleNamespace(main=self.logits.expand(len(image), -1, -1, -1))


def test_near_paste_boundary_by_hand():
    mask = torch.tensor(MASK, dtype=torch.bool)[None]
    # (0,0) and (1,0) see only pasted pixels (and the image border) in their 3x3 window
    expected = [[0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert near_paste_boundary(mask, 1)[0].tolist() == torch.tensor(expected).bool().tolist()
    assert near_paste_boundary(mask, 3).equal(mask)  # a 7x7 window covers the 4x4 image
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    assert not near_paste_boundary(full, 1).any()  # the image border is no paste boundary


def test_counts_and_fractions_by_hand():
    mask = torch.tensor(MASK, dtype=torch.bool)[None]
    argmax, truth = torch.tensor(ARGMAX)[None], torch.tensor(TRUTH)[None]
    counts = diagnostic_counts(argmax, mask, argmax.masked_fill(~mask, X), truth, 3, width=1)
    summary = diagnostic_summary(counts)
    # 14 labelled pixels; ŷ wrong at (1,1), (2,3), (3,2)
    assert summary["pseudo_label_accuracy"] == pytest.approx(11 / 14)
    # 7 pasted pixels, (2,1) unlabelled; of the other 6 only (1,1) (y^w 1, truth 0) is wrong
    assert summary["coverage"] == pytest.approx(6 / 14)
    assert summary["paste_precision"] == pytest.approx(5 / 6)
    assert summary["mask_precision"] == pytest.approx([4 / 4, 0 / 1, 1 / 1])
    # classes 0, 1, 2 have 5, 5, 4 labelled pixels; M^t holds 5, 0, 1 of them
    assert summary["mask_coverage"] == pytest.approx([5 / 5, 0 / 5, 1 / 4])
    # y^w of the 7 pasted pixels: five 0s, one 1, one 2 (the unlabelled one counts too)
    assert summary["paste_share"] == pytest.approx([5 / 7, 1 / 7, 1 / 7])
    # near the boundary (k = 1), labelled: (0,1), (1,1), (2,0), (2,2); (1,1) is wrong
    assert summary["paste_precision_boundary"] == pytest.approx(3 / 4)


def test_undefined_fractions_are_none():
    nothing = torch.zeros(1, 2, 2, dtype=torch.bool)
    label = torch.full((1, 2, 2), X)
    pred = torch.zeros(1, 2, 2, dtype=torch.long)
    counts = diagnostic_counts(pred, nothing, torch.full_like(pred, X), label, 2)
    summary = diagnostic_summary(counts)
    assert summary["pseudo_label_accuracy"] is None and summary["paste_precision"] is None
    assert summary["mask_coverage"] == [None, None] and summary["paste_share"] == [None, None]


def test_pseudo_label_diagnostics_scores_teacher_and_student_in_eval_mode():
    student, teacher = Fixed(probabilities()), Fixed(probabilities())
    student.train()
    student.bn.eval()  # a mixed state: each module's own flag comes back
    images, truth = torch.zeros(2, 3, 4, 4), torch.tensor([TRUTH, TRUTH])
    summary = pseudo_label_diagnostics(student, student, images, truth, 0.9, 3)
    assert student.training and not student.bn.training
    assert summary["paste_precision"] == pytest.approx(10 / 12)  # two copies of the 4x4 case
    assert summary["paste_precision_boundary"] == pytest.approx(5 / 6)  # k = 3: every pixel
    # ŷ^t from another teacher (all class 2): accuracy is the share of class-2 pixels, while
    # the mask fractions still come from the student
    teacher.logits = (
        torch.tensor([0.0, 0.0, 5.0]).log_softmax(0)[None, :, None, None].expand(1, 3, 4, 4)
    )
    other = pseudo_label_diagnostics(student, teacher, images, truth, 0.9, 3)
    assert other["pseudo_label_accuracy"] == pytest.approx(4 / 14)
    assert other["paste_share"] == pytest.approx(summary["paste_share"])
