"""Metrics against torchmetrics and a plain numpy computation written here.

torchmetrics is imported inside the tests: spawned DDP workers import this module without
conftest, and torchvision (which torchmetrics imports) must come after hqtd's import guard.
"""

import numpy as np
import pytest
import torch

from hqtd.data.labels import SUBSET_13_OF_16
from hqtd.metrics import ConfusionMatrix, confusion_counts, iou_per_class, mean_iou, summary


def _random_batch(num_classes, seed, shape=(2, 17, 23), absent=()):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, size=shape)
    pred = rng.integers(0, num_classes, size=shape)
    for cls in absent:  # a class absent from both ground truth and prediction
        target[target == cls] = (cls + 1) % num_classes
        pred[pred == cls] = (cls + 1) % num_classes
    target[rng.random(shape) < 0.2] = 255
    return pred, target


def _numpy_iou(pred, target, num_classes):
    valid = target != 255
    ious = []
    for cls in range(num_classes):
        inter = np.sum((pred == cls) & (target == cls) & valid)
        union = np.sum(((pred == cls) | (target == cls)) & valid)
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


@pytest.mark.parametrize("num_classes", [19, 16])
def test_confusion_matches_torchmetrics(num_classes):
    from torchmetrics.classification import MulticlassConfusionMatrix

    pred, target = _random_batch(num_classes, seed=num_classes)
    ours = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    reference = MulticlassConfusionMatrix(num_classes, ignore_index=255)(
        torch.from_numpy(pred), torch.from_numpy(target)
    )
    torch.testing.assert_close(ours, reference.long())


@pytest.mark.parametrize("num_classes", [19, 16])
def test_iou_and_miou_match_numpy_and_torchmetrics(num_classes):
    from torchmetrics.classification import MulticlassJaccardIndex

    pred, target = _random_batch(num_classes, seed=3, absent=(4,))
    conf = confusion_counts(pred, target, num_classes)
    expected = _numpy_iou(pred, target, num_classes)
    np.testing.assert_allclose(iou_per_class(conf), expected, equal_nan=True)
    assert np.isnan(iou_per_class(conf)[4])
    assert mean_iou(conf) == pytest.approx(np.nanmean(expected))
    jaccard = MulticlassJaccardIndex(num_classes, average=None, ignore_index=255)
    tm = jaccard(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    present = ~np.isnan(expected)
    np.testing.assert_allclose(iou_per_class(conf)[present], tm[present], rtol=1e-6)


def test_miou13_is_subset_of_16_class_matrix():
    pred, target = _random_batch(16, seed=5)
    conf = confusion_counts(pred, target, 16)
    expected = _numpy_iou(pred, target, 16)
    result = summary(conf)
    assert result["mIoU16"] == pytest.approx(np.nanmean(expected))
    assert result["mIoU13"] == pytest.approx(np.nanmean(expected[list(SUBSET_13_OF_16)]))
    valid = target != 255
    assert result["pixel_accuracy"] == pytest.approx(np.mean(pred[valid] == target[valid]))
    assert "mIoU19" not in result


def test_hand_computed_two_class_example():
    # gt:   0 0 1 1 255      pred: 0 1 1 1 0
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3 -> 2/3
    conf = confusion_counts(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 255]), 2)
    np.testing.assert_array_equal(conf.numpy(), [[1, 1], [0, 2]])
    np.testing.assert_allclose(iou_per_class(conf), [0.5, 2 / 3])


def test_accumulation_and_merge_equal_one_shot():
    pred, target = _random_batch(19, seed=7, shape=(4, 9, 9))
    whole = confusion_counts(pred, target, 19)
    first, second = ConfusionMatrix(19), ConfusionMatrix(19)
    first.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]))
    second.update(pred[2:], target[2:])  # numpy input
    merged = first.merge(second)
    np.testing.assert_array_equal(merged.numpy(), whole.numpy())
    np.testing.assert_allclose(merged.iou(), iou_per_class(whole), equal_nan=True)


def test_rejects_bad_shapes_and_out_of_range_labels():
    with pytest.raises(ValueError, match="differ"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)), 19)
    with pytest.raises(ValueError, match="label ids"):
        confusion_counts(np.zeros(3), np.array([0, 19, 255]), 19)


def _reduce_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    pred, target = _random_batch(19, seed=11, shape=(4, 9, 9))
    shard = ConfusionMatrix(19)
    shard.update(pred[rank::world_size], target[rank::world_size])
    shard.all_reduce()
    if rank == 0:
        np.save(result_file, shard.numpy())
    dist.destroy_process_group()


def test_all_reduce_across_two_processes_equals_one_shot(tmp_path):
    result_file = tmp_path / "reduced.npy"
    torch.multiprocessing.spawn(
        _reduce_worker, args=(2, tmp_path / "init", result_file), nprocs=2, join=True
    )
    pred, target = _random_batch(19, seed=11, shape=(4, 9, 9))
    np.testing.assert_array_equal(np.load(result_file), confusion_counts(pred, target, 19).numpy())
