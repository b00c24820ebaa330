"""Steps 3, 5, 7: pseudo-labels, the confident mask with T_max, the aux-head labels."""

import math

import torch

from hqtd.adapt.pseudo import aux_pseudo_labels, confident_labels, pseudo_labels

IGNORE = 255


def test_pseudo_labels_label_every_pixel():
    # Two pixels, 3 classes: argmax 2 and 0, whatever the confidence.
    logits = torch.tensor([[[[0.1, 5.0]], [[0.2, 1.0]], [[0.3, -1.0]]]])  # (1, 3, 1, 2)
    assert pseudo_labels(logits).tolist() == [[[2, 0]]]


def test_ties_go_to_the_first_class():
    # Pixel 0: classes 1 and 2 tie at the top; pixel 1: all three tie.
    logits = torch.tensor([[[[0.0, 1.0]], [[3.0, 1.0]], [[3.0, 1.0]]]])  # (1, 3, 1, 2)
    assert pseudo_labels(logits).tolist() == [[[1, 0]]]
    assert aux_pseudo_labels(logits.softmax(dim=1), logits).tolist() == [[[1, 0]]]


def test_confident_mask_is_strictly_above_t_max():
    # Pixel maxima 0.96 (kept), 0.95 (not: strictly greater), 0.50 (not), 0.99 (kept, class 1).
    probs = torch.tensor(
        [
            [0.96, 0.95, 0.50, 0.005],
            [0.02, 0.03, 0.30, 0.99],
            [0.02, 0.02, 0.20, 0.005],
        ]
    ).reshape(1, 3, 2, 2)
    mask, labels = confident_labels(probs, t_max=0.95)
    assert mask.tolist() == [[[True, False], [False, True]]]
    assert labels.tolist() == [[[0, IGNORE], [IGNORE, 1]]]


def test_aux_labels_use_the_mean_of_both_softmaxes():
    # Main softmax (0.6, 0.4, 0), aux (0.1, 0.9, 0) up to a vanishing third class:
    # main alone says 0, aux alone says 1, the mean (0.35, 0.65) says 1.
    main = torch.tensor([math.log(0.6), math.log(0.4), -1e4]).reshape(1, 3, 1, 1)
    aux = torch.tensor([math.log(0.1), math.log(0.9), -1e4]).reshape(1, 3, 1, 1)
    assert pseudo_labels(main).item() == 0
    assert aux_pseudo_labels(main.softmax(dim=1), aux).item() == 1
    # Main (0.8, 0.2), aux (0.3, 0.7): mean (0.55, 0.45) -> 0 although aux says 1.
    main = torch.tensor([math.log(0.8), math.log(0.2), -1e4]).reshape(1, 3, 1, 1)
    aux = torch.tensor([math.log(0.3), math.log(0.7), -1e4]).reshape(1, 3, 1, 1)
    assert aux_pseudo_labels(main.softmax(dim=1), aux).item() == 0
