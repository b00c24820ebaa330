"""Steps 4, 6, 8: ClassMix candidates (with the authors' off-by-one), mixing, contrastive labels."""

import pytest
import torch

from hqtd.adapt.mixing import (
    classmix_candidates,
    classmix_masks,
    contrastive_labels,
    mix,
    num_classes_to_paste,
    target_to_source,
)

IGNORE = 255


def _label(values):
    """A 1-row label map holding each value once."""
    return torch.tensor([values])


@pytest.mark.parametrize(
    ("present", "correct", "quirk"),
    [
        # Authors' sorted order (ignore = −1 first): [0, 3, 7, 9, 12]; K = 3 classes > 4.
        # Correct: the last three. Quirk: one lower -> 3 (largest class ≤ 4), 7, 9 (12 dropped).
        ([0, 3, 7, 9, 12], [7, 9, 12], [3, 7, 9]),
        # [ign, 0, 7, 9]: correct 7, 9; quirk indices 1, 2 -> 0 and 7.
        ([0, 7, 9, IGNORE], [7, 9], [0, 7]),
        # [ign, 7, 9]: no class ≤ 4, so the shifted set picks ignore itself, then 7.
        ([7, 9, IGNORE], [7, 9], [IGNORE, 7]),
        # [7, 9]: index −1 wraps to the last entry (9), so the quirk set equals the correct one.
        ([9, 7], [7, 9], [9, 7]),
        # [1, 5]: one candidate; the quirk takes 1 instead of 5.
        ([1, 5], [5], [1]),
        # No class > 4: no candidates in either mode.
        ([0, 2, 4, IGNORE], [], []),
    ],
)
def test_classmix_candidates_hand_computed(present, correct, quirk):
    assert classmix_candidates(_label(present)).tolist() == correct
    assert classmix_candidates(_label(present), quirk_offset=True).tolist() == quirk


@pytest.mark.parametrize(
    ("candidates", "pasted"), [(0, 0), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (14, 7)]
)
def test_number_of_classes_pasted(candidates, pasted):
    assert num_classes_to_paste(candidates) == pasted


def _source_labels():
    # Image 0: classes 0, 5, 6, 7, 8 and ignore (K = 4 -> 2 pasted). Image 1: 1 and 11 (K = 1).
    # Image 2: only classes ≤ 4 (nothing pasted).
    first = torch.tensor([[0, 5, 6, 7], [8, IGNORE, 5, 6]])
    second = torch.tensor([[1, 1, 11, 11], [1, 11, 1, 1]])
    third = torch.tensor([[0, 1, 2, 3], [4, 4, IGNORE, 0]])
    return torch.stack([first, second, third])


def test_classmix_masks_select_half_of_the_candidates():
    labels = _source_labels()
    masks = classmix_masks(labels, torch.Generator().manual_seed(0))
    pasted_0 = labels[0][masks[0]].unique().tolist()
    assert len(pasted_0) == 2 and set(pasted_0) <= {5, 6, 7, 8}
    assert torch.equal(masks[0], torch.isin(labels[0], torch.tensor(pasted_0)))  # whole classes
    assert torch.equal(masks[1], labels[1] == 11)
    assert not masks[2].any()


def test_classmix_masks_are_deterministic_and_depend_on_the_generator():
    labels = _source_labels()
    draws = {
        tuple(
            labels[0][classmix_masks(labels, torch.Generator().manual_seed(seed))[0]]
            .unique()
            .tolist()
        )
        for seed in range(30)
    }
    assert len(draws) > 1  # different seeds draw different classes
    again = [classmix_masks(labels, torch.Generator().manual_seed(4)) for _ in range(2)]
    assert torch.equal(again[0], again[1])


def test_quirk_draws_the_shifted_classes_with_the_same_random_numbers():
    # Image 0 in the authors' order: [ign, 0, 5, 6, 7, 8]; correct candidates 5, 6, 7, 8 map to the
    # quirk's 0, 5, 6, 7 position by position. Image 1: [1, 11] -> the quirk pastes class 1.
    labels = _source_labels()
    shift = {5: 0, 6: 5, 7: 6, 8: 7}
    for seed in range(10):
        correct = classmix_masks(labels, torch.Generator().manual_seed(seed))
        quirk = classmix_masks(labels, torch.Generator().manual_seed(seed), quirk_offset=True)
        chosen = labels[0][correct[0]].unique().tolist()
        assert set(labels[0][quirk[0]].unique().tolist()) == {shift[c] for c in chosen}
        assert torch.equal(quirk[1], labels[1] == 1)
        assert not quirk[2].any()


def test_quirk_can_paste_ignore_pixels():
    labels = torch.tensor([[[7, 9], [IGNORE, 9]]])  # [ign, 7, 9] -> quirk candidates ign, 7; K = 2
    pasted = set()
    for seed in range(20):
        mask = classmix_masks(labels, torch.Generator().manual_seed(seed), quirk_offset=True)
        pasted |= set(labels[mask].tolist())
    assert pasted == {IGNORE, 7}


def test_mix_images_and_labels_hand_computed():
    mask = torch.tensor([[[True, False], [False, True]]])
    inside = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 3, 2, 2)
    outside = torch.full((1, 3, 2, 2), 9.0)
    expected = torch.tensor([[1.0, 9.0], [9.0, 4.0]]).expand(1, 3, 2, 2)
    assert torch.equal(mix(mask, inside, outside), expected)
    labels = mix(mask, torch.tensor([[[5, 6], [7, 8]]]), torch.tensor([[[0, 1], [IGNORE, 3]]]))
    assert labels.tolist() == [[[5, 1], [IGNORE, 8]]]


def test_target_to_source_hand_computed():
    # M^t = top row: the top row comes from the target view with y^w, the bottom from the source.
    mask = torch.tensor([[[True, True], [False, False]]])
    target_image = torch.ones(1, 3, 2, 2)
    source_image = torch.zeros(1, 3, 2, 2)
    x_ts, y_ts = target_to_source(
        mask,
        target_image,
        torch.tensor([[[4, 5], [IGNORE, IGNORE]]]),
        source_image,
        torch.tensor([[[0, 1], [2, 3]]]),
    )
    assert x_ts[0, :, 0].eq(1).all() and x_ts[0, :, 1].eq(0).all()
    assert y_ts.tolist() == [[[4, 5], [2, 3]]]


def test_contrastive_labels_hand_computed():
    # y^c = y^s on M^s, y^w elsewhere; 4x4 -> 2x2 nearest keeps rows and columns 0 and 2.
    source_mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    source_mask[0, 0, 0] = source_mask[0, 2, 2] = True
    source_label = torch.full((1, 4, 4), 6)
    weak_label = torch.tensor([[[0, 1, 2, 3], [4, 5, 6, 7], [IGNORE, 9, 10, 11], [12, 13, 14, 15]]])
    got = contrastive_labels(source_mask, source_label, weak_label, (2, 2))
    assert got.dtype == torch.int64
    assert got.tolist() == [[[6, 2], [IGNORE, 6]]]
