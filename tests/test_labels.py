"""Label tables against cityscapesscripts' helpers.labels (an independent reference)."""

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers import labels as cs

from hqtd.data import labels as L


def _cs_train_labels():
    return [lab for lab in cs.labels if lab.trainId not in (255, -1) and not lab.ignoreInEval]


def test_class_names_and_palette_follow_cityscapes_train_ids():
    reference = sorted(_cs_train_labels(), key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in reference] == list(range(19))
    assert list(L.CLASS_NAMES) == [lab.name for lab in reference]
    assert [tuple(c) for c in L.PALETTE.tolist()] == [lab.color for lab in reference]


def test_cityscapes_lut_matches_every_label_id():
    for lab in cs.labels:
        if lab.id < 0:
            continue
        expected = lab.trainId if (lab.trainId not in (255, -1) and not lab.ignoreInEval) else 255
        assert L.CITYSCAPES_LUT[lab.id] == expected, lab.name
    # ids no Cityscapes label uses are ignored too
    assert (L.CITYSCAPES_LUT[34:] == 255).all()


def test_synthia_lut_maps_to_the_class_of_the_same_name():
    synthia_names = {  # SYNTHIA-RAND-CITYSCAPES class ids (dataset README)
        1: "sky", 2: "building", 3: "road", 4: "sidewalk", 5: "fence", 6: "vegetation", 7: "pole",
        8: "car", 9: "traffic sign", 10: "person", 11: "bicycle", 12: "motorcycle",
        15: "traffic light", 16: "terrain", 17: "rider", 18: "truck", 19: "bus", 20: "train",
        21: "wall",
    }  # fmt: skip
    by_name = {lab.name: lab.trainId for lab in _cs_train_labels()}
    for raw in range(1 << 16):
        if raw in synthia_names:
            assert L.SYNTHIA_LUT[raw] == by_name[synthia_names[raw]]
        elif raw < 64:
            assert L.SYNTHIA_LUT[raw] == 255
    assert (L.SYNTHIA_LUT[64:] == 255).all()


def test_16_and_13_class_subsets():
    names16 = L.class_names(16)
    assert len(names16) == 16
    assert not {"terrain", "truck", "train"} & set(names16)
    remapped = L.apply_lut(L.TRAINID_TO_16_LUT, np.arange(256))
    expected = [0, 1, 2, 3, 4, 5, 6, 7, 8, 255, 9, 10, 11, 12, 255, 13, 255, 14, 15]
    assert list(remapped[:19]) == expected
    assert (remapped[19:] == 255).all()
    names13 = [names16[i] for i in L.SUBSET_13_OF_16]
    assert set(names16) - set(names13) == {"wall", "fence", "pole"}


def test_apply_lut_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, size=(5, 7)).astype(np.uint8)
    out_np = L.apply_lut(L.CITYSCAPES_LUT, ids)
    out_t = L.apply_lut(L.CITYSCAPES_LUT, torch.from_numpy(ids))
    assert out_np.dtype == np.uint8 and out_np.shape == ids.shape
    np.testing.assert_array_equal(out_np, out_t.numpy())
    loop = np.array([[L.CITYSCAPES_ID_TO_TRAINID.get(int(v), 255) for v in row] for row in ids])
    np.testing.assert_array_equal(out_np, loop)


def test_apply_lut_rejects_ids_outside_table():
    with pytest.raises(IndexError):
        L.apply_lut(L.CITYSCAPES_LUT, np.array([300]))


def test_colorize_uses_palette_and_black_for_ignore():
    label = np.array([[0, 18], [255, 10]], dtype=np.uint8)
    rgb = L.colorize(label)
    assert tuple(rgb[0, 0]) == (128, 64, 128)
    assert tuple(rgb[0, 1]) == (119, 11, 32)
    assert tuple(rgb[1, 0]) == (0, 0, 0)
    assert tuple(L.colorize(np.array([[9]], dtype=np.uint8), 16)[0, 0]) == (70, 130, 180)  # sky
